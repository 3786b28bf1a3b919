/*
 * QUIC packet protection in C for the datagram fast path (issue 14 item 5): a packet's AEAD
 * and its header protection in one call each way, on OpenSSL contexts kept per key; and the
 * DATAGRAM frames of a packet written in one call (datagram_frames, at the end). Built by
 * make into build/_qtcrypto.so (a CPython extension, linked with libcrypto); loaded by
 * tunnel/protocol/quic_crypto.py, used by quic_ext's _seal_short and _open_short.
 *
 * Why in C: in Python each packet crossed about ten interpreter steps around the two OpenSSL
 * calls (the nonce's big integer, the AEAD wrapper, the mask's slice and XORs, the join), 8 %
 * of the client's and 8.5 % of the concentrator's CPU at full speed (py-spy, 2026-12-05).
 *
 * The rules are RFC 9001's: the nonce is the IV XOR the packet number, left-padded (§5.3); the
 * header protection mask comes from a 16-byte sample taken 4 bytes after the packet number's
 * first byte, whatever its length (§5.4.2), with AES-ECB (§5.4.3) or ChaCha20 whose 16-byte IV
 * is the sample itself, counter then nonce (§5.4.4); it masks the low 4 bits of a long
 * header's first byte, the low 5 of a short header's, and the packet number (§5.4.1); the
 * packet number is recovered as in RFC 9000 Appendix A.3. tests/unit/test_quic_crypto.py holds
 * this file to aioquic's own CryptoContext, byte for byte.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <string.h>

#define IV_LENGTH 12
#define TAG_LENGTH 16
#define SAMPLE_LENGTH 16
#define SAMPLE_OFFSET 4 /* from the packet number's first byte: PACKET_NUMBER_LENGTH_MAX */
#define LONG_HEADER 0x80
#define LONG_HEADER_MASK 0x0F
#define SHORT_HEADER_MASK 0x1F
#define KEY_PHASE_BIT 0x04

/* aioquic's CryptoError (given to init()), so that callers see the errors aioquic raises */
static PyObject *crypto_error = NULL;

static int fail(const char *message)
{
    PyErr_SetString(crypto_error != NULL ? crypto_error : PyExc_ValueError, message);
    return -1;
}

/* ---- HeaderProtection: one direction's header protection key ---- */

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *ctx;
    int chacha20;
} HeaderProtection;

static void hp_dealloc(HeaderProtection *self)
{
    EVP_CIPHER_CTX_free(self->ctx);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int hp_init(HeaderProtection *self, PyObject *args, PyObject *kwds)
{
    const char *name;
    Py_buffer key;
    static char *keywords[] = {"cipher_name", "key", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "yy*", keywords, &name, &key))
        return -1;
    const EVP_CIPHER *cipher = NULL;
    self->chacha20 = 0;
    if (strcmp(name, "aes-128-ecb") == 0)
        cipher = EVP_aes_128_ecb();
    else if (strcmp(name, "aes-256-ecb") == 0)
        cipher = EVP_aes_256_ecb();
    else if (strcmp(name, "chacha20") == 0) {
        cipher = EVP_chacha20();
        self->chacha20 = 1;
    }
    int result = -1;
    if (cipher == NULL)
        PyErr_Format(PyExc_ValueError, "Invalid cipher name: %s", name);
    else if (key.len != EVP_CIPHER_key_length(cipher))
        PyErr_Format(PyExc_ValueError, "Invalid key length %zd for %s", key.len, name);
    else {
        EVP_CIPHER_CTX_free(self->ctx);
        self->ctx = EVP_CIPHER_CTX_new();
        if (self->ctx == NULL
            || !EVP_EncryptInit_ex(self->ctx, cipher, NULL, key.buf, NULL)
            || !EVP_CIPHER_CTX_set_padding(self->ctx, 0))
            PyErr_SetString(PyExc_RuntimeError, "OpenSSL refused the header protection key");
        else
            result = 0;
    }
    PyBuffer_Release(&key);
    return result;
}

/* The 5 bytes of mask a sample gives (RFC 9001 §5.4.3, §5.4.4). */
static int hp_mask(HeaderProtection *self, const uint8_t *sample, uint8_t *mask)
{
    static const uint8_t zeros[5] = {0};
    uint8_t block[SAMPLE_LENGTH];
    int written = 0;
    if (self->ctx == NULL)
        return fail("Header protection key is not available");
    if (self->chacha20) {
        if (!EVP_EncryptInit_ex(self->ctx, NULL, NULL, NULL, sample)
            || !EVP_EncryptUpdate(self->ctx, block, &written, zeros, sizeof zeros))
            return fail("ChaCha20 header protection failed");
    } else if (!EVP_EncryptUpdate(self->ctx, block, &written, sample, SAMPLE_LENGTH))
        return fail("AES header protection failed");
    memcpy(mask, block, 5);
    return 0;
}

