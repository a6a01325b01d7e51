/*
 * Compressed clusters: zlib raw deflate (window 2^12, as QEMU writes it)
 * and zstd (compression_type=1), and whole-cluster compressed writes.
 * Compression runs in the calling thread with no lock held, so callers
 * spread it over cores; only the allocation and the L2 update are locked.
 * Spec: "Compressed Clusters Descriptor", "compression_type".
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#ifdef HAVE_ZSTD
#include <zstd.h>
#include <zstd_errors.h>
#endif

#include "common/error.h"
#include "common/opts.h"
#include "qcow2/internal.h"

ssize_t qcow2_compress(uint32_t type, void *dst, size_t dst_len,
                       const void *src, size_t src_len)
{
    if (type == QCOW2_COMPRESS_ZSTD) {
#ifdef HAVE_ZSTD
        size_t n = ZSTD_compress(dst, dst_len, src, src_len, 1);
        if (ZSTD_isError(n)) {
            return ZSTD_getErrorCode(n) == ZSTD_error_dstSize_tooSmall
                   ? -ENOSPC : -EIO;
        }
        return (ssize_t)n;
#else
        return -ENOTSUP;
#endif
    }
    z_stream z = { 0 };
    ssize_t ret;

    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9,
                     Z_DEFAULT_STRATEGY) != Z_OK) {
        return -ENOMEM;
    }
    z.next_in = (Bytef *)src;
    z.avail_in = (uInt)src_len;
    z.next_out = dst;
    z.avail_out = (uInt)dst_len;
    ret = deflate(&z, Z_FINISH);
    if (ret == Z_STREAM_END) {
        ret = (ssize_t)(dst_len - z.avail_out);
    } else {
        ret = ret == Z_OK || ret == Z_BUF_ERROR ? -ENOSPC : -EIO;
    }
    deflateEnd(&z);
    return ret;
}

int qcow2_decompress(uint32_t type, void *dst, size_t dst_len,
                     const void *src, size_t src_len)
{
    if (type == QCOW2_COMPRESS_ZSTD) {
#ifdef HAVE_ZSTD
        /* Streaming: the stored data may carry padding past the frame. */
        ZSTD_DCtx *d = ZSTD_createDCtx();
        ZSTD_inBuffer in = { src, src_len, 0 };
        ZSTD_outBuffer out = { dst, dst_len, 0 };
        int ret = 0;

        if (!d) {
            return -ENOMEM;
        }
        while (out.pos < out.size) {
            size_t last_in = in.pos, last_out = out.pos;
            size_t r = ZSTD_decompressStream(d, &out, &in);
            if (ZSTD_isError(r)) {
                ret = -EIO;
                break;
            }
            if (r == 0 || (in.pos == last_in && out.pos == last_out)) {
                break;
            }
        }
        if (ret == 0 && out.pos != out.size) {
            ret = -EIO;
        }
        ZSTD_freeDCtx(d);
        return ret;
#else
        return -ENOTSUP;
#endif
    }
    z_stream z = { 0 };
    int ret;

    if (inflateInit2(&z, -12) != Z_OK) {
        return -ENOMEM;
    }
    z.next_in = (Bytef *)src;
    z.avail_in = (uInt)src_len;
    z.next_out = dst;
    z.avail_out = (uInt)dst_len;
    ret = inflate(&z, Z_FINISH);
    inflateEnd(&z);
    if ((ret == Z_STREAM_END || ret == Z_BUF_ERROR) && z.avail_out == 0) {
        return 0;
    }
    return -EIO;
}

