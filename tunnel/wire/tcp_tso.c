/*
 * TCP segmentation offload in user space: a super-packet read from a TUN device opened with
 * IFF_VNET_HDR and given TUN_F_TSO4/6 (issue 14 items 2 and 5), cut into the segments the
 * kernel would have sent, each with its own lengths, IPv4 ID, sequence number and checksums.
 * Loaded with ctypes by tunnel/wire/tcp_tso.py, built by make (build/libqttso.so).
 *
 * Why in C: cutting and checksumming costs about 4 us per segment in Python, more than the
 * read system calls it saves; here it is a fraction of a microsecond.
 *
 * The rules are the kernel's (net/ipv4/tcp_offload.c tcp_gso_segment, net/ipv4/af_inet.c
 * inet_gso_segment): every segment but the last carries gso_size bytes; the first keeps CWR,
 * the last keeps FIN and PSH; IPv4 IDs count up from the super-packet's. A packet that is not
 * segmented but asks for its checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM, TUN_F_CSUM) gets it the
 * virtio way: the ones' complement sum from csum_start to the end, stored at csum_offset.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "checksum.h"

#define F_NEEDS_CSUM 1
#define GSO_NONE 0
#define GSO_TCPV4 1
#define GSO_TCPV6 4
#define GSO_ECN 0x80
#define VNET_HEADER 10
#define TCP_FIN 0x01
#define TCP_PSH 0x08
#define TCP_CWR 0x80

/* The reasons a frame is refused; tcp_tso.py turns each into a sentence. */
enum {
    ERR_SHORT = -1,     /* shorter than its headers say */
    ERR_GSO_TYPE = -2,  /* a segmentation we did not ask the kernel for */
    ERR_SPACE = -3,     /* more segments or bytes than the caller's buffers hold */
    ERR_CSUM = -4,      /* csum_start / csum_offset outside the packet */
};

/* A checksum field's value: the complement of the folded sum, never 0 (0 means "none" in
 * UDP; the kernel stores CSUM_MANGLED_0 the same way, and TCP reads both alike). */
static uint16_t checksum(uint32_t sum)
{
    uint16_t value = (uint16_t)~fold(sum);
    return value ? value : 0xffff;
}

static int finish_checksum(uint8_t *packet, size_t len, size_t start, size_t offset)
{
    if (start >= len || start + offset + 2 > len)
        return ERR_CSUM;
    /* the field holds the pseudo-header's sum already: sum over it, as virtio says */
    put16(packet + start + offset, checksum(sum16(packet + start, len - start, 0)));
    return 0;
}

/*
 * frame: the virtio_net_hdr (native byte order) and the packet, as one read returned them.
 * out: the segments back to back; offsets[i] .. offsets[i + 1] is segment i.
 * Returns the number of segments, or one of the ERR_ values.
 */
