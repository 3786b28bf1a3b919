/*
 * Generic receive offload in user space (issue 14 items 2 and 5): the TCP segments of one TUN
 * write batch that belong together, merged into super-packets the kernel takes in one write
 * each. Loaded with ctypes by tunnel/wire/tcp_gro.py, built by make into build/libqtoffload.so
 * with tcp_tso.c (the read side).
 *
 * Why in C: in Python the merge cost about 2 us per packet, 8-10 % of the concentrator's CPU
 * at full speed (a py-spy profile of make bench, 2026-12-04); here one call per batch.
 *
 * The rules are Linux GRO's (net/ipv4/tcp_offload.c tcp_gro_receive), written out in Python in
 * tests/gro_reference.py, which the unit tests hold this file to: the same addresses and ports,
 * the next sequence number, the same ACK number, window, TCP options and IP header fields
 * (TOS, DF and TTL, IPv4 IDs counting up by one; traffic class, flow label and hop limit), only
 * ACK and a last PSH, every segment but the last exactly gso_size bytes, at most 65535 bytes in
 * all. Anything else is written as it came and ends its flow's merge, so that no packet
 * overtakes another of its flow.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "checksum.h"

#define VNET_HEADER 10
#define F_NEEDS_CSUM 1
#define GSO_TCPV4 1
#define GSO_TCPV6 4
#define TCP_ACK 0x10
#define TCP_PSH 0x08
#define PROTO_TCP 6
#define PROTO_UDP 17
#define MAX_MERGED 65535
#define KEY_MAX 36 /* IPv6 addresses and ports */

/* One write of the result: a merge of one flow's segments, or one packet as it came. */
struct slot {
    uint32_t first;       /* the batch index of its first packet */
    uint32_t head, tail;  /* its packets, linked through next[] */
    uint32_t count;
    int open;             /* a merge that may still take the flow's next segment */
    int mergeable;        /* 0: a packet that goes as it came */
    uint32_t ip, tcp;     /* header lengths */
    uint32_t size;        /* gso_size: the first segment's payload length */
    uint32_t next_seq;
    uint16_t next_id;     /* IPv4: the ID the next segment must carry */
    uint32_t length;      /* the merged IP packet's length so far */
    uint8_t last_flags;
};

/* A flow whose merge is open to its next segment (Python: the dict of merges by key). */
struct active {
    uint8_t key[KEY_MAX];
    uint32_t key_len;
    uint32_t slot;
};

static uint32_t get32(const uint8_t *at)
{
    return (uint32_t)at[0] << 24 | (uint32_t)at[1] << 16 | (uint32_t)at[2] << 8 | at[3];
}

/* A TCP data segment GRO may merge: its header lengths, payload length and flow key. */
static int mergeable(const uint8_t *p, size_t len, uint32_t *ip, uint32_t *tcp,
                     uint32_t *payload, uint8_t *key, uint32_t *key_len)
{
    long rest;

    if (len == 0)
        return 0;
    if (p[0] >> 4 == 4) {
        if (len < 40 || p[0] != 0x45 || p[9] != PROTO_TCP)
            return 0; /* IP options, not TCP, or too short for TCP */
        if ((p[6] & 0x3f) || p[7])
            return 0; /* a fragment */
        if (get16(p + 2) != len)
            return 0;
        *ip = 20;
        memcpy(key, p + 12, 12);
        *key_len = 12;
    } else if (p[0] >> 4 == 6) {
        if (len < 60 || p[6] != PROTO_TCP)
            return 0; /* an extension header, not TCP, or too short for TCP */
        if ((size_t)get16(p + 4) + 40 != len)
            return 0;
        *ip = 40;
        memcpy(key, p + 8, 36);
        *key_len = 36;
    } else {
        return 0;
    }
    *tcp = (uint32_t)(p[*ip + 12] >> 4) * 4;
    rest = (long)len - (long)*ip - (long)*tcp;
    if (*tcp < 20 || rest <= 0)
        return 0;
    if ((p[*ip + 13] & (uint8_t)~TCP_PSH) != TCP_ACK)
        return 0; /* SYN, FIN, RST, URG, ECE, CWR, or no ACK */
    *payload = (uint32_t)rest;
    return 1;
}

/* The key of any packet's flow (addresses and ports, as for TCP), or 0 when it cannot be read
 * (then no merge may stay open past the packet). */
