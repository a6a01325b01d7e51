/*
 * qcow2 check and repair: count every reference to every host cluster
 * (header, L1/L2 tables of the active state and of each snapshot, data,
 * refcount structures, bitmaps), compare with the stored refcounts, check
 * COPIED flags and alignment, and repair by rebuilding the refcounts.
 * Counts follow qemu-img check's names (BlockCheckResult).
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/log.h"
#include "qcow2/internal.h"

typedef struct CheckCtx {
    Qcow2State *s;
    BlockCheckResult *res;
    uint64_t *rc;           /* computed refcounts, one per host cluster */
    uint64_t nb;            /* clusters in the file */
    bool structural;        /* refcount structures themselves are broken */
} CheckCtx;

static void inc(CheckCtx *c, uint64_t off, uint64_t len, const char *what)
{
    Qcow2State *s = c->s;
    uint64_t first, last;

    if (!len) {
        return;
    }
    first = off >> s->cluster_bits;
    last = (off + len - 1) >> s->cluster_bits;
    for (uint64_t i = first; i <= last; i++) {
        if (i >= c->nb) {
            ferry_debug("qcow2 check: %s at 0x%" G_GINT64_MODIFIER "x is past "
                        "the end of the file", what, off);
            c->res->corruptions++;
            return;
        }
        c->rc[i]++;
    }
}

static int read_table(Qcow2State *s, uint64_t off, uint64_t len, void *buf)
{
    return block_node_pread(s->bs->file->node, off, len, buf, 0);
}

/* Walk one L2 table: data clusters, and (active) fragmentation counts. */
static void walk_l2(CheckCtx *c, const uint8_t *l2, bool active)
{
    Qcow2State *s = c->s;
    uint64_t cs = s->cluster_size;
    uint64_t contig = 0, *next_contig = &contig;   /* per table, as qemu-img */

    for (uint64_t i = 0; i < s->l2_entries; i++) {
        uint64_t e = qcow2_l2e_get(s, l2, i);
        uint64_t bm = qcow2_l2e_bitmap(s, l2, i);
        Qcow2ClusterType t = qcow2_l2e_type(s, e, bm, 0);
        bool has_host = (e & QCOW2_L2E_OFFSET_MASK) ||
                        (s->has_data_file && (e & QCOW2_OFLAG_COPIED));

        if (e & QCOW2_OFLAG_COMPRESSED) {
            uint64_t off, len;
            if (s->has_data_file) {
                c->res->corruptions++;
                continue;
            }
            qcow2_compressed_location(s, e, &off, &len);
            inc(c, off, len, "compressed cluster");
            if (active) {
                c->res->allocated_clusters++;
                c->res->compressed_clusters++;
                c->res->fragmented_clusters++;
            }
            continue;
        }
        if (!has_host || (t != QCOW2_CL_NORMAL && t != QCOW2_CL_ZERO_ALLOC &&
                          !s->extended_l2)) {
            continue;
        }
        if (e & (cs - 1) & QCOW2_L2E_OFFSET_MASK) {
            ferry_debug("qcow2 check: L2 entry 0x%" G_GINT64_MODIFIER "x is not "
                        "cluster aligned", e);
            c->res->corruptions++;
            continue;
        }
        if (!s->has_data_file) {
            inc(c, e & QCOW2_L2E_OFFSET_MASK, cs, "data cluster");
        }
        if (active) {
            uint64_t off = e & QCOW2_L2E_OFFSET_MASK;
            c->res->allocated_clusters++;
            if (*next_contig && off != *next_contig) {
                c->res->fragmented_clusters++;
            }
            *next_contig = off + cs;
        }
    }
}

static void walk_l1(CheckCtx *c, uint64_t l1_off, uint64_t l1_size,
                    const uint64_t *l1_host, bool active)
{
    Qcow2State *s = c->s;
    uint64_t cs = s->cluster_size;
    g_autofree uint64_t *l1 = NULL;
    g_autofree uint8_t *l2 = g_malloc(cs);

    inc(c, l1_off, l1_size * 8, "L1 table");
    if (!l1_host) {
        l1 = g_try_new0(uint64_t, MAX(l1_size, 1));
        if (!l1 || read_table(s, l1_off, l1_size * 8, l1) < 0) {
            c->res->check_errors++;
            return;
        }
        for (uint64_t i = 0; i < l1_size; i++) {
            l1[i] = GUINT64_FROM_BE(l1[i]);
        }
        l1_host = l1;
    }
    for (uint64_t i = 0; i < l1_size; i++) {
        uint64_t off = l1_host[i] & QCOW2_L1E_OFFSET_MASK;
        if (!off) {
            continue;
        }
        if (off & (cs - 1) || (off >> s->cluster_bits) >= c->nb) {
            ferry_debug("qcow2 check: L2 table offset 0x%" G_GINT64_MODIFIER
                        "x is invalid", off);
            c->res->corruptions++;
            continue;
        }
        inc(c, off, cs, "L2 table");
        if (read_table(s, off, cs, l2) < 0) {
            c->res->check_errors++;
            continue;
        }
        walk_l2(c, l2, active);
    }
}

