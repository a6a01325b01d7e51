/*
 * qcow2 amend: change an existing image's options in place, as qemu-img
 * amend does: compat (0.10 <-> 1.1), refcount_bits (rewrites the refcount
 * structures: internal.h, invariant 10), lazy_refcounts, the external data
 * file's name, and size.  Creation-only options and backing-file changes
 * are refused with QEMU's reasons.  Runs with the node drained.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/log.h"
#include "common/opts.h"
#include "qcow2/internal.h"

typedef struct AmendParams {
    uint32_t version;           /* 2 or 3 */
    uint32_t refcount_order;
    bool lazy;
    bool has_size;
    uint64_t size;
    bool has_data_file;
    const char *data_file;
} AmendParams;

static const char *const creation_only[] = {
    "cluster_size", "preallocation", "extended_l2", "compression_type",
    "encryption", "encrypt", NULL,
};

static bool key_is(const char *key, const char *const *list)
{
    for (; *list; list++) {
        if (!strcmp(key, *list) ||
            (g_str_has_prefix(key, *list) && key[strlen(*list)] == '.')) {
            return true;
        }
    }
    return false;
}

static bool parse_params(Qcow2State *s, json_t *opts, AmendParams *p,
                         GError **errp)
{
    static const char *const known[] = {
        "compat", "size", "backing_file", "backing_fmt", "lazy_refcounts",
        "refcount_bits", "data_file", "data_file_raw", NULL,
    };
    const char *compat = ferry_opt_str(opts, "compat");
    const char *key;
    json_t *val;
    uint64_t rbits;
    bool raw;

    json_object_foreach(opts, key, val) {
        if (key_is(key, creation_only)) {
            ferry_error_set(errp, FERRY_ERROR_INVALID, "Invalid parameter "
                            "'%s': this option is only supported for image "
                            "creation", key);
            return false;
        }
        if (!key_is(key, known)) {
            ferry_error_set(errp, FERRY_ERROR_INVALID, "Invalid parameter "
                            "'%s'", key);
            return false;
        }
    }
    p->version = s->version;
    if (compat && (!strcmp(compat, "0.10") || !strcmp(compat, "v2"))) {
        p->version = 2;
    } else if (compat && (!strcmp(compat, "1.1") || !strcmp(compat, "v3"))) {
        p->version = 3;
    } else if (compat) {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "Unknown compatibility "
                        "level %s", compat);
        return false;
    }
    if (!ferry_opt_uint(opts, "refcount_bits", s->refcount_bits, &rbits,
                        errp) ||
        !ferry_opt_bool(opts, "lazy_refcounts",
                        s->compat & QCOW2_COMPAT_LAZY_REFCOUNTS, &p->lazy,
                        errp) ||
        !ferry_opt_bool(opts, "data_file_raw", s->data_file_raw, &raw, errp)) {
        return false;
    }
    if (!rbits || rbits > 64 || (rbits & (rbits - 1))) {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "Refcount width must be a "
                        "power of two and may not exceed 64 bits");
        return false;
    }
    p->refcount_order = (uint32_t)__builtin_ctzll(rbits);
    p->has_size = json_object_get(opts, "size") != NULL;
    if (p->has_size && !ferry_opt_size(opts, "size", 0, &p->size, errp)) {
        return false;
    }
    if (json_object_get(opts, "backing_file") ||
        json_object_get(opts, "backing_fmt")) {
        if (g_strcmp0(ferry_opt_str(opts, "backing_file"), s->backing_name) ||
            g_strcmp0(ferry_opt_str(opts, "backing_fmt"), s->backing_fmt)) {
            ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED, "Cannot amend the "
                            "backing file (use 'ferry img rebase' instead)");
            return false;
        }
    }
    p->has_data_file = json_object_get(opts, "data_file") != NULL;
    p->data_file = ferry_opt_str(opts, "data_file");
    if (p->has_data_file && !(s->incompat & QCOW2_INCOMPAT_DATA_FILE)) {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "data-file can only be set "
                        "for images that use an external data file");
        return false;
    }
    if (raw != s->data_file_raw) {
        ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED, "data-file-raw cannot be "
                        "set on existing images");
        return false;
    }
    if (p->version < 3 && p->lazy) {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "Lazy refcounts only "
                        "supported with compatibility level 1.1 and above "
                        "(use compat=1.1 or greater)");
        return false;
    }
    if (p->version < 3 && p->refcount_order != 4) {
        if (json_object_get(opts, "refcount_bits")) {
            ferry_error_set(errp, FERRY_ERROR_INVALID, "Refcount widths other "
                            "than 16 bits require compatibility level 1.1 or "
                            "above (use compat=1.1 or greater)");
        } else {
            ferry_error_set(errp, FERRY_ERROR_INVALID, "compat=0.10 requires "
                            "refcount_bits=16");
        }
        return false;
    }
    return true;
}