static int flow_key(const uint8_t *p, size_t len, uint8_t *key, uint32_t *key_len)
{
    if (len == 0)
        return 0;
    if (p[0] >> 4 == 4) {
        size_t start = (size_t)(p[0] & 0x0f) * 4;
        if (start < 20 || len < start + 4)
            return 0;
        memcpy(key, p + 12, 8);
        memcpy(key + 8, p + start, 4);
        *key_len = 12;
        return 1;
    }
    if (p[0] >> 4 == 6 && len >= 44 && (p[6] == PROTO_TCP || p[6] == PROTO_UDP)) {
        memcpy(key, p + 8, 36);
        *key_len = 36;
        return 1;
    }
    return 0;
}

static int find(const struct active *active, uint32_t n_active, const uint8_t *key,
                uint32_t key_len)
{
    uint32_t i;

    for (i = 0; i < n_active; i++)
        if (active[i].key_len == key_len && !memcmp(active[i].key, key, key_len))
            return (int)i;
    return -1;
}

/* Whether segment p continues slot s by GRO's rule. */
static int joins(const struct slot *s, const uint8_t *first, const uint8_t *p, uint32_t tcp,
                 uint32_t payload)
{
    uint32_t ip = s->ip;

    if (!s->open || tcp != s->tcp || payload > s->size)
        return 0;
    if (s->length + payload > MAX_MERGED)
        return 0;
    if (get32(p + ip + 4) != s->next_seq)
        return 0;
    /* ACK number and data offset; window; options: all as the first segment's */
    if (memcmp(p + ip + 8, first + ip + 8, 5) || memcmp(p + ip + 14, first + ip + 14, 2))
        return 0;
    if (memcmp(p + ip + 20, first + ip + 20, tcp - 20))
        return 0;
    if (ip == 20) {
        /* TOS, the DF flag, TTL; the ID one more than the last one's */
        if (p[1] != first[1] || p[6] != first[6] || p[8] != first[8])
            return 0;
        if (get16(p + 4) != s->next_id)
            return 0;
    } else if (memcmp(p, first, 4) || p[7] != first[7]) {
        return 0; /* traffic class, flow label, hop limit */
    }
    return 1;
}

static void append(struct slot *s, uint32_t *next, const uint8_t *p, uint32_t index,
                   uint32_t payload)
{
    uint8_t flags = p[s->ip + 13];

    s->next_seq = get32(p + s->ip + 4) + payload;
    if (s->ip == 20)
        s->next_id = (uint16_t)(get16(p + 4) + 1);
    if (s->count)
        next[s->tail] = index;
    else
        s->head = index;
    s->tail = index;
    next[index] = UINT32_MAX;
    s->count++;
    s->length += payload;
    s->last_flags = flags;
    /* a short segment is the last one GRO takes; PSH ends a merge too */
    if (payload < s->size || (flags & TCP_PSH))
        s->open = 0;
}

/* The super-packet of slot s at out: the virtio_net_hdr saying "TCP segmentation, gso_size
 * bytes per segment", the first segment's headers with the merged length, the TCP checksum
 * left to the kernel (it holds the pseudo-header's sum, as Linux's own TSO packets do), and
 * every segment's payload. Returns its length. */
static size_t merged(const struct slot *s, const uint8_t *data, const uint32_t *offsets,
                     const uint32_t *next, uint8_t *out)
{
    const uint8_t *first = data + offsets[s->first];
    uint32_t ip = s->ip, tcp = s->tcp, tcp_length = s->length - ip, i;
    uint16_t vnet[4] = {(uint16_t)(ip + tcp), (uint16_t)s->size, (uint16_t)ip, 16};
    uint8_t *header = out + VNET_HEADER;
    uint8_t *th = header + ip;
    uint32_t pseudo;
    size_t at;

    out[0] = F_NEEDS_CSUM;
    out[1] = ip == 20 ? GSO_TCPV4 : GSO_TCPV6;
    memcpy(out + 2, vnet, sizeof vnet); /* native byte order, as the device expects */
    memcpy(header, first, ip + tcp);
    if (ip == 20) {
        put16(header + 2, (uint16_t)s->length);
        put16(header + 10, 0);
        put16(header + 10, (uint16_t)~fold(sum16(header, 20, 0)));
        pseudo = sum16(first + 12, 8, PROTO_TCP + tcp_length);
    } else {
        put16(header + 4, (uint16_t)tcp_length);
        pseudo = sum16(first + 8, 32, PROTO_TCP + (tcp_length >> 16) + (tcp_length & 0xffff));
    }
    th[13] = s->last_flags;
    put16(th + 16, fold(pseudo));
    at = VNET_HEADER + ip + tcp;
    for (i = s->head; i != UINT32_MAX; i = next[i]) {
        size_t start = offsets[i] + ip + tcp, chunk = offsets[i + 1] - start;
        memcpy(out + at, data + start, chunk);
        at += chunk;
    }
    return at;
}