int qt_tso_segment(const uint8_t *frame, size_t frame_len, uint8_t *out, size_t out_cap,
                   uint32_t *offsets, size_t max_segments)
{
    uint8_t flags, gso_type;
    uint16_t gso_size, csum_start, csum_offset;
    const uint8_t *packet = frame + VNET_HEADER;
    size_t len, l4, tcp_len, headers, payload, count, i;
    int ipv4;

    if (frame_len < VNET_HEADER || max_segments < 1)
        return ERR_SHORT;
    flags = frame[0];
    gso_type = frame[1];
    memcpy(&gso_size, frame + 4, 2);
    memcpy(&csum_start, frame + 6, 2);
    memcpy(&csum_offset, frame + 8, 2);
    len = frame_len - VNET_HEADER;
    offsets[0] = 0;

    if ((gso_type & ~GSO_ECN) == GSO_NONE) {
        if (len > out_cap)
            return ERR_SPACE;
        memcpy(out, packet, len);
        offsets[1] = (uint32_t)len;
        if (flags & F_NEEDS_CSUM) {
            int err = finish_checksum(out, len, csum_start, csum_offset);
            if (err)
                return err;
        }
        return 1;
    }
    if (gso_type & GSO_ECN)
        return ERR_GSO_TYPE;  /* asked only without TUN_F_TSO_ECN: never expected */
    if (gso_type == GSO_TCPV4) {
        if (len < 20 || (packet[0] >> 4) != 4)
            return ERR_SHORT;
        ipv4 = 1;
    } else if (gso_type == GSO_TCPV6) {
        if (len < 40 || (packet[0] >> 4) != 6)
            return ERR_SHORT;
        ipv4 = 0;
    } else {
        return ERR_GSO_TYPE;
    }
    /* the TCP header starts at csum_start (the kernel sets it for every TSO packet; an IPv6
     * packet's extension headers lie before it) */
    l4 = csum_start;
    if (!(flags & F_NEEDS_CSUM) || l4 + 20 > len || csum_offset != 16 || gso_size == 0)
        return ERR_SHORT;
    tcp_len = (size_t)(packet[l4 + 12] >> 4) * 4;
    headers = l4 + tcp_len;
    if (tcp_len < 20 || headers > len)
        return ERR_SHORT;
    /* the IP header lies wholly before the TCP header */
    if (ipv4 ? (size_t)(packet[0] & 0x0f) * 4 < 20 || (size_t)(packet[0] & 0x0f) * 4 > l4
             : l4 < 40)
        return ERR_SHORT;
    payload = len - headers;
    count = payload ? (payload + gso_size - 1) / gso_size : 1;
    if (count > max_segments || payload + count * headers > out_cap)
        return ERR_SPACE;

    {
        uint32_t seq = (uint32_t)packet[l4 + 4] << 24 | (uint32_t)packet[l4 + 5] << 16 |
                       (uint32_t)packet[l4 + 6] << 8 | packet[l4 + 7];
        uint16_t ident = ipv4 ? get16(packet + 4) : 0;
        uint8_t tcp_flags = packet[l4 + 13];
        /* the pseudo-header's addresses and protocol, the same for every segment */
        uint32_t pseudo = ipv4 ? sum16(packet + 12, 8, 6) : sum16(packet + 8, 32, 6);
        size_t at = 0;

        for (i = 0; i < count; i++) {
            size_t chunk = payload - i * gso_size < gso_size ? payload - i * gso_size : gso_size;
            size_t seg_l4 = tcp_len + chunk;
            uint8_t *seg = out + at;
            uint8_t *tcp = seg + l4;
            uint32_t seg_seq = seq + (uint32_t)(i * gso_size);

            memcpy(seg, packet, headers);
            memcpy(seg + headers, packet + headers + i * gso_size, chunk);
            if (ipv4) {
                put16(seg + 2, (uint16_t)(headers + chunk));
                put16(seg + 4, (uint16_t)(ident + i));
                put16(seg + 10, 0);
                put16(seg + 10, checksum(sum16(seg, (size_t)(seg[0] & 0x0f) * 4, 0)));
            } else {
                put16(seg + 4, (uint16_t)(headers + chunk - 40));
            }
            tcp[4] = (uint8_t)(seg_seq >> 24);
            tcp[5] = (uint8_t)(seg_seq >> 16);
            tcp[6] = (uint8_t)(seg_seq >> 8);
            tcp[7] = (uint8_t)seg_seq;
            tcp[13] = tcp_flags;
            if (i + 1 < count)
                tcp[13] &= (uint8_t)~(TCP_FIN | TCP_PSH);
            if (i > 0)
                tcp[13] &= (uint8_t)~TCP_CWR;
            put16(tcp + 16, 0);
            put16(tcp + 16, checksum(sum16(tcp, seg_l4, pseudo + (uint32_t)seg_l4)));
            at += headers + chunk;
            offsets[i + 1] = (uint32_t)at;
        }
    }
    return (int)count;
}