static PyTypeObject HeaderProtectionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "_qtcrypto.HeaderProtection",
    .tp_doc = "HeaderProtection(cipher_name, key): one direction's header protection key",
    .tp_basicsize = sizeof(HeaderProtection),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)hp_init,
    .tp_dealloc = (destructor)hp_dealloc,
};

/* ---- Aead: one direction's packet protection key ---- */

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *encrypt;
    EVP_CIPHER_CTX *decrypt;
    uint8_t iv[IV_LENGTH];
} Aead;

static void aead_dealloc(Aead *self)
{
    EVP_CIPHER_CTX_free(self->encrypt);
    EVP_CIPHER_CTX_free(self->decrypt);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int aead_init(Aead *self, PyObject *args, PyObject *kwds)
{
    const char *name;
    Py_buffer key, iv;
    static char *keywords[] = {"cipher_name", "key", "iv", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "yy*y*", keywords, &name, &key, &iv))
        return -1;
    const EVP_CIPHER *cipher = NULL;
    if (strcmp(name, "aes-128-gcm") == 0)
        cipher = EVP_aes_128_gcm();
    else if (strcmp(name, "aes-256-gcm") == 0)
        cipher = EVP_aes_256_gcm();
    else if (strcmp(name, "chacha20-poly1305") == 0)
        cipher = EVP_chacha20_poly1305();
    int result = -1;
    if (cipher == NULL)
        PyErr_Format(PyExc_ValueError, "Invalid cipher name: %s", name);
    else if (key.len != EVP_CIPHER_key_length(cipher))
        PyErr_Format(PyExc_ValueError, "Invalid key length %zd for %s", key.len, name);
    else if (iv.len != IV_LENGTH)
        PyErr_SetString(PyExc_ValueError, "Invalid iv length");
    else {
        EVP_CIPHER_CTX_free(self->encrypt);
        EVP_CIPHER_CTX_free(self->decrypt);
        self->encrypt = EVP_CIPHER_CTX_new();
        self->decrypt = EVP_CIPHER_CTX_new();
        memcpy(self->iv, iv.buf, IV_LENGTH);
        if (self->encrypt == NULL || self->decrypt == NULL
            || !EVP_EncryptInit_ex(self->encrypt, cipher, NULL, NULL, NULL)
            || !EVP_CIPHER_CTX_ctrl(self->encrypt, EVP_CTRL_AEAD_SET_IVLEN, IV_LENGTH, NULL)
            || !EVP_EncryptInit_ex(self->encrypt, NULL, NULL, key.buf, NULL)
            || !EVP_DecryptInit_ex(self->decrypt, cipher, NULL, NULL, NULL)
            || !EVP_CIPHER_CTX_ctrl(self->decrypt, EVP_CTRL_AEAD_SET_IVLEN, IV_LENGTH, NULL)
            || !EVP_DecryptInit_ex(self->decrypt, NULL, NULL, key.buf, NULL))
            PyErr_SetString(PyExc_RuntimeError, "OpenSSL refused the packet protection key");
        else
            result = 0;
    }
    PyBuffer_Release(&key);
    PyBuffer_Release(&iv);
    return result;
}

/* RFC 9001 §5.3: the IV XOR the packet number, as a 12-byte big-endian number */
static void nonce_for(const Aead *self, uint64_t packet_number, uint8_t *nonce)
{
    memcpy(nonce, self->iv, IV_LENGTH);
    for (int i = 0; i < 8; i++)
        nonce[IV_LENGTH - 1 - i] ^= (uint8_t)(packet_number >> (8 * i));
}

/* RFC 9000 Appendix A.3 (aioquic's decode_packet_number) */
static int64_t decode_packet_number(int64_t truncated, int bits, int64_t expected)
{
    int64_t window = (int64_t)1 << bits;
    int64_t half = window / 2;
    int64_t candidate = (expected & ~(window - 1)) | truncated;
    if (candidate <= expected - half && candidate < ((int64_t)1 << 62) - window)
        return candidate + window;
    if (candidate > expected + half && candidate >= window)
        return candidate - window;
    return candidate;
}

