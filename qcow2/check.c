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
    uint64_t mult;          /* references each inc() adds (shared tables) */
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
        c->rc[i] += c->mult;
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

/*
 * The L2 tables an L1 table reaches, each counted once per reference.  A
 * table several L1 tables share (snapshots) is walked once and its data
 * counted `times` times, so a hostile image with thousands of snapshots of
 * one huge L1 costs one walk, not thousands.
 */
static void walk_l1(CheckCtx *c, uint64_t l1_off, uint64_t l1_size,
                    const uint64_t *l1_host, bool active, GHashTable *l2_refs,
                    uint64_t times)
{
    Qcow2State *s = c->s;
    uint64_t cs = s->cluster_size;
    g_autofree uint64_t *l1 = NULL;
    g_autofree uint8_t *l2 = NULL;

    c->mult = times;
    inc(c, l1_off, l1_size * 8, "L1 table");
    c->mult = 1;
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
        c->mult = times;
        inc(c, off, cs, "L2 table");
        c->mult = 1;
        if (!active) {
            gpointer n = g_hash_table_lookup(l2_refs, &off);
            g_hash_table_insert(l2_refs, g_memdup2(&off, sizeof(off)),
                                GSIZE_TO_POINTER(GPOINTER_TO_SIZE(n) + times));
            continue;
        }
        if (!l2) {
            l2 = g_malloc(cs);
        }
        if (read_table(s, off, cs, l2) < 0) {
            c->res->check_errors++;
            continue;
        }
        walk_l2(c, l2, true);
    }
}

/* Add the data references of an inactive L2 table `times` times. */
static void walk_l2_times(CheckCtx *c, uint64_t off, uint8_t *l2, size_t times)
{
    if (read_table(c->s, off, c->s->cluster_size, l2) < 0) {
        c->res->check_errors++;
        return;
    }
    c->mult = times;
    walk_l2(c, l2, false);
    c->mult = 1;
}

typedef struct L1Key {
    uint64_t offset;
    uint32_t size;
} L1Key;

static int l1key_cmp(const void *a, const void *b)
{
    const L1Key *x = a, *y = b;

    if (x->offset != y->offset) {
        return x->offset < y->offset ? -1 : 1;
    }
    return x->size < y->size ? -1 : x->size > y->size;
}

/*
 * Snapshots: each distinct L1 table is read once and each distinct L2
 * table walked once, with their references multiplied by how many
 * snapshots (or tables) share them.  A hostile table of 65536 snapshots of
 * one large L1 costs one walk.
 */
static void walk_snapshots(CheckCtx *c)
{
    Qcow2State *s = c->s;
    g_autoptr(GHashTable) l2_refs = g_hash_table_new_full(g_int64_hash,
                                                          g_int64_equal,
                                                          g_free, NULL);
    g_autofree L1Key *keys = g_new(L1Key, MAX(s->nb_snapshots, 1));
    g_autofree uint8_t *l2 = g_malloc(s->cluster_size);
    GHashTableIter it;
    gpointer key, val;

    for (uint32_t n = 0; n < s->nb_snapshots; n++) {
        keys[n].offset = s->snapshots[n].l1_offset;
        keys[n].size = s->snapshots[n].l1_size;
    }
    qsort(keys, s->nb_snapshots, sizeof(*keys), l1key_cmp);
    for (uint32_t n = 0; n < s->nb_snapshots;) {
        uint32_t m = n + 1;
        while (m < s->nb_snapshots && !l1key_cmp(&keys[n], &keys[m])) {
            m++;
        }
        walk_l1(c, keys[n].offset, keys[n].size, NULL, false, l2_refs, m - n);
        n = m;
    }
    g_hash_table_iter_init(&it, l2_refs);
    while (g_hash_table_iter_next(&it, &key, &val)) {
        walk_l2_times(c, *(uint64_t *)key, l2, GPOINTER_TO_SIZE(val));
    }
    inc(c, s->snapshots_offset, s->snapshots_size, "snapshot table");
}

static void walk_bitmaps(CheckCtx *c)
{
    Qcow2State *s = c->s;
    uint64_t cs = s->cluster_size;

    if (!s->has_bitmaps_ext || !s->bitmaps) {
        return;
    }
    inc(c, s->bitmap_dir_offset, s->bitmap_dir_size, "bitmap directory");
    for (guint n = 0; n < s->bitmaps->len; n++) {
        Qcow2Bitmap *b = s->bitmaps->pdata[n];
        g_autofree uint64_t *table = NULL;
        inc(c, b->table_offset, (uint64_t)b->table_size * 8, "bitmap table");
        table = g_try_new(uint64_t, MAX(b->table_size, 1));
        if (!table || read_table(s, b->table_offset,
                                 (uint64_t)b->table_size * 8, table) < 0) {
            c->res->check_errors++;
            continue;
        }
        for (uint64_t i = 0; i < b->table_size; i++) {
            uint64_t e = GUINT64_FROM_BE(table[i]);
            uint64_t off = e & QCOW2_BME_ENTRY_OFFSET_MASK;
            if ((e & QCOW2_BME_ENTRY_RESERVED) || (off & (cs - 1))) {
                c->res->corruptions++;
            } else if (off) {
                inc(c, off, cs, "bitmap data");
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

/*
 * Spec: v3 snapshot entries record at least the VM state size and the disk
 * size (16 bytes of extra data).  An entry without them is a corruption, as
 * qemu-img check says; repair writes the table again with them.
 */
static void check_snapshot_extras(Qcow2State *s, BlockCheckResult *res,
                                  bool fix)
{
    int64_t incomplete = 0;

    for (uint32_t i = 0; s->version >= 3 && i < s->nb_snapshots; i++) {
        if (s->snapshots[i].extra_size < 16) {
            ferry_debug("qcow2 check: snapshot table entry %u is incomplete",
                        i);
            incomplete++;
        }
    }
    res->corruptions += incomplete;
    if (fix && incomplete) {
        if (qcow2_rewrite_snapshot_table(s) == 0) {
            res->corruptions_fixed += incomplete;
        } else {
            res->check_errors++;
        }
    }
}

static bool run_check(Qcow2State *s, BlockCheckResult *res, uint32_t fix,
                      GError **errp)
{
    int64_t flen = block_node_getlength(s->bs->file->node);
    CheckCtx c = { .s = s, .res = res, .mult = 1 };
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
    walk_l1(&c, s->l1_offset, s->l1_size, s->l1, true, NULL, 1);
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
    check_snapshot_extras(s, res, fix & BLOCK_FIX_ERRORS);
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