/* Is there a compressed cluster anywhere (active or snapshot L1s)? */
static int any_compressed_in(Qcow2State *s, const uint64_t *l1, uint32_t n,
                             bool *found)
{
    for (uint32_t i = 0; i < n && !*found; i++) {
        uint64_t off = l1[i] & QCOW2_L1E_OFFSET_MASK;
        void *l2;
        int ret;
        if (!off) {
            continue;
        }
        l2 = qcow2_cache_get(&s->l2_cache, off, &ret);
        if (!l2) {
            return ret;
        }
        for (uint64_t j = 0; j < s->l2_entries && !*found; j++) {
            *found = qcow2_l2e_get(s, l2, j) & QCOW2_OFLAG_COMPRESSED;
        }
        qcow2_cache_put(&s->l2_cache, l2);
    }
    return 0;
}

/* Every L1 table of the image: the active one, then each snapshot's. */
typedef int (*L1Fn)(Qcow2State *s, const uint64_t *l1, uint32_t n,
                    void *opaque);

static int each_l1(Qcow2State *s, L1Fn fn, void *opaque)
{
    int ret = fn(s, s->l1, s->l1_size, opaque);

    for (uint32_t k = 0; ret == 0 && k < s->nb_snapshots; k++) {
        const Qcow2Snapshot *sn = &s->snapshots[k];
        g_autofree uint64_t *l1 = g_try_new(uint64_t, MAX(sn->l1_size, 1));
        if (!l1) {
            return -ENOMEM;
        }
        ret = sn->l1_size ? block_node_pread(s->bs->file->node, sn->l1_offset,
                                             (int64_t)sn->l1_size * 8, l1, 0)
                          : 0;
        for (uint32_t i = 0; i < sn->l1_size; i++) {
            l1[i] = GUINT64_FROM_BE(l1[i]);
        }
        if (ret == 0) {
            ret = fn(s, l1, sn->l1_size, opaque);
        }
    }
    return ret;
}

static int compressed_fn(Qcow2State *s, const uint64_t *l1, uint32_t n,
                         void *opaque)
{
    return any_compressed_in(s, l1, n, opaque);
}

typedef struct ExpandCtx {
    GHashTable *seen;           /* L2 offsets already expanded */
    bool backing;
} ExpandCtx;

/*
 * v2 has no zero flag: a zero cluster becomes unallocated (nothing below
 * it) or a cluster of zeroes.  Each L2 table is rewritten once; new
 * clusters get as many references as the table has.
 */
static int expand_l2(Qcow2State *s, uint64_t l2off, bool backing)
{
    uint64_t cs = s->cluster_size, l2rc, rc;
    bool dirty = false;
    void *l2;
    int ret;

    ret = qcow2_get_refcount(s, l2off >> s->cluster_bits, &l2rc);
    if (ret < 0) {
        return ret;
    }
    l2 = qcow2_cache_get(&s->l2_cache, l2off, &ret);
    if (!l2) {
        return ret;
    }
    for (uint64_t j = 0; j < s->l2_entries && ret == 0; j++) {
        uint64_t e = qcow2_l2e_get(s, l2, j);
        uint64_t host = e & QCOW2_L2E_OFFSET_MASK;
        int64_t fresh;

        if ((e & QCOW2_OFLAG_COMPRESSED) || !(e & QCOW2_OFLAG_ZERO)) {
            continue;
        }
        if (host && qcow2_get_refcount(s, host >> s->cluster_bits, &rc) == 0 &&
            rc == 1) {
            ret = block_node_pwrite_zeroes(s->bs->file->node, host, cs, 0);
            e &= ~QCOW2_OFLAG_ZERO;
        } else if (!backing) {
            if (host) {
                qcow2_free_deferred(s, host, 1, QCOW2_DISCARD_OTHER);
            }
            e = 0;
        } else {
            fresh = qcow2_alloc_clusters(s, 1);
            ret = fresh < 0 ? (int)fresh : 0;
            if (ret == 0 && l2rc > 1) {
                ret = qcow2_update_refcount(s, fresh, cs, (int64_t)l2rc - 1);
            }
            if (ret == 0) {
                ret = block_node_pwrite_zeroes(s->bs->file->node, fresh, cs, 0);
            }
            for (uint64_t k = 0; ret == 0 && host && k < l2rc; k++) {
                qcow2_free_deferred(s, host, 1, QCOW2_DISCARD_OTHER);
            }
            e = ret == 0 ? (uint64_t)fresh | (l2rc == 1 ? QCOW2_OFLAG_COPIED
                                                         : 0) : e;
        }
        if (ret == 0) {
            qcow2_l2e_set(s, l2, j, e, 0);
            dirty = true;
        }
    }
    if (dirty) {
        qcow2_cache_mark_dirty(&s->l2_cache, l2);
    }
    qcow2_cache_put(&s->l2_cache, l2);
    return ret;
}