static void walk_snapshots(CheckCtx *c)
{
    Qcow2State *s = c->s;
    uint64_t pos = s->snapshots_offset, total = 0;
    uint8_t h[40];

    for (uint32_t n = 0; n < s->nb_snapshots; n++) {
        uint64_t l1_off, l1_size, extra, id_len, name_len, len;
        if (read_table(s, pos, sizeof(h), h) < 0) {
            c->res->check_errors++;
            return;
        }
        l1_off = GUINT64_FROM_BE(*(uint64_t *)h);
        l1_size = GUINT32_FROM_BE(*(uint32_t *)(h + 8));
        id_len = GUINT16_FROM_BE(*(uint16_t *)(h + 12));
        name_len = GUINT16_FROM_BE(*(uint16_t *)(h + 14));
        extra = GUINT32_FROM_BE(*(uint32_t *)(h + 36));
        len = qcow2_align_up(40 + extra + id_len + name_len, 8);
        if (l1_size * 8 > QCOW2_MAX_L1_BYTES || (l1_off & (s->cluster_size - 1))) {
            c->res->corruptions++;
        } else {
            walk_l1(c, l1_off, l1_size, NULL, false);
        }
        pos += len;
        total += len;
    }
    inc(c, s->snapshots_offset, total, "snapshot table");
}

static void walk_bitmaps(CheckCtx *c)
{
    Qcow2State *s = c->s;
    g_autofree uint8_t *dir = NULL;
    uint64_t pos = 0;

    if (!s->nb_bitmaps || !(s->autoclear & QCOW2_AUTOCLEAR_BITMAPS) ||
        s->bitmap_ext_dir_size > (64u << 20)) {
        return;
    }
    inc(c, s->bitmap_ext_dir_offset, s->bitmap_ext_dir_size, "bitmap directory");
    dir = g_try_malloc(s->bitmap_ext_dir_size);
    if (!dir || read_table(s, s->bitmap_ext_dir_offset, s->bitmap_ext_dir_size,
                           dir) < 0) {
        c->res->check_errors++;
        return;
    }
    for (uint32_t n = 0; n < s->nb_bitmaps; n++) {
        uint64_t toff, tsize, name_len, extra;
        g_autofree uint64_t *table = NULL;
        if (s->bitmap_ext_dir_size - pos < 24) {
            c->res->corruptions++;
            return;
        }
        toff = GUINT64_FROM_BE(*(uint64_t *)(dir + pos));
        tsize = GUINT32_FROM_BE(*(uint32_t *)(dir + pos + 8));
        name_len = GUINT16_FROM_BE(*(uint16_t *)(dir + pos + 18));
        extra = GUINT32_FROM_BE(*(uint32_t *)(dir + pos + 20));
        pos += qcow2_align_up(24 + extra + name_len, 8);
        inc(c, toff, tsize * 8, "bitmap table");
        table = g_try_new(uint64_t, MAX(tsize, 1));
        if (!table || read_table(s, toff, tsize * 8, table) < 0) {
            c->res->check_errors++;
            continue;
        }
        for (uint64_t i = 0; i < tsize; i++) {
            uint64_t off = GUINT64_FROM_BE(table[i]) & 0x00fffffffffffe00ull;
            if (off) {
                inc(c, off, s->cluster_size, "bitmap data");
            }
        }
    }
}

