/*
 * qcow2 measure (qemu-img measure -O qcow2) and make_empty (qemu-img
 * commit empties the overlay).  measure answers with QEMU's arithmetic so
 * the figures match qemu-img's: a fully allocated image is one header
 * cluster, L2 tables for every cluster, the L1 table, the refcount
 * structures that count all of these (found as a fixed point), and the
 * data; "required" counts only the data clusters the source has.
 */
#include "config.h"

#include <string.h>

#include "blockdev/bitmap.h"
#include "common/error.h"
#include "common/opts.h"
#include "qcow2/internal.h"

extern const BlockDriver qcow2_driver;

typedef struct MeasureParams {
    uint64_t cluster_size;      /* bytes */
    uint32_t version;           /* 2 or 3 */
    uint32_t refcount_order;
    bool extended_l2;
    BlockPrealloc prealloc;
    bool has_backing;
} MeasureParams;

static bool parse_params(json_t *opts, MeasureParams *p, GError **errp)
{
    const char *compat = ferry_opt_str(opts, "compat");
    const char *pre = ferry_opt_str(opts, "preallocation");
    uint64_t rbits;

    memset(p, 0, sizeof(*p));
    if (!ferry_opt_bool(opts, "extended_l2", false, &p->extended_l2, errp) ||
        !ferry_opt_size(opts, "cluster_size", 65536, &p->cluster_size, errp) ||
        !ferry_opt_uint(opts, "refcount_bits", 16, &rbits, errp)) {
        return false;
    }
    if (p->cluster_size < 512 || p->cluster_size > (2u << 20) ||
        (p->cluster_size & (p->cluster_size - 1))) {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "Cluster size must be a "
                        "power of two between 512 and 2048k");
        return false;
    }
    if (p->extended_l2 && p->cluster_size < 16384) {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "Extended L2 entries are "
                        "only supported with cluster sizes of at least 16384 "
                        "bytes");
        return false;
    }
    if (!compat || !strcmp(compat, "1.1") || !strcmp(compat, "v3")) {
        p->version = 3;
    } else if (!strcmp(compat, "0.10") || !strcmp(compat, "v2")) {
        p->version = 2;
    } else {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "Invalid compatibility level: '%s'", compat);
        return false;
    }
    if (!rbits || rbits > 64 || (rbits & (rbits - 1))) {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "Refcount width must be a "
                        "power of two and may be at most 64 bits");
        return false;
    }
    if (p->version < 3 && rbits != 16) {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "Different refcount widths "
                        "than 16 bits require compatibility level 1.1 or "
                        "above (use compat=1.1 or greater)");
        return false;
    }
    p->refcount_order = (uint32_t)__builtin_ctzll(rbits);
    if (pre && !block_parse_prealloc(pre, &p->prealloc, errp)) {
        return false;
    }
    p->has_backing = ferry_opt_str(opts, "backing_file") != NULL;
    if (ferry_opt_str(opts, "encrypt.format") ||
        json_is_object(json_object_get(opts, "encrypt"))) {
        ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED,
                        "encrypted qcow2 images are not supported yet");
        return false;
    }
    return true;
}

static uint64_t div_round_up(uint64_t n, uint64_t d)
{
    return (n + d - 1) / d;
}

/*
 * Bytes of refcount table and blocks that count `clusters` clusters plus
 * themselves: iterate until adding them needs no further block or table
 * cluster.
 */
static uint64_t refcount_metadata_bytes(uint64_t clusters, uint64_t cs,
                                        uint32_t refcount_order)
{
    uint64_t per_table_cluster = cs / 8;
    uint64_t per_block = cs * 8 >> refcount_order;
    uint64_t table = 0, blocks = 0, n = 0, last;

    do {
        last = n;
        blocks = div_round_up(clusters + table + blocks, per_block);
        table = div_round_up(blocks, per_table_cluster);
        n = clusters + blocks + table;
    } while (n != last);
    return (blocks + table) * cs;
}

/* A fully allocated image of virtual_size (cluster aligned) bytes. */
static uint64_t fully_allocated_bytes(uint64_t virtual_size,
                                      const MeasureParams *p)
{
    uint64_t cs = p->cluster_size;
    uint64_t l2e = p->extended_l2 ? 16 : 8;
    uint64_t meta = cs;                                /* header */
    uint64_t nl2e = virtual_size / cs;
    uint64_t nl1e;

    nl2e = div_round_up(nl2e, cs / l2e) * (cs / l2e);
    meta += nl2e * l2e;                                /* L2 tables */
    nl1e = nl2e * l2e / cs;
    nl1e = div_round_up(nl1e, cs / 8) * (cs / 8);
    meta += nl1e * 8;                                  /* L1 table */
    meta += refcount_metadata_bytes((meta + virtual_size) / cs, cs,
                                    p->refcount_order);
    return meta + virtual_size;
}