size_t qt_gro_scratch_per_packet(void)
{
    return sizeof(struct slot) + sizeof(struct active) + sizeof(uint32_t);
}

/*
 * data: the batch's n packets back to back, packet i at offsets[i] .. offsets[i + 1].
 * out (out_cap bytes, at least the packets' length plus VNET_HEADER per packet): the writes
 * back to back, write w at write_offsets[w] .. write_offsets[w + 1], carrying the packets
 * members[member_offsets[w]] .. members[member_offsets[w + 1] - 1] (batch indices).
 * scratch: n * qt_gro_scratch_per_packet() bytes of the caller's, suitably aligned (malloc's).
 * Returns the number of writes, or -1 when out is too small.
 */
int qt_gro_coalesce(const uint8_t *data, const uint32_t *offsets, uint32_t n, uint8_t *out,
                    size_t out_cap, uint32_t *write_offsets, uint32_t *member_offsets,
                    uint32_t *members, void *scratch)
{
    struct slot *slots = scratch;
    struct active *active = (struct active *)(slots + n);
    uint32_t *next = (uint32_t *)(active + n);
    uint32_t n_slots = 0, n_active = 0, i, w, m = 0;
    size_t at = 0;

    if ((size_t)offsets[n] + (size_t)n * VNET_HEADER > out_cap)
        return -1;
    for (i = 0; i < n; i++) {
        const uint8_t *p = data + offsets[i];
        size_t len = offsets[i + 1] - offsets[i];
        uint32_t ip, tcp, payload, key_len;
        uint8_t key[KEY_MAX];
        struct slot *s;
        int found;

        if (!mergeable(p, len, &ip, &tcp, &payload, key, &key_len)) {
            /* a flow's FIN, pure ACK, ...: nothing of its flow may pass it */
            if (!flow_key(p, len, key, &key_len)) {
                n_active = 0;
            } else if ((found = find(active, n_active, key, key_len)) >= 0) {
                active[found] = active[--n_active];
            }
            s = &slots[n_slots++];
            memset(s, 0, sizeof *s);
            s->first = s->head = s->tail = i;
            s->count = 1;
            next[i] = UINT32_MAX;
            continue;
        }
        found = find(active, n_active, key, key_len);
        if (found >= 0) {
            struct slot *open = &slots[active[found].slot];
            if (joins(open, data + offsets[open->first], p, tcp, payload)) {
                append(open, next, p, i, payload);
                continue;
            }
        } else {
            found = (int)n_active++;
            memcpy(active[found].key, key, key_len);
            active[found].key_len = key_len;
        }
        active[found].slot = n_slots;
        s = &slots[n_slots++];
        memset(s, 0, sizeof *s);
        s->first = i;
        s->open = 1;
        s->mergeable = 1;
        s->ip = ip;
        s->tcp = tcp;
        s->size = payload;
        s->length = ip + tcp;
        append(s, next, p, i, payload);
    }

    write_offsets[0] = 0;
    member_offsets[0] = 0;
    for (w = 0; w < n_slots; w++) {
        const struct slot *s = &slots[w];
        if (s->count > 1) {
            at += merged(s, data, offsets, next, out + at);
            for (i = s->head; i != UINT32_MAX; i = next[i])
                members[m++] = i;
        } else {
            size_t len = offsets[s->first + 1] - offsets[s->first];
            memset(out + at, 0, VNET_HEADER); /* "a whole packet, checksums done" */
            memcpy(out + at + VNET_HEADER, data + offsets[s->first], len);
            at += VNET_HEADER + len;
            members[m++] = s->first;
        }
        write_offsets[w + 1] = (uint32_t)at;
        member_offsets[w + 1] = m;
    }
    return (int)n_slots;
}