static void walk_refcounts(CheckCtx *c)
{
    Qcow2State *s = c->s;

    inc(c, s->reftable_offset, (uint64_t)s->reftable_clusters * s->cluster_size,
        "refcount table");
    for (uint64_t i = 0; i < s->reftable_size; i++) {
        uint64_t off = s->reftable[i];
        if (!off) {
            continue;
        }
        if ((off & (s->cluster_size - 1)) || (off >> s->cluster_bits) >= c->nb) {
            ferry_debug("qcow2 check: refcount block %" G_GUINT64_FORMAT " at "
                        "0x%" G_GINT64_MODIFIER "x is invalid", i, off);
            c->res->corruptions++;
            c->structural = true;
            continue;
        }
        inc(c, off, s->cluster_size, "refcount block");
    }
}

/* The rebuilt refcounts replace the old structures: stop counting them. */
static void uncount_refcounts(CheckCtx *c)
{
    Qcow2State *s = c->s;
    uint64_t first = s->reftable_offset >> s->cluster_bits;

    for (uint64_t i = first; i < first + s->reftable_clusters && i < c->nb; i++) {
        c->rc[i]--;
    }
    for (uint64_t i = 0; i < s->reftable_size; i++) {
        uint64_t ci = s->reftable[i] >> s->cluster_bits;
        if (s->reftable[i] && !(s->reftable[i] & (s->cluster_size - 1)) &&
            ci < c->nb) {
            c->rc[ci]--;
        }
    }
}

/* COPIED must be set exactly when the refcount is 1 (active state only). */
static int check_copied(CheckCtx *c, bool fix)
{
    Qcow2State *s = c->s;
    uint64_t cs = s->cluster_size;
    int64_t errors = 0;

    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t l2off = s->l1[i] & QCOW2_L1E_OFFSET_MASK;
        uint64_t rc;
        void *l2;
        int ret;
        bool dirty = false;

        if (!l2off || (l2off & (cs - 1)) || (l2off >> s->cluster_bits) >= c->nb) {
            continue;
        }
        if (qcow2_get_refcount(s, l2off >> s->cluster_bits, &rc) < 0) {
            c->res->check_errors++;
            continue;
        }
        if ((rc == 1) != !!(s->l1[i] & QCOW2_OFLAG_COPIED)) {
            errors++;
            if (fix) {
                uint64_t be;
                s->l1[i] = rc == 1 ? s->l1[i] | QCOW2_OFLAG_COPIED
                                   : s->l1[i] & ~QCOW2_OFLAG_COPIED;
                be = GUINT64_TO_BE(s->l1[i]);
                if (block_node_pwrite(s->bs->file->node, s->l1_offset + i * 8,
                                      8, &be, 0) == 0) {
                    c->res->corruptions_fixed++;
                }
            }
        }
        l2 = qcow2_cache_get(&s->l2_cache, l2off, &ret);
        if (!l2) {
            c->res->check_errors++;
            continue;
        }
        for (uint64_t j = 0; j < s->l2_entries; j++) {
            uint64_t e = qcow2_l2e_get(s, l2, j);
            uint64_t off = e & QCOW2_L2E_OFFSET_MASK;
            bool want;
            if ((e & QCOW2_OFLAG_COMPRESSED) || (!off && !s->has_data_file) ||
                (s->has_data_file && !(e & QCOW2_OFLAG_COPIED) && !off)) {
                continue;
            }
            if (s->has_data_file) {
                want = true;
            } else {
                if ((off & (cs - 1)) || (off >> s->cluster_bits) >= c->nb) {
                    continue;
                }
                if (qcow2_get_refcount(s, off >> s->cluster_bits, &rc) < 0) {
                    c->res->check_errors++;
                    continue;
                }
                want = rc == 1;
            }
            if (want != !!(e & QCOW2_OFLAG_COPIED)) {
                errors++;
                if (fix) {
                    e = want ? e | QCOW2_OFLAG_COPIED : e & ~QCOW2_OFLAG_COPIED;
                    qcow2_l2e_set(s, l2, j, e, qcow2_l2e_bitmap(s, l2, j));
                    dirty = true;
                    c->res->corruptions_fixed++;
                }
            }
        }
        if (dirty) {
            qcow2_cache_mark_dirty(&s->l2_cache, l2);
        }
        qcow2_cache_put(&s->l2_cache, l2);
    }
    c->res->corruptions += errors;
    return 0;
}