/* Data bytes (whole clusters) the source has allocated and not zero. */
static bool source_data_bytes(BlockNode *in, uint64_t cs, uint64_t *out,
                              GError **errp)
{
    int64_t len = block_node_getlength(in);
    int64_t offset, pnum = 0;
    uint64_t required = 0;

    if (len < 0) {
        ferry_error_setg_errno(errp, (int)-len, "Unable to get image size");
        return false;
    }
    for (offset = 0; offset < len; offset += pnum) {
        int ret = block_node_block_status_above(in, NULL, offset, len - offset,
                                                &pnum, NULL, NULL, NULL);
        if (ret < 0 || pnum <= 0) {
            ferry_error_setg_errno(errp, ret < 0 ? -ret : EIO,
                                   "Unable to get block status");
            return false;
        }
        if (ret & BLOCK_STATUS_ZERO) {
            continue;
        }
        if ((ret & (BLOCK_STATUS_DATA | BLOCK_STATUS_ALLOCATED)) ==
            (BLOCK_STATUS_DATA | BLOCK_STATUS_ALLOCATED)) {
            /* count up to the end of the cluster; skip ahead to it */
            pnum = (int64_t)(div_round_up(offset + pnum, cs) * cs) - offset;
            required += offset % cs + pnum;
        }
    }
    *out = required;
    return true;
}

/*
 * Room the source's persistent bitmaps take in a qcow2 image: their data
 * clusters, their tables, and the directory entries.
 */
static uint64_t bitmaps_bytes(BlockNode *in, uint64_t cs)
{
    uint64_t total = 0, dir = 0;

    g_mutex_lock(&in->bitmaps_lock);
    for (GList *l = in->bitmaps; l; l = l->next) {
        BlockDirtyBitmap *bm = l->data;
        uint64_t bytes, clusters;
        if (!bm->persistent) {
            continue;
        }
        bytes = div_round_up(div_round_up(bm->size, bm->granularity), 8);
        clusters = div_round_up(bytes, cs);
        total += clusters * cs;
        total += div_round_up(clusters * 8, cs) * cs;
        dir += (24 + strlen(bm->name) + 7) & ~UINT64_C(7);
    }
    g_mutex_unlock(&in->bitmaps_lock);
    return total + div_round_up(dir, cs) * cs;
}

bool qcow2_measure(json_t *opts, BlockNode *in, uint64_t size,
                   BlockMeasureInfo *out, GError **errp)
{
    MeasureParams p;
    uint64_t virtual_size, l2_tables, required = 0;
    BlockNode *src = in ? block_node_skip_filters(in) : NULL;

    if (!parse_params(opts, &p, errp)) {
        return false;
    }
    if (!in && !ferry_opt_size(opts, "size", 0, &size, errp)) {
        return false;
    }
    virtual_size = div_round_up(size, p.cluster_size) * p.cluster_size;
    l2_tables = div_round_up(virtual_size / p.cluster_size,
                             p.cluster_size / (p.extended_l2 ? 16 : 8));
    if (l2_tables * 8 > QCOW2_MAX_L1_BYTES) {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "The image size is too "
                        "large (try using a larger cluster size)");
        return false;
    }
    if (in) {
        if (p.has_backing) {
            /* the new backing file may share nothing with the source */
            required = virtual_size;
        } else if (!source_data_bytes(in, p.cluster_size, &required, errp)) {
            return false;
        }
    }
    if (p.prealloc == BLOCK_PREALLOC_FULL ||
        p.prealloc == BLOCK_PREALLOC_FALLOC) {
        required = virtual_size;
    }
    memset(out, 0, sizeof(*out));
    out->fully_allocated = fully_allocated_bytes(virtual_size, &p);
    out->required = out->fully_allocated - virtual_size + required;
    /* As QEMU: a v3 target from a source that can hold bitmaps says so. */
    out->has_bitmaps = p.version >= 3 && src &&
                       (src->drv == &qcow2_driver ||
                        (src->drv->caps & BLOCK_CAP_BITMAPS));
    if (out->has_bitmaps) {
        if (src->drv == &qcow2_driver && !src->bitmaps &&
            ((Qcow2State *)src->opaque)->nb_bitmaps &&
            (((Qcow2State *)src->opaque)->autoclear &
             QCOW2_AUTOCLEAR_BITMAPS)) {
            /* "bitmaps size: 0" would be a wrong figure */
            ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED,
                            "'%s' has %u persistent bitmaps, which the qcow2 "
                            "driver does not load yet: their size cannot be "
                            "measured", src->filename,
                            ((Qcow2State *)src->opaque)->nb_bitmaps);
            return false;
        }
        out->bitmaps = bitmaps_bytes(src, p.cluster_size);
    }
    return true;
}

/*
 * Make every cluster unallocated (reads fall through to the backing file),
 * freeing what they held: what qemu-img commit does to the overlay once its
 * data is in the base.
 */
bool qcow2_make_empty(BlockNode *bs, GError **errp)
{
    Qcow2State *s = bs->opaque;
    uint64_t end = qcow2_align_up(s->size, s->cluster_size);
    int ret;

    g_mutex_lock(&s->lock);
    ret = qcow2_bitmaps_before_write_locked(s);
    if (ret == 0) {
        ret = qcow2_discard_range_locked(s, 0, end, true,
                                         QCOW2_DISCARD_SNAPSHOT);
    }
    if (ret == 0) {
        ret = qcow2_flush_locked(s);
    }
    g_mutex_unlock(&s->lock);
    if (ret < 0) {
        ferry_error_setg_errno(errp, -ret, "qcow2 '%s': cannot empty the image",
                               bs->filename);
        return false;
    }
    return true;
}
