/*
 * qcow2 refcounts of any width (refcount_order 0..6): reading and packing
 * entries, allocating clusters and bytes, deferred frees (internal.h,
 * invariant 4), growing the refcount table and rebuilding every refcount
 * from scratch (check repair, lazy refcounts).  Spec: "Host cluster
 * management".  Callers hold the qcow2 lock.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/bytes.h"
#include "common/error.h"
#include "common/log.h"
#include "qcow2/internal.h"

/* -- packing --------------------------------------------------------------- */

uint64_t qcow2_rc_get_entry(const void *block, uint32_t order, uint64_t i)
{
    const uint8_t *p = block;

    switch (order) {
    case 0: case 1: case 2: {
        uint32_t bits = 1u << order;
        uint32_t per_byte = 8 / bits;
        uint32_t shift = (i % per_byte) * bits;
        return (p[i / per_byte] >> shift) & ((1u << bits) - 1);
    }
    case 3:
        return p[i];
    case 4:
        return ((uint64_t)p[2 * i] << 8) | p[2 * i + 1];
    case 5:
        return ferry_ld_be32(p + 4 * i);
    default:
        return ferry_ld_be64(p + 8 * i);
    }
}

void qcow2_rc_set_entry(void *block, uint32_t order, uint64_t i, uint64_t v)
{
    uint8_t *p = block;

    switch (order) {
    case 0: case 1: case 2: {
        uint32_t bits = 1u << order;
        uint32_t per_byte = 8 / bits;
        uint32_t shift = (i % per_byte) * bits;
        uint8_t mask = (uint8_t)(((1u << bits) - 1) << shift);
        p[i / per_byte] = (uint8_t)((p[i / per_byte] & ~mask) |
                                    ((v << shift) & mask));
        break;
    }
    case 3:
        p[i] = (uint8_t)v;
        break;
    case 4:
        p[2 * i] = (uint8_t)(v >> 8);
        p[2 * i + 1] = (uint8_t)v;
        break;
    case 5:
        ferry_st_be32(p + 4 * i, (uint32_t)v);
        break;
    default:
        ferry_st_be64(p + 8 * i, v);
        break;
    }
}

/* -- lookups ------------------------------------------------------------- */

int qcow2_get_refcount(Qcow2State *s, uint64_t ci, uint64_t *rc)
{
    uint64_t idx = ci >> s->rb_bits;
    void *block;
    int ret;

    if (idx >= s->reftable_size || !s->reftable[idx]) {
        *rc = 0;
        return 0;
    }
    block = qcow2_cache_get(&s->rb_cache, s->reftable[idx], &ret);
    if (!block) {
        return ret;
    }
    *rc = qcow2_rc_get_entry(block, s->refcount_order,
                             ci & ((1ull << s->rb_bits) - 1));
    qcow2_cache_put(&s->rb_cache, block);
    return 0;
}

int qcow2_write_reftable_entry(Qcow2State *s, uint64_t idx)
{
    uint64_t be = GUINT64_TO_BE(s->reftable[idx]);

    return block_node_pwrite(s->bs->file->node,
                             s->reftable_offset + idx * 8, 8, &be, 0);
}

static void note_end(Qcow2State *s, uint64_t end_bytes)
{
    if (end_bytes > s->file_end) {
        s->file_end = end_bytes;
    }
}

static int grow_reftable(Qcow2State *s, uint64_t min_entries);

/*
 * Create the missing refcount block idx at the first cluster of the range
 * it describes: that cluster's refcount is 0 (no block), so it is free,
 * and the new block counts itself.
 */