static int expand_fn(Qcow2State *s, const uint64_t *l1, uint32_t n,
                     void *opaque)
{
    ExpandCtx *c = opaque;

    for (uint32_t i = 0; i < n; i++) {
        uint64_t off = l1[i] & QCOW2_L1E_OFFSET_MASK;
        int ret;
        if (!off || g_hash_table_contains(c->seen, &off)) {
            continue;
        }
        g_hash_table_add(c->seen, g_memdup2(&off, sizeof(off)));
        ret = expand_l2(s, off, c->backing);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

static bool downgrade_check(Qcow2State *s, const AmendParams *p, GError **errp)
{
    uint64_t other = s->incompat & ~(QCOW2_INCOMPAT_DIRTY |
                                     QCOW2_INCOMPAT_COMPRESSION);
    bool compressed = false;
    int ret;

    if (other) {
        ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED, "Cannot downgrade an "
                        "image with incompatible features 0x%" G_GINT64_MODIFIER
                        "x set", other);
        return false;
    }
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        if (s->snapshots[i].vm_state_size > UINT32_MAX ||
            s->snapshots[i].disk_size != (p->has_size ? p->size : s->size)) {
            ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED, "Internal snapshots "
                            "prevent downgrade of image");
            return false;
        }
    }
    if (s->has_bitmaps_ext) {
        /* QEMU leaves them behind, leaked and unreadable: refuse instead. */
        ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED, "Cannot downgrade an "
                        "image with persistent bitmaps (compat=0.10 cannot "
                        "hold them; remove them with 'ferry img bitmap "
                        "--remove' first)");
        return false;
    }
    if (s->compression_type != QCOW2_COMPRESS_ZLIB) {
        ret = each_l1(s, compressed_fn, &compressed);
        if (ret < 0) {
            ferry_error_setg_errno(errp, -ret, "qcow2 '%s': cannot look for "
                                   "compressed clusters", qcow2_fname(s));
            return false;
        }
        if (compressed) {
            ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED, "Cannot downgrade an "
                            "image with zstd compression type and existing "
                            "compressed clusters");
            return false;
        }
    }
    return true;
}

static int mark_clean(Qcow2State *s)
{
    uint8_t b[8];
    uint64_t v;
    int ret = qcow2_flush_locked(s);

    if (ret < 0 || !(s->incompat & QCOW2_INCOMPAT_DIRTY)) {
        return ret;
    }
    ret = qcow2_barrier(s);
    if (ret < 0) {
        return ret;
    }
    s->incompat &= ~QCOW2_INCOMPAT_DIRTY;
    v = GUINT64_TO_BE(s->incompat);
    memcpy(b, &v, 8);
    ret = qcow2_write_header_field(s, QCOW2_HDR_INCOMPAT_OFF, b, 8);
    return ret ? ret : qcow2_barrier(s);
}

