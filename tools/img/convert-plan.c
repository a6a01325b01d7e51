/*
 * ferry img convert's pure logic: zero detection on data buffers (the -S
 * rule) and cutting the next chunk out of a block-status extent.  No I/O
 * here; tests/unit/tools/test-convert-plan.c drives every branch.
 */
#include "config.h"

#include <string.h>

#include <glib.h>

#include "tools/img/convert-plan.h"

bool img_buffer_is_zero(const void *buf, size_t len)
{
    const uint8_t *p = buf;
    const uint64_t *w;
    size_t head, nwords;

    /* Most data buffers fail on their first bytes: check those first. */
    if (len < 64) {
        for (size_t i = 0; i < len; i++) {
            if (p[i]) {
                return false;
            }
        }
        return true;
    }
    head = (8 - ((uintptr_t)p & 7)) & 7;
    for (size_t i = 0; i < head; i++) {
        if (p[i]) {
            return false;
        }
    }
    p += head;
    len -= head;
    w = (const uint64_t *)(const void *)p;
    if (w[0] | w[1] | w[2] | w[3]) {
        return false;
    }
    nwords = len / 8;
    /* Four words at a time: the compiler vectorises the OR chain. */
    for (size_t i = 0; i + 8 <= nwords; i += 8) {
        if (w[i] | w[i + 1] | w[i + 2] | w[i + 3] | w[i + 4] | w[i + 5] |
            w[i + 6] | w[i + 7]) {
            return false;
        }
    }
    for (size_t i = nwords & ~(size_t)7; i < nwords; i++) {
        if (w[i]) {
            return false;
        }
    }
    for (size_t i = nwords * 8; i < len; i++) {
        if (p[i]) {
            return false;
        }
    }
    return true;
}

int64_t img_sparse_granule(int64_t sparse_bytes)
{
    int64_t g = 512;

    while (g * 2 <= sparse_bytes) {
        g *= 2;
    }
    return g;
}

size_t img_max_runs(int64_t len, int64_t granule)
{
    return (size_t)(len / granule) + 3;
}

static size_t push_run(ImgRun *runs, size_t n, int64_t offset, int64_t bytes,
                       bool zero)
{
    if (n > 0 && runs[n - 1].zero == zero) {
        runs[n - 1].bytes += bytes;
        return n;
    }
    runs[n].offset = offset;
    runs[n].bytes = bytes;
    runs[n].zero = zero;
    return n + 1;
}

size_t img_split_zero_runs(const uint8_t *buf, int64_t offset, int64_t len,
                           int64_t granule, int64_t min_zero, ImgRun *runs)
{
    size_t n = 0;
    int64_t pos = 0;
    int64_t zero_start = -1;    /* start (in buf) of the pending zero run */

    while (pos < len) {
        int64_t g_end = ((offset + pos) / granule + 1) * granule - offset;
        int64_t glen = MIN(g_end, len) - pos;
        bool zero = img_buffer_is_zero(buf + pos, glen);

        if (zero) {
            if (zero_start < 0) {
                zero_start = pos;
            }
        } else {
            if (zero_start >= 0) {
                int64_t zlen = pos - zero_start;
                n = push_run(runs, n, offset + zero_start, zlen,
                             zlen >= min_zero);
                zero_start = -1;
            }
            n = push_run(runs, n, offset + pos, glen, false);
        }
        pos += glen;
    }
    if (zero_start >= 0) {
        int64_t zlen = len - zero_start;
        n = push_run(runs, n, offset + zero_start, zlen, zlen >= min_zero);
    }
    return n;
}

int64_t img_plan_chunk(int64_t off, ImgExtentKind kind, int64_t ext_end,
                       int64_t total, int64_t chunk_bytes, int64_t align,
                       int64_t max_zero, ImgExtentKind *out_kind)
{
    int64_t end;

    if (off >= total) {
        *out_kind = IMG_EXTENT_DATA;
        return 0;
    }
    ext_end = MIN(MAX(ext_end, off + 1), total);
    if (kind != IMG_EXTENT_DATA) {
        /* Zero and backing extents: whole clusters only when aligned. */
        end = ext_end;
        if (align > 1 && end < total) {
            end -= end % align;
        }
        if (end > off) {
            *out_kind = kind;
            return MIN(end - off, max_zero);
        }
        /* Shorter than a cluster: the cluster is copied as data. */
        ext_end = off + 1;
    }
    *out_kind = IMG_EXTENT_DATA;
    /* Data chunks end on chunk_bytes boundaries so later ones stay aligned. */
    end = MIN((off / chunk_bytes + 1) * chunk_bytes, total);
    if (align > 1) {
        int64_t ext_aligned = ext_end % align ? ext_end + align - ext_end % align
                                              : ext_end;
        end = MIN(end, MIN(ext_aligned, total));
    } else {
        end = MIN(end, ext_end);
    }
    return end - off;
}