static int create_refblock(Qcow2State *s, uint64_t idx)
{
    uint64_t off = (idx << s->rb_bits) << s->cluster_bits;
    void *block;
    int ret;

    if (idx >= s->reftable_size) {
        ret = grow_reftable(s, idx + 1);
        if (ret < 0) {
            return ret;
        }
        if (s->reftable[idx]) {
            return 0;
        }
    }
    block = qcow2_cache_get_empty(&s->rb_cache, off, &ret);
    if (!block) {
        return ret;
    }
    qcow2_rc_set_entry(block, s->refcount_order, 0, 1);
    qcow2_cache_mark_dirty(&s->rb_cache, block);
    qcow2_cache_put(&s->rb_cache, block);
    /* Invariant 2: the block is on disk before the table points at it. */
    ret = qcow2_cache_write_all(&s->rb_cache);
    if (ret == 0) {
        ret = qcow2_barrier(s);
    }
    if (ret < 0) {
        return ret;
    }
    s->reftable[idx] = off;
    ret = qcow2_write_reftable_entry(s, idx);
    if (ret < 0) {
        s->reftable[idx] = 0;
        return ret;
    }
    note_end(s, off + s->cluster_size);
    s->meta_stale = true;
    FERRY_TRACE_POINT(QCOW2, "node=%s refblock-alloc idx=%" G_GUINT64_FORMAT
                      " off=0x%" G_GINT64_MODIFIER "x", s->bs->node_name, idx,
                      off);
    return 0;
}

/*
 * A new refcount table with room for min_entries, placed past the end of
 * the image together with the blocks that count it (invariant 5).
 */
static int grow_reftable(Qcow2State *s, uint64_t min_entries)
{
    uint64_t cs = s->cluster_size;
    uint64_t entries = MAX(min_entries, s->reftable_size * 3 / 2 + 1);
    uint64_t tclusters, t, old_off = s->reftable_offset;
    uint64_t nb = 0, tclusters_total = 0;
    uint64_t old_clusters = s->reftable_clusters, old_size = s->reftable_size;
    uint64_t *table, *old_table = s->reftable;
    uint8_t hdr[12];
    int ret;

    tclusters = qcow2_align_up(entries * 8, cs) / cs;
    entries = tclusters * cs / 8;
    if (tclusters * cs > QCOW2_MAX_REFTABLE_BYTES ||
        tclusters > UINT32_MAX) {
        return -EFBIG;
    }
    /* Table at the end, then the blocks its own clusters need. */
    t = qcow2_align_up(s->file_end, cs) / cs;
    for (;;) {
        uint64_t b = 0, need;
        for (uint64_t idx = t >> s->rb_bits;
             idx <= (t + tclusters + nb - 1) >> s->rb_bits; idx++) {
            b += idx >= old_size || !old_table[idx];
        }
        need = (t + tclusters + b - 1) >> s->rb_bits;
        if (b == nb && need < entries) {
            break;
        }
        nb = b;
        if (need >= entries) {
            entries = need + 1;
            tclusters = qcow2_align_up(entries * 8, cs) / cs;
            entries = tclusters * cs / 8;
        }
    }
    table = g_try_new0(uint64_t, entries);
    if (!table) {
        return -ENOMEM;
    }
    memcpy(table, old_table, old_size * 8);
    s->reftable = table;
    s->reftable_size = entries;
    {
        uint64_t j = 0;
        for (uint64_t idx = t >> s->rb_bits;
             idx <= (t + tclusters + nb - 1) >> s->rb_bits; idx++) {
            if (!s->reftable[idx]) {
                uint64_t off = (t + tclusters + j++) * cs;
                void *block = qcow2_cache_get_empty(&s->rb_cache, off, &ret);
                if (!block) {
                    goto fail;
                }
                qcow2_cache_mark_dirty(&s->rb_cache, block);
                qcow2_cache_put(&s->rb_cache, block);
                s->reftable[idx] = off;
            }
        }
        tclusters_total = tclusters + nb;
    }
    ret = qcow2_update_refcount(s, t * cs, tclusters_total * cs, 1);
    if (ret < 0) {
        goto fail;
    }
    ret = qcow2_cache_write_all(&s->rb_cache);
    if (ret < 0) {
        goto fail;
    }
    {
        g_autofree uint64_t *be = g_try_new0(uint64_t, entries);
        if (!be) {
            ret = -ENOMEM;
            goto fail;
        }
        for (uint64_t i = 0; i < entries; i++) {
            be[i] = GUINT64_TO_BE(s->reftable[i]);
        }
        ret = block_node_pwrite(s->bs->file->node, t * cs, tclusters * cs, be,
                                0);
    }
    if (ret == 0) {
        ret = qcow2_barrier(s);
    }
    if (ret < 0) {
        goto fail;
    }
    ferry_st_be64(hdr, t * cs);
    ferry_st_be32(hdr + 8, (uint32_t)tclusters);
    ret = qcow2_write_header_field(s, QCOW2_HDR_REFTABLE_OFF, hdr, 12);
    if (ret == 0) {
        ret = qcow2_barrier(s);
    }
    if (ret < 0) {
        goto fail;
    }
    note_end(s, (t + tclusters_total) * cs);
    s->meta_stale = true;
    s->reftable_offset = t * cs;
    s->reftable_clusters = (uint32_t)tclusters;
    g_free(old_table);
    qcow2_free_deferred(s, old_off, old_clusters, QCOW2_DISCARD_OTHER);
    FERRY_TRACE_POINT(QCOW2, "node=%s reftable-grow entries=%" G_GUINT64_FORMAT
                      " off=0x%" G_GINT64_MODIFIER "x", s->bs->node_name,
                      entries, t * cs);
    return 0;

fail:
    /* Blocks made for the new table stay allocated on disk: a leak only. */
    g_free(s->reftable);
    s->reftable = old_table;
    s->reftable_size = old_size;
    qcow2_cache_drop_all(&s->rb_cache);
    return ret;
}