static int check_keys(Aead *self, PyObject *hp)
{
    if (self->encrypt == NULL) {
        PyErr_SetString(PyExc_ValueError, "Aead was not initialised");
        return -1;
    }
    if (!PyObject_TypeCheck(hp, &HeaderProtectionType)) {
        PyErr_SetString(PyExc_TypeError, "hp must be a _qtcrypto.HeaderProtection");
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(seal_doc,
    "seal(hp, plain_header, plain_payload, packet_number) -> bytes\n\n"
    "CryptoContext.encrypt_packet: the payload sealed with the header as associated data,\n"
    "then the header protected with hp; the packet number's length is in the first byte.");

static PyObject *aead_seal(Aead *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "seal takes hp, plain_header, plain_payload, packet_number");
        return NULL;
    }
    if (check_keys(self, args[0]) < 0)
        return NULL;
    HeaderProtection *hp = (HeaderProtection *)args[0];
    unsigned long long packet_number = PyLong_AsUnsignedLongLong(args[3]);
    if (packet_number == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    Py_buffer header, payload;
    if (PyObject_GetBuffer(args[1], &header, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[2], &payload, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&header);
        return NULL;
    }
    PyObject *packet = NULL;
    const uint8_t *plain_header = header.buf;
    Py_ssize_t pn_length = header.len ? (plain_header[0] & 0x03) + 1 : 0;
    Py_ssize_t sample_at = header.len + SAMPLE_OFFSET - pn_length;
    Py_ssize_t total = header.len + payload.len + TAG_LENGTH;
    if (header.len < 1 + pn_length) {
        PyErr_SetString(PyExc_ValueError, "plain_header is too short for its packet number");
        goto done;
    }
    if (header.len > INT_MAX || payload.len > INT_MAX - TAG_LENGTH) {
        PyErr_SetString(PyExc_ValueError, "packet is too long to seal");
        goto done;
    }
    if (sample_at + SAMPLE_LENGTH > total) {
        fail("Packet is too short to sample");
        goto done;
    }
    packet = PyBytes_FromStringAndSize(NULL, total);
    if (packet == NULL)
        goto done;
    uint8_t *out = (uint8_t *)PyBytes_AS_STRING(packet);
    memcpy(out, plain_header, header.len);
    uint8_t nonce[IV_LENGTH];
    nonce_for(self, packet_number, nonce);
    int written = 0, final = 0;
    if (!EVP_EncryptInit_ex(self->encrypt, NULL, NULL, NULL, nonce)
        || !EVP_EncryptUpdate(self->encrypt, NULL, &written, plain_header, (int)header.len)
        || !EVP_EncryptUpdate(self->encrypt, out + header.len, &written, payload.buf,
                              (int)payload.len)
        || !EVP_EncryptFinal_ex(self->encrypt, out + header.len + written, &final)
        || !EVP_CIPHER_CTX_ctrl(self->encrypt, EVP_CTRL_AEAD_GET_TAG, TAG_LENGTH,
                                out + header.len + payload.len)) {
        fail("Packet encryption failed");
        Py_CLEAR(packet);
        goto done;
    }
    uint8_t mask[5];
    if (hp_mask(hp, out + sample_at, mask) < 0) {
        Py_CLEAR(packet);
        goto done;
    }
    out[0] ^= mask[0] & ((out[0] & LONG_HEADER) ? LONG_HEADER_MASK : SHORT_HEADER_MASK);
    for (Py_ssize_t i = 0; i < pn_length; i++)
        out[header.len - pn_length + i] ^= mask[1 + i];
done:
    PyBuffer_Release(&header);
    PyBuffer_Release(&payload);
    return packet;
}

PyDoc_STRVAR(open_doc,
    "open(hp, packet, pn_offset, expected_packet_number, key_phase)\n"
    "    -> (plain_header, plain_payload, packet_number) | None\n\n"
    "CryptoContext.decrypt_packet for a packet whose packet number starts at pn_offset;\n"
    "None for a short header of the other key phase (a key update: aioquic's path takes it).");

static PyObject *aead_open(Aead *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError,
                        "open takes hp, packet, pn_offset, expected_packet_number, key_phase");
        return NULL;
    }
    if (check_keys(self, args[0]) < 0)
        return NULL;
    HeaderProtection *hp = (HeaderProtection *)args[0];
    Py_ssize_t pn_offset = PyLong_AsSsize_t(args[2]);
    if (pn_offset == -1 && PyErr_Occurred())
        return NULL;
    long long expected = PyLong_AsLongLong(args[3]);
    if (expected == -1 && PyErr_Occurred())
        return NULL;
    long key_phase = PyLong_AsLong(args[4]);
    if (key_phase == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer data;
    if (PyObject_GetBuffer(args[1], &data, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *result = NULL, *plain_header = NULL, *plain_payload = NULL;
    const uint8_t *in = data.buf;
    if (pn_offset < 1 || pn_offset + SAMPLE_OFFSET + SAMPLE_LENGTH > data.len) {
        fail("Packet is too short to sample");
        goto done;
    }
    uint8_t mask[5];
    if (hp_mask(hp, in + pn_offset + SAMPLE_OFFSET, mask) < 0)
        goto done;
    int long_header = in[0] & LONG_HEADER;
    uint8_t first = in[0] ^ (mask[0] & (long_header ? LONG_HEADER_MASK : SHORT_HEADER_MASK));
    if (!long_header && ((first & KEY_PHASE_BIT) >> 2) != key_phase) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    Py_ssize_t pn_length = (first & 0x03) + 1;
    Py_ssize_t end = pn_offset + pn_length;
    Py_ssize_t sealed = data.len - end;
    plain_header = PyBytes_FromStringAndSize((const char *)in, end);
    if (plain_header == NULL)
        goto done;
    uint8_t *header = (uint8_t *)PyBytes_AS_STRING(plain_header);
    header[0] = first;
    int64_t truncated = 0;
    for (Py_ssize_t i = 0; i < pn_length; i++) {
        header[pn_offset + i] ^= mask[1 + i];
        truncated = (truncated << 8) | header[pn_offset + i];
    }
    int64_t packet_number = decode_packet_number(truncated, (int)pn_length * 8, expected);
    if (sealed < TAG_LENGTH || sealed > INT_MAX) {
        fail(""); /* as cryptography's InvalidTag, whose text is empty */
        goto done;
    }
    plain_payload = PyBytes_FromStringAndSize(NULL, sealed - TAG_LENGTH);
    if (plain_payload == NULL)
        goto done;
    uint8_t nonce[IV_LENGTH], tag[TAG_LENGTH];
    nonce_for(self, (uint64_t)packet_number, nonce);
    memcpy(tag, in + data.len - TAG_LENGTH, TAG_LENGTH);
    int written = 0, final = 0;
    if (!EVP_DecryptInit_ex(self->decrypt, NULL, NULL, NULL, nonce)
        || !EVP_DecryptUpdate(self->decrypt, NULL, &written, header, (int)end)
        || !EVP_DecryptUpdate(self->decrypt, (uint8_t *)PyBytes_AS_STRING(plain_payload),
                              &written, in + end, (int)(sealed - TAG_LENGTH))
        || !EVP_CIPHER_CTX_ctrl(self->decrypt, EVP_CTRL_AEAD_SET_TAG, TAG_LENGTH, tag)
        || EVP_DecryptFinal_ex(self->decrypt,
                               (uint8_t *)PyBytes_AS_STRING(plain_payload) + written,
                               &final) <= 0) {
        fail("");
        goto done;
    }
    result = Py_BuildValue("(OOL)", plain_header, plain_payload, (long long)packet_number);
done:
    Py_XDECREF(plain_header);
    Py_XDECREF(plain_payload);
    PyBuffer_Release(&data);
    return result;
}

static PyMethodDef aead_methods[] = {
    {"seal", (PyCFunction)(void (*)(void))aead_seal, METH_FASTCALL, seal_doc},
    {"open", (PyCFunction)(void (*)(void))aead_open, METH_FASTCALL, open_doc},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject AeadType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "_qtcrypto.Aead",
    .tp_doc = "Aead(cipher_name, key, iv): one direction's packet protection key",
    .tp_basicsize = sizeof(Aead),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)aead_init,
    .tp_dealloc = (destructor)aead_dealloc,
    .tp_methods = aead_methods,
};

/* ---- DATAGRAM frames of one packet ---- */

#define DATAGRAM_WITH_LENGTH 0x31 /* RFC 9221 §4: a DATAGRAM frame with its Length field */
#define MAX_PAYLOAD 65536         /* above any QUIC packet: max_udp_payload_size <= 65527 */

static uint8_t frames_buffer[MAX_PAYLOAD]; /* one call at a time: the GIL is held throughout */

static Py_ssize_t put_varint(uint8_t *at, uint64_t value) /* RFC 9000 §16 */
{
    if (value < 0x40) {
        at[0] = (uint8_t)value;
        return 1;
    }
    if (value < 0x4000) {
        at[0] = 0x40 | (uint8_t)(value >> 8);
        at[1] = (uint8_t)value;
        return 2;
    }
    if (value < 0x40000000) {
        for (int i = 3; i >= 0; i--, value >>= 8)
            at[i] = (uint8_t)value;
        at[0] |= 0x80;
        return 4;
    }
    for (int i = 7; i >= 0; i--, value >>= 8)
        at[i] = (uint8_t)value;
    at[0] |= 0xC0;
    return 8;
}

static Py_ssize_t varint_size(uint64_t value)
{
    return value < 0x40 ? 1 : value < 0x4000 ? 2 : value < 0x40000000 ? 4 : 8;
}

PyDoc_STRVAR(datagram_frames_doc,
    "datagram_frames(prefix, pending, room, min_size) -> (payload, taken, padded)\n\n"
    "A 1-RTT packet's payload: `prefix` (frames already written, e.g. an ACK), then a DATAGRAM\n"
    "frame with its length for each datagram at the head of the deque `pending` that fits in\n"
    "`room` bytes, taken off `pending` in order; PADDING up to `min_size` bytes if it is\n"
    "shorter (header protection's sample, RFC 9001 §5.4.2). An empty payload stays empty.");

static PyObject *datagram_frames(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "datagram_frames takes prefix, pending, room, min_size");
        return NULL;
    }
    Py_ssize_t room = PyLong_AsSsize_t(args[2]);
    if (room == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t min_size = PyLong_AsSsize_t(args[3]);
    if (min_size == -1 && PyErr_Occurred())
        return NULL;
    if (room > MAX_PAYLOAD)
        room = MAX_PAYLOAD;
    if (min_size < 0 || min_size > MAX_PAYLOAD) {
        PyErr_SetString(PyExc_ValueError, "min_size is out of range");
        return NULL;
    }
    Py_buffer prefix;
    if (PyObject_GetBuffer(args[0], &prefix, PyBUF_SIMPLE) < 0)
        return NULL;
    if (prefix.len > MAX_PAYLOAD) {
        PyBuffer_Release(&prefix);
        PyErr_SetString(PyExc_ValueError, "prefix is longer than any packet");
        return NULL;
    }
    Py_ssize_t used = prefix.len;
    memcpy(frames_buffer, prefix.buf, prefix.len);
    PyBuffer_Release(&prefix);
    PyObject *iterator = PyObject_GetIter(args[1]);
    if (iterator == NULL)
        return NULL;
    Py_ssize_t taken = 0;
    PyObject *item;
    while ((item = PyIter_Next(iterator)) != NULL) {
        Py_buffer data;
        if (PyObject_GetBuffer(item, &data, PyBUF_SIMPLE) < 0) {
            Py_DECREF(item);
            Py_DECREF(iterator);
            return NULL;
        }
        Py_ssize_t needed = 1 + varint_size((uint64_t)data.len) + data.len;
        int fits = room - used >= needed;
        if (fits) {
            frames_buffer[used++] = DATAGRAM_WITH_LENGTH;
            used += put_varint(frames_buffer + used, (uint64_t)data.len);
            memcpy(frames_buffer + used, data.buf, data.len);
            used += data.len;
            taken++;
        }
        PyBuffer_Release(&data);
        Py_DECREF(item);
        if (!fits)
            break;
    }
    Py_DECREF(iterator);
    if (PyErr_Occurred())
        return NULL;
    for (Py_ssize_t i = 0; i < taken; i++) {
        PyObject *popped = PyObject_CallMethod(args[1], "popleft", NULL);
        if (popped == NULL)
            return NULL;
        Py_DECREF(popped);
    }
    int padded = used > 0 && used < min_size;
    if (padded) {
        memset(frames_buffer + used, 0, min_size - used);
        used = min_size;
    }
    PyObject *payload = PyBytes_FromStringAndSize((const char *)frames_buffer, used);
    if (payload == NULL)
        return NULL;
    return Py_BuildValue("(NnO)", payload, taken, padded ? Py_True : Py_False);
}

/* ---- the module ---- */

static PyObject *module_init(PyObject *module, PyObject *error)
{
    (void)module;
    if (!PyType_Check(error) || !PyObject_IsSubclass(error, PyExc_Exception)) {
        PyErr_SetString(PyExc_TypeError, "init takes the exception class to raise");
        return NULL;
    }
    Py_XSETREF(crypto_error, Py_NewRef(error));
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"init", module_init, METH_O, "init(error): the exception class failures raise"},
    {"datagram_frames", (PyCFunction)(void (*)(void))datagram_frames, METH_FASTCALL,
     datagram_frames_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_definition = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_qtcrypto",
    .m_doc = "QUIC packet protection for the datagram fast path (RFC 9001 §5)",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__qtcrypto(void)
{
    if (PyType_Ready(&HeaderProtectionType) < 0 || PyType_Ready(&AeadType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&module_definition);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "HeaderProtection", (PyObject *)&HeaderProtectionType) < 0
        || PyModule_AddObjectRef(module, "Aead", (PyObject *)&AeadType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