static bool run_check(Qcow2State *s, BlockCheckResult *res, uint32_t fix,
                      GError **errp)
{
    int64_t flen = block_node_getlength(s->bs->file->node);
    CheckCtx c = { .s = s, .res = res };
    uint64_t highest = 0;
    int64_t refcount_errors = 0, leaks = 0;

    if (flen < 0) {
        ferry_error_setg_errno(errp, (int)-flen, "qcow2: cannot get the file "
                               "size");
        return false;
    }
    c.nb = (MAX((uint64_t)flen, s->file_end) + s->cluster_size - 1) >>
           s->cluster_bits;
    c.rc = g_try_new0(uint64_t, MAX(c.nb, 1));
    if (!c.rc) {
        ferry_error_set(errp, FERRY_ERROR_FAILED, "qcow2: out of memory for "
                        "check");
        return false;
    }
    memset(res, 0, sizeof(*res));
    res->has_clusters = true;
    res->total_clusters = (s->size + s->cluster_size - 1) >> s->cluster_bits;
    inc(&c, 0, s->cluster_size, "header");
    walk_l1(&c, s->l1_offset, s->l1_size, s->l1, true);
    walk_snapshots(&c);
    walk_refcounts(&c);
    walk_bitmaps(&c);

    for (uint64_t i = 0; i < c.nb; i++) {
        uint64_t stored;
        if (c.rc[i]) {
            highest = i;
        }
        if (qcow2_get_refcount(s, i, &stored) < 0) {
            res->check_errors++;
            continue;
        }
        if (stored) {
            highest = MAX(highest, i);   /* QEMU counts leaked clusters too */
        }
        if (stored < c.rc[i]) {
            ferry_debug("qcow2 check: cluster %" G_GUINT64_FORMAT " refcount=%"
                        G_GUINT64_FORMAT " reference=%" G_GUINT64_FORMAT, i,
                        stored, c.rc[i]);
            refcount_errors++;
        } else if (stored > c.rc[i]) {
            leaks++;
        }
    }
    /* Refcounts for clusters past the end of the file are leaks too. */
    for (uint64_t b = 0; b < s->reftable_size; b++) {
        uint64_t first = b << s->rb_bits;
        if (!s->reftable[b] || first + (1ull << s->rb_bits) <= c.nb ||
            (s->reftable[b] >> s->cluster_bits) >= c.nb) {
            continue;
        }
        for (uint64_t i = MAX(first, c.nb); i < first + (1ull << s->rb_bits);
             i++) {
            uint64_t stored;
            if (qcow2_get_refcount(s, i, &stored) == 0 && stored) {
                leaks++;
            }
        }
    }
    res->corruptions += refcount_errors;
    res->leaks = leaks;
    res->image_end_offset = (int64_t)((highest + 1) << s->cluster_bits);

    if (((fix & BLOCK_FIX_ERRORS) && res->corruptions) ||
        ((fix & BLOCK_FIX_LEAKS) && leaks)) {
        uncount_refcounts(&c);
        if (!qcow2_rebuild_refcounts(s, c.rc, c.nb, errp)) {
            g_free(c.rc);
            return false;
        }
        res->corruptions_fixed = refcount_errors;
        res->leaks_fixed = leaks;
    }
    g_free(c.rc);
    check_copied(&c, fix & BLOCK_FIX_ERRORS);
    if (fix && qcow2_flush_locked(s) < 0) {
        res->check_errors++;
    }
    return true;
}

bool qcow2_check_locked(Qcow2State *s, BlockCheckResult *res, uint32_t fix,
                        GError **errp)
{
    BlockCheckResult first = { 0 };

    if (fix && !s->writable) {
        ferry_error_set(errp, FERRY_ERROR_PERMISSION, "qcow2: repair needs the "
                        "image opened read-write");
        return false;
    }
    if (s->writable && qcow2_flush_locked(s) < 0) {
        ferry_error_set(errp, FERRY_ERROR_IO, "qcow2: cannot flush before "
                        "checking");
        return false;
    }
    if (!run_check(s, &first, fix, errp)) {
        return false;
    }
    if (!fix || (!first.corruptions_fixed && !first.leaks_fixed)) {
        *res = first;
        return true;
    }
    /* Report what is left after the repair, and what was fixed. */
    if (!run_check(s, res, 0, errp)) {
        return false;
    }
    res->corruptions_fixed = first.corruptions_fixed;
    res->leaks_fixed = first.leaks_fixed;
    return true;
}

bool qcow2_check(BlockNode *bs, BlockCheckResult *res, uint32_t fix,
                 GError **errp)
{
    Qcow2State *s = bs->opaque;
    bool ok;

    g_mutex_lock(&s->lock);
    ok = qcow2_check_locked(s, res, fix, errp);
    g_mutex_unlock(&s->lock);
    return ok;
}