int qcow2_update_refcount(Qcow2State *s, uint64_t offset, uint64_t bytes,
                          int64_t delta)
{
    uint64_t first = offset >> s->cluster_bits;
    uint64_t last = (offset + bytes - 1) >> s->cluster_bits;
    uint64_t mask = (1ull << s->rb_bits) - 1;

    if (bytes == 0) {
        return 0;
    }
    for (uint64_t ci = first; ci <= last;) {
        uint64_t idx = ci >> s->rb_bits;
        void *block;
        int ret;

        if (idx >= s->reftable_size || !s->reftable[idx]) {
            if (delta < 0) {
                return qcow2_mark_corrupt_locked(s, "refcount of cluster 0x%"
                        G_GINT64_MODIFIER "x would drop below zero",
                        ci << s->cluster_bits);
            }
            ret = create_refblock(s, idx);
            if (ret < 0) {
                return ret;
            }
        }
        block = qcow2_cache_get(&s->rb_cache, s->reftable[idx], &ret);
        if (!block) {
            return ret;
        }
        for (; ci <= last && (ci >> s->rb_bits) == idx; ci++) {
            uint64_t v = qcow2_rc_get_entry(block, s->refcount_order,
                                            ci & mask);
            if ((delta < 0 && v < (uint64_t)-delta) ||
                (delta > 0 && s->refcount_max - v < (uint64_t)delta)) {
                qcow2_cache_put(&s->rb_cache, block);
                if (delta > 0) {
                    return -ERANGE;
                }
                return qcow2_mark_corrupt_locked(s, "refcount of cluster 0x%"
                        G_GINT64_MODIFIER "x would drop below zero",
                        ci << s->cluster_bits);
            }
            v += delta;
            qcow2_rc_set_entry(block, s->refcount_order, ci & mask, v);
            if (v == 0 && ci < s->free_cluster_index) {
                s->free_cluster_index = ci;
            }
        }
        qcow2_cache_mark_dirty(&s->rb_cache, block);
        qcow2_cache_put(&s->rb_cache, block);
    }
    return 0;
}