static bool downgrade(Qcow2State *s, GError **errp)
{
    ExpandCtx c = { g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free,
                                          NULL),
                    s->backing_name != NULL };
    int ret = mark_clean(s);

    if (ret == 0) {
        ret = each_l1(s, expand_fn, &c);
    }
    g_hash_table_destroy(c.seen);
    if (ret == 0) {
        /* Invariant 1: the zeroes are on disk before the L2 entries. */
        ret = qcow2_barrier(s);
    }
    if (ret == 0) {
        ret = qcow2_flush_locked(s);
    }
    if (ret < 0) {
        ferry_error_setg_errno(errp, -ret, "qcow2 '%s': cannot expand the zero "
                               "clusters", qcow2_fname(s));
        return false;
    }
    s->version = 2;
    s->compat = 0;
    s->autoclear = 0;
    s->incompat = 0;
    s->compression_type = QCOW2_COMPRESS_ZLIB;
    s->header_length = QCOW2_HDR_V2_LEN;
    s->lazy_refcounts = false;
    return qcow2_update_header(s, errp);
}

static bool upgrade(Qcow2State *s, GError **errp)
{
    bool short_extra = false;
    int ret;

    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        short_extra = short_extra || s->snapshots[i].extra_size < 16;
    }
    if (short_extra) {
        /* Spec: v3 snapshot entries record at least the disk size. */
        ret = qcow2_rewrite_snapshot_table(s);
        if (ret < 0) {
            ferry_error_setg_errno(errp, -ret, "qcow2 '%s': cannot rewrite the "
                                   "snapshot table", qcow2_fname(s));
            return false;
        }
    }
    s->version = 3;
    s->header_length = QCOW2_HDR_V3_CREATE_LEN;
    s->compression_type = QCOW2_COMPRESS_ZLIB;
    return qcow2_update_header(s, errp);
}

static bool set_lazy(Qcow2State *s, bool on, GError **errp)
{
    int ret;

    if (!on) {
        ret = mark_clean(s);
        if (ret < 0) {
            ferry_error_setg_errno(errp, -ret, "qcow2 '%s': cannot make the "
                                   "image clean", qcow2_fname(s));
            return false;
        }
        s->compat &= ~QCOW2_COMPAT_LAZY_REFCOUNTS;
    } else {
        s->compat |= QCOW2_COMPAT_LAZY_REFCOUNTS;
    }
    if (!qcow2_update_header(s, errp)) {
        s->compat ^= QCOW2_COMPAT_LAZY_REFCOUNTS;
        return false;
    }
    s->lazy_refcounts = on;
    return true;
}

static bool amend_locked(Qcow2State *s, const AmendParams *p, GError **errp)
{
    if (p->version < s->version && !downgrade_check(s, p, errp)) {
        return false;
    }
    if (qcow2_flush_locked(s) < 0 || qcow2_bitmaps_before_write_locked(s) < 0) {
        ferry_error_set(errp, FERRY_ERROR_IO, "qcow2 '%s': cannot flush",
                        qcow2_fname(s));
        return false;
    }
    if (p->version > s->version && !upgrade(s, errp)) {
        return false;
    }
    if (p->refcount_order != s->refcount_order &&
        !qcow2_change_refcount_order(s, p->refcount_order, errp)) {
        return false;
    }
    if (p->has_data_file) {
        g_free(s->data_file_name);
        s->data_file_name = p->data_file && *p->data_file
                            ? g_strdup(p->data_file) : NULL;
        if (!qcow2_update_header(s, errp)) {
            return false;
        }
    }
    if (p->lazy != !!(s->compat & QCOW2_COMPAT_LAZY_REFCOUNTS) &&
        !set_lazy(s, p->lazy, errp)) {
        return false;
    }
    return true;
}

bool qcow2_amend(BlockNode *bs, json_t *opts, bool force, GError **errp)
{
    Qcow2State *s = bs->opaque;
    AmendParams p = { 0 };
    bool ok;

    g_mutex_lock(&s->lock);
    if (s->incompat & QCOW2_INCOMPAT_CORRUPT) {
        g_mutex_unlock(&s->lock);
        ferry_error_set(errp, FERRY_ERROR_CORRUPT, "qcow2 '%s': the image is "
                        "marked corrupt", qcow2_fname(s));
        return false;
    }
    ok = parse_params(s, opts, &p, errp) && amend_locked(s, &p, errp);
    g_mutex_unlock(&s->lock);
    if (ok && p.has_size && p.size != (uint64_t)block_node_getlength(bs)) {
        ok = block_node_truncate(bs, (int64_t)p.size, true, BLOCK_PREALLOC_OFF,
                                 errp);
    }
    if (ok && p.version < s->version) {
        g_mutex_lock(&s->lock);
        ok = downgrade_check(s, &p, errp) && downgrade(s, errp);
        g_mutex_unlock(&s->lock);
    }
    return ok;
}
