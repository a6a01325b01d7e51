/*
 * Big-endian loads and stores for on-disk and on-wire structures (qcow2
 * headers and tables, NBD messages): unaligned, byte by byte in the
 * source, one load and a bswap in the compiled code.
 */
#ifndef FERRY_COMMON_BYTES_H
#define FERRY_COMMON_BYTES_H

#include <stdint.h>
#include <string.h>
#include <glib.h>

static inline uint16_t ferry_ld_be16(const void *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return GUINT16_FROM_BE(v);
}

static inline uint32_t ferry_ld_be32(const void *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return GUINT32_FROM_BE(v);
}

static inline uint64_t ferry_ld_be64(const void *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return GUINT64_FROM_BE(v);
}

static inline void ferry_st_be16(void *p, uint16_t v)
{
    v = GUINT16_TO_BE(v);
    memcpy(p, &v, 2);
}

static inline void ferry_st_be32(void *p, uint32_t v)
{
    v = GUINT32_TO_BE(v);
    memcpy(p, &v, 4);
}

static inline void ferry_st_be64(void *p, uint64_t v)
{
    v = GUINT64_TO_BE(v);
    memcpy(p, &v, 8);
}

#endif