/* -- allocation ---------------------------------------------------------- */

/* First run of n free clusters at or after the hint. */
static int find_free_run(Qcow2State *s, uint64_t n, uint64_t *start)
{
    uint64_t ci = s->free_cluster_index, run = 0, first = ci;
    bool at_hint = true;

    for (;;) {
        uint64_t rc = 0;
        int ret = qcow2_get_refcount(s, ci, &rc);
        if (ret < 0) {
            return ret;
        }
        if (rc) {
            run = 0;
            first = ci + 1;
            if (at_hint) {
                s->free_cluster_index = ci + 1;
            }
        } else {
            at_hint = false;
            if (++run == n) {
                *start = first;
                return 0;
            }
        }
        ci++;
        if (ci >> (63 - s->cluster_bits)) {
            return -EFBIG;
        }
    }
}

/*
 * n contiguous clusters.  Refcount blocks the run needs are placed at the
 * start of a slightly longer free run, so a run may cross any number of
 * block ranges (64 clusters each with 512-byte clusters and 64-bit
 * refcounts).
 */
int64_t qcow2_alloc_clusters(Qcow2State *s, uint64_t n)
{
    uint64_t rb = 1ull << s->rb_bits;
    uint64_t extra = n / rb + 3;
    uint64_t start, m = 0;
    uint64_t missing[64];
    int ret;

    for (;;) {
        uint64_t last_idx;
        ret = find_free_run(s, n + extra, &start);
        if (ret < 0) {
            return ret;
        }
        last_idx = (start + n + extra - 1) >> s->rb_bits;
        if (last_idx >= s->reftable_size) {
            ret = grow_reftable(s, last_idx + 1);
            if (ret < 0) {
                return ret;
            }
            continue;   /* the new table took clusters: search again */
        }
        m = 0;
        for (uint64_t idx = start >> s->rb_bits; idx <= last_idx; idx++) {
            if (!s->reftable[idx]) {
                if (m == G_N_ELEMENTS(missing) || m == extra) {
                    return -EFBIG;
                }
                missing[m++] = idx;
            }
        }
        break;
    }
    if (m) {
        /* Blocks first, in memory; then their own refcounts; then disk. */
        for (uint64_t j = 0; j < m; j++) {
            uint64_t off = (start + j) << s->cluster_bits;
            void *block = qcow2_cache_get_empty(&s->rb_cache, off, &ret);
            if (!block) {
                return ret;
            }
            qcow2_cache_mark_dirty(&s->rb_cache, block);
            qcow2_cache_put(&s->rb_cache, block);
            s->reftable[missing[j]] = off;
        }
        ret = qcow2_update_refcount(s, start << s->cluster_bits,
                                    m << s->cluster_bits, 1);
        if (ret == 0) {
            /* Invariant 2: blocks on disk before the table points at them. */
            ret = qcow2_cache_write_all(&s->rb_cache);
        }
        if (ret == 0) {
            ret = qcow2_barrier(s);
        }
        for (uint64_t j = 0; j < m && ret == 0; j++) {
            ret = qcow2_write_reftable_entry(s, missing[j]);
        }
        if (ret < 0) {
            return ret;
        }
        note_end(s, (start + m) << s->cluster_bits);
        s->meta_stale = true;
    }
    start += m;
    ret = qcow2_update_refcount(s, start << s->cluster_bits,
                                n << s->cluster_bits, 1);
    if (ret < 0) {
        return ret;
    }
    if (start - m == s->free_cluster_index) {
        s->free_cluster_index = start + n;
    }
    note_end(s, (start + n) << s->cluster_bits);
    return (int64_t)(start << s->cluster_bits);
}

/*
 * Bytes for compressed data: packed after the previous compressed cluster
 * when it fits in that host cluster, else in fresh clusters.  Each host
 * cluster holding part of it gets one more reference.
 */