/* Write one compressed cluster at guest offset cl (cluster aligned). */
static int write_one(Qcow2State *s, uint64_t cl, const uint8_t *data)
{
    uint64_t cs = s->cluster_size;
    uint64_t i = (cl / cs) & (s->l2_entries - 1);
    uint32_t x = 62 - (s->cluster_bits - 8);
    g_autofree uint8_t *out = g_try_malloc(cs);
    uint64_t entry, old;
    int64_t host;
    ssize_t clen;
    void *l2 = NULL;
    int ret;

    if (!out) {
        return -ENOMEM;
    }
    clen = qcow2_compress(s->compression_type, out, cs - 1, data, cs);
    if (clen == -ENOSPC) {
        /* Does not shrink: store it as a normal cluster. */
        return qcow2_pwrite(s->bs, cl, cs, data, 0);
    }
    if (clen < 0) {
        return (int)clen;
    }
    g_mutex_lock(&s->lock);
    if (s->incompat & QCOW2_INCOMPAT_CORRUPT) {
        g_mutex_unlock(&s->lock);
        return -EIO;
    }
    for (;;) {
        bool busy = false;
        for (guint k = 0; k < s->in_flight->len; k++) {
            Qcow2InFlight *f = &g_array_index(s->in_flight, Qcow2InFlight, k);
            busy |= f->start < cl + cs && cl < f->end;
        }
        if (!busy) {
            break;
        }
        g_cond_wait(&s->alloc_cond, &s->lock);
    }
    ret = qcow2_mark_dirty_locked(s);
    host = ret < 0 ? ret : qcow2_alloc_bytes(s, (uint64_t)clen);
    if (host < 0) {
        g_mutex_unlock(&s->lock);
        return (int)host;
    }
    {
        Qcow2InFlight f = { cl, cl + cs };
        g_array_append_val(s->in_flight, f);
    }
    g_mutex_unlock(&s->lock);

    ret = block_node_pwrite(s->bs->file->node, host, clen, out, 0);

    g_mutex_lock(&s->lock);
    if (ret == 0) {
        ret = qcow2_get_l2_for_write(s, cl, &l2);
    }
    if (ret == 0) {
        uint64_t nb = (((uint64_t)host + clen - 1) >> 9) - ((uint64_t)host >> 9);
        old = qcow2_l2e_get(s, l2, i);
        entry = QCOW2_OFLAG_COMPRESSED | (nb << x) | (uint64_t)host;
        qcow2_l2e_set(s, l2, i, entry, 0);
        qcow2_cache_mark_dirty(&s->l2_cache, l2);
        qcow2_cache_put(&s->l2_cache, l2);
        if (old & QCOW2_OFLAG_COMPRESSED) {
            uint64_t coff, len;
            qcow2_compressed_location(s, old, &coff, &len);
            qcow2_free_deferred(s, coff & ~(cs - 1),
                                (coff + len - 1) / cs - coff / cs + 1,
                                QCOW2_DISCARD_OTHER);
        } else if (old & QCOW2_L2E_OFFSET_MASK) {
            qcow2_free_deferred(s, old & QCOW2_L2E_OFFSET_MASK, 1,
                                QCOW2_DISCARD_OTHER);
        }
    } else {
        qcow2_free_deferred(s, (uint64_t)host & ~(cs - 1),
                            ((uint64_t)host + clen - 1) / cs - (uint64_t)host / cs
                            + 1, QCOW2_DISCARD_OTHER);
    }
    for (guint k = 0; k < s->in_flight->len; k++) {
        Qcow2InFlight *f = &g_array_index(s->in_flight, Qcow2InFlight, k);
        if (f->start == cl && f->end == cl + cs) {
            g_array_remove_index_fast(s->in_flight, k);
            break;
        }
    }
    g_cond_broadcast(&s->alloc_cond);
    g_mutex_unlock(&s->lock);
    return ret;
}

int qcow2_pwrite_compressed(BlockNode *bs, int64_t offset, int64_t bytes,
                            const void *buf)
{
    Qcow2State *s = bs->opaque;
    uint64_t cs = s->cluster_size;
    const uint8_t *p = buf;

    if (s->has_data_file) {
        return -ENOTSUP;    /* spec: no compressed clusters in data files */
    }
    if ((offset & (cs - 1)) ||
        ((bytes & (cs - 1)) && (uint64_t)(offset + bytes) != s->size)) {
        return -EINVAL;
    }
    while (bytes > 0) {
        uint64_t n = MIN((uint64_t)bytes, cs);
        int ret;
        if (n < cs) {
            g_autofree uint8_t *pad = g_try_malloc0(cs);
            if (!pad) {
                return -ENOMEM;
            }
            memcpy(pad, p, n);
            ret = write_one(s, offset, pad);
        } else {
            ret = write_one(s, offset, p);
        }
        if (ret < 0) {
            return ret;
        }
        offset += n;
        bytes -= n;
        p += n;
    }
    return 0;
}
