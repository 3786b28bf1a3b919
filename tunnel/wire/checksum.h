/*
 * The RFC 1071 checksum arithmetic and big-endian field access both TUN offloads use
 * (tcp_tso.c, tcp_gro.c): one copy, included by each.
 */
#ifndef QT_CHECKSUM_H
#define QT_CHECKSUM_H

#include <stddef.h>
#include <stdint.h>

/* The one's-complement sum of data's 16-bit big-endian words added to sum, not folded. */
static inline uint32_t sum16(const uint8_t *data, size_t len, uint32_t sum)
{
    while (len > 1) {
        sum += (uint32_t)data[0] << 8 | data[1];
        data += 2;
        len -= 2;
    }
    if (len)
        sum += (uint32_t)data[0] << 8;
    return sum;
}

static inline uint16_t fold(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)sum;
}

static inline void put16(uint8_t *at, uint16_t value)
{
    at[0] = (uint8_t)(value >> 8);
    at[1] = (uint8_t)value;
}

static inline uint16_t get16(const uint8_t *at)
{
    return (uint16_t)(at[0] << 8 | at[1]);
}

#endif