int64_t qcow2_alloc_bytes(Qcow2State *s, uint64_t bytes)
{
    uint64_t cs = s->cluster_size, off = s->free_byte_offset;
    int64_t fresh;
    int ret;

    if (off && (off & (cs - 1)) && bytes <= cs - (off & (cs - 1))) {
        uint64_t rc;
        ret = qcow2_get_refcount(s, off >> s->cluster_bits, &rc);
        if (ret < 0) {
            return ret;
        }
        if (rc > 0 && rc < s->refcount_max) {
            ret = qcow2_update_refcount(s, off, 1, 1);
            if (ret < 0) {
                return ret;
            }
            s->free_byte_offset = off + bytes;
            return (int64_t)off;
        }
    }
    fresh = qcow2_alloc_clusters(s, qcow2_align_up(bytes, cs) / cs);
    if (fresh < 0) {
        return fresh;
    }
    s->free_byte_offset = fresh + bytes;
    return fresh;
}

/* -- freeing ------------------------------------------------------------- */

void qcow2_free_deferred(Qcow2State *s, uint64_t offset, uint64_t clusters,
                         Qcow2DiscardType type)
{
    Qcow2DeferredFree f = { offset, clusters, type };

    if (!clusters) {
        return;
    }
    if (offset >> s->cluster_bits == s->free_byte_offset >> s->cluster_bits) {
        s->free_byte_offset = 0;
    }
    g_array_append_val(s->deferred, f);
    s->deferred_clusters += clusters;
}

/*
 * Lower the refcounts of clusters nothing on disk refers to any more (the
 * caller made sure of it: invariant 4, 8 or 9).  A cluster that becomes
 * free leaves the L2 cache unwritten and, if type says so, is discarded in
 * the file.
 */
int qcow2_free_clusters_now(Qcow2State *s, uint64_t offset, uint64_t clusters,
                            Qcow2DiscardType type)
{
    uint64_t cs = s->cluster_size;
    int ret;

    if (!clusters) {
        return 0;
    }
    if (offset >> s->cluster_bits <= s->free_byte_offset >> s->cluster_bits &&
        s->free_byte_offset >> s->cluster_bits <
        (offset >> s->cluster_bits) + clusters) {
        s->free_byte_offset = 0;
    }
    ret = qcow2_update_refcount(s, offset, clusters * cs, -1);
    if (ret < 0) {
        return ret;
    }
    for (uint64_t c = 0; c < clusters; c++) {
        uint64_t off = offset + c * cs, rc = 1;
        if (qcow2_get_refcount(s, off >> s->cluster_bits, &rc) < 0 || rc) {
            continue;
        }
        if (qcow2_is_meta_cluster(s, off)) {
            s->meta_stale = true;   /* the overlap check forgets it */
        }
        qcow2_cache_discard(&s->l2_cache, off);
        if (s->discard_passthrough[type]) {
            block_node_pdiscard(s->bs->file->node, off, cs);
        }
    }
    return 0;
}

/*
 * Invariant 4: the caller has written the L2 cache and issued a barrier,
 * so nothing on disk refers to these clusters any more.
 */
int qcow2_apply_deferred_frees(Qcow2State *s)
{
    int ret = 0;

    for (guint i = 0; i < s->deferred->len && ret == 0; i++) {
        Qcow2DeferredFree *f = &g_array_index(s->deferred, Qcow2DeferredFree,
                                              i);
        ret = qcow2_free_clusters_now(s, f->offset, f->clusters, f->type);
    }
    g_array_set_size(s->deferred, 0);
    s->deferred_clusters = 0;
    return ret;
}

/* -- rebuild ------------------------------------------------------------- */

/*
 * Replace every refcount with computed[] (nb_clusters entries), packed with
 * refcount order `order`: a new table and blocks past the image's end, then
 * one header write switches to them (invariant 10).  The old structures
 * become free space.
 */
static bool rebuild(Qcow2State *s, const uint64_t *computed,
                    uint64_t nb_clusters, uint32_t order, GError **errp)
{
    uint64_t cs = s->cluster_size;
    uint32_t rb_bits = s->cluster_bits + 3 - order;
    uint64_t rb_entries = 1ull << rb_bits;
    uint64_t max = order == 6 ? UINT64_MAX : (1ull << (1u << order)) - 1;
    uint64_t t = nb_clusters, entries = 1, tclusters = 1, nblocks = 1, total;
    g_autofree uint64_t *rc = NULL;
    g_autofree uint64_t *table = NULL;
    g_autofree uint8_t *block = NULL;
    uint8_t hdr[QCOW2_HDR_V3_CREATE_LEN];
    int ret;

    for (;;) {
        uint64_t e2, t2, n2;
        total = t + tclusters + nblocks;
        e2 = (total + rb_entries - 1) / rb_entries;
        t2 = qcow2_align_up(e2 * 8, cs) / cs;
        n2 = e2;
        if (e2 == entries && t2 == tclusters && n2 == nblocks) {
            break;
        }
        entries = e2;
        tclusters = t2;
        nblocks = n2;
    }
    entries = tclusters * cs / 8;
    if (tclusters * cs > QCOW2_MAX_REFTABLE_BYTES) {
        ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED,
                        "qcow2 '%s': the image is too large to rebuild its "
                        "refcounts", qcow2_fname(s));
        return false;
    }
    rc = g_try_new0(uint64_t, total);
    table = g_try_new0(uint64_t, entries);
    block = g_try_malloc(cs);
    if (!rc || !table || !block) {
        ferry_error_set(errp, FERRY_ERROR_FAILED, "qcow2 '%s': out of memory "
                        "rebuilding refcounts", qcow2_fname(s));
        return false;
    }
    memcpy(rc, computed, nb_clusters * 8);
    for (uint64_t c = t; c < total; c++) {
        rc[c] = 1;
    }
    for (uint64_t c = 0; c < total; c++) {
        if (rc[c] > max) {
            if (order != s->refcount_order) {
                ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED,
                                "Cannot decrease refcount entry width to %u "
                                "bits: cluster at offset 0x%" G_GINT64_MODIFIER
                                "x has a refcount of %" G_GUINT64_FORMAT,
                                1u << order, c * cs, rc[c]);
            } else {
                ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED,
                                "qcow2 '%s': cluster 0x%" G_GINT64_MODIFIER "x "
                                "has %" G_GUINT64_FORMAT " references, more "
                                "than refcount_bits=%u can count",
                                qcow2_fname(s), c * cs, rc[c], 1u << order);
            }
            return false;
        }
    }
    qcow2_cache_drop_all(&s->rb_cache);
    for (uint64_t b = 0; b < nblocks; b++) {
        uint64_t off = (t + tclusters + b) * cs;
        memset(block, 0, cs);
        for (uint64_t i = 0; i < rb_entries && b * rb_entries + i < total;
             i++) {
            qcow2_rc_set_entry(block, order, i, rc[b * rb_entries + i]);
        }
        ret = block_node_pwrite(s->bs->file->node, off, cs, block, 0);
        if (ret < 0) {
            goto io_fail;
        }
        table[b] = GUINT64_TO_BE(off);
    }
    ret = block_node_pwrite(s->bs->file->node, t * cs, tclusters * cs, table,
                            0);
    if (ret == 0) {
        ret = qcow2_barrier(s);
    }
    if (ret < 0) {
        goto io_fail;
    }
    if (order == s->refcount_order) {
        ferry_st_be64(hdr, t * cs);
        ferry_st_be32(hdr + 8, (uint32_t)tclusters);
        ret = qcow2_write_header_field(s, QCOW2_HDR_REFTABLE_OFF, hdr, 12);
    } else {
        /* Table and width in one write: bytes 48..99 of the header. */
        uint64_t old_off = s->reftable_offset;
        uint32_t old_clusters = s->reftable_clusters, old_order =
            s->refcount_order;
        g_autofree uint8_t *full = g_malloc(cs);
        s->reftable_offset = t * cs;
        s->reftable_clusters = (uint32_t)tclusters;
        s->refcount_order = order;
        qcow2_serialize_header(s, full, cs);
        s->reftable_offset = old_off;
        s->reftable_clusters = old_clusters;
        s->refcount_order = old_order;
        memcpy(hdr, full, sizeof(hdr));
        ret = qcow2_write_header_field(s, QCOW2_HDR_REFTABLE_OFF,
                                       hdr + QCOW2_HDR_REFTABLE_OFF,
                                       100 - QCOW2_HDR_REFTABLE_OFF);
    }
    if (ret == 0) {
        ret = qcow2_barrier(s);
    }
    if (ret < 0) {
        goto io_fail;
    }
    g_free(s->reftable);
    s->reftable = g_new0(uint64_t, entries);
    for (uint64_t i = 0; i < entries; i++) {
        s->reftable[i] = GUINT64_FROM_BE(table[i]);
    }
    s->reftable_offset = t * cs;
    s->reftable_clusters = (uint32_t)tclusters;
    s->reftable_size = entries;
    s->refcount_order = order;
    s->refcount_bits = 1u << order;
    s->refcount_max = max;
    s->rb_bits = rb_bits;
    s->free_cluster_index = 0;
    s->free_byte_offset = 0;
    s->file_end = MAX(s->file_end, total * cs);
    s->meta_stale = true;
    g_array_set_size(s->deferred, 0);
    s->deferred_clusters = 0;
    return true;

io_fail:
    ferry_error_setg_errno(errp, -ret, "qcow2 '%s': cannot write the rebuilt "
                           "refcounts", qcow2_fname(s));
    return false;
}

bool qcow2_rebuild_refcounts(Qcow2State *s, uint64_t *computed,
                             uint64_t nb_clusters, GError **errp)
{
    return rebuild(s, computed, nb_clusters, s->refcount_order, errp);
}

/*
 * amend refcount_bits: every refcount as it is now, without the old
 * refcount structures (they become free), rewritten at the new width.
 */
bool qcow2_change_refcount_order(Qcow2State *s, uint32_t order, GError **errp)
{
    uint64_t nb = qcow2_align_up(s->file_end, s->cluster_size)
                  >> s->cluster_bits;
    g_autofree uint64_t *rc = NULL;
    uint64_t first = s->reftable_offset >> s->cluster_bits;
    int ret = qcow2_flush_locked(s);

    if (ret < 0) {
        ferry_error_setg_errno(errp, -ret, "qcow2 '%s': cannot flush",
                               qcow2_fname(s));
        return false;
    }
    rc = g_try_new0(uint64_t, MAX(nb, 1));
    if (!rc) {
        ferry_error_set(errp, FERRY_ERROR_FAILED, "qcow2 '%s': out of memory "
                        "for the refcounts", qcow2_fname(s));
        return false;
    }
    for (uint64_t i = 0; i < nb; i++) {
        ret = qcow2_get_refcount(s, i, &rc[i]);
        if (ret < 0) {
            ferry_error_setg_errno(errp, -ret, "qcow2 '%s': cannot read the "
                                   "refcounts", qcow2_fname(s));
            return false;
        }
    }
    for (uint64_t i = first; i < first + s->reftable_clusters && i < nb; i++) {
        rc[i] = 0;
    }
    for (uint64_t i = 0; i < s->reftable_size; i++) {
        uint64_t ci = s->reftable[i] >> s->cluster_bits;
        if (s->reftable[i] && ci < nb) {
            rc[ci] = 0;
        }
    }
    return rebuild(s, rc, nb, order, errp);
}
