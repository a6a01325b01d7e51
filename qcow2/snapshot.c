/*
 * qcow2 internal snapshots: the snapshot table (read and validated at open,
 * written whole to new clusters on every change), create, revert (goto),
 * delete and list, and the refcount walk they share.  Spec: "Snapshots".
 * Write order: internal.h, invariant 8.  The driver entry points run with
 * the node drained and take the qcow2 lock.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "blockdev/bitmap.h"
#include "common/bytes.h"
#include "common/error.h"
#include "common/log.h"
#include "qcow2/internal.h"

#define SN_HEADER_BYTES 40

static void snapshot_clear(Qcow2Snapshot *sn)
{
    g_free(sn->id);
    g_free(sn->name);
    g_free(sn->unknown_extra);
    memset(sn, 0, sizeof(*sn));
}

void qcow2_snapshots_free(Qcow2State *s)
{
    for (uint32_t i = 0; s->snapshots && i < s->nb_snapshots; i++) {
        snapshot_clear(&s->snapshots[i]);
    }
    g_clear_pointer(&s->snapshots, g_free);
}

/* -- reading and validating the table ----------------------------------- */

/* The table, read from the file as far as its entries need it. */
typedef struct TableReader {
    Qcow2State *s;
    uint64_t base;          /* host offset of the table */
    uint64_t file_len;
    uint8_t *buf;
    uint64_t have;          /* bytes of buf read */
} TableReader;

/* Make [0, end) of the table readable; -EINVAL past the end of the file. */
static int reader_need(TableReader *r, uint64_t end)
{
    uint64_t want;
    uint8_t *nbuf;
    int ret;

    if (end <= r->have) {
        return 0;
    }
    if (r->base > r->file_len || end > r->file_len - r->base) {
        return -EINVAL;
    }
    /* Grow by doubling, but never far past the largest valid table. */
    want = MAX(end, MIN(r->have * 2, (uint64_t)QCOW2_MAX_SNAPSHOTS_BYTES));
    want = MIN(MAX(want, (uint64_t)65536), r->file_len - r->base);
    nbuf = g_try_realloc(r->buf, want);
    if (!nbuf) {
        return -ENOMEM;
    }
    r->buf = nbuf;
    ret = block_node_pread(r->s->bs->file->node, r->base + r->have,
                           want - r->have, r->buf + r->have, 0);
    if (ret < 0) {
        return ret;
    }
    r->have = want;
    return 0;
}

/* Is an L1 table of l1_size entries at l1_offset plausible in this file? */
static bool valid_l1(Qcow2State *s, uint64_t l1_offset, uint64_t l1_size,
                     uint64_t file_len, const char **why)
{
    if (l1_size > QCOW2_MAX_L1_BYTES / 8) {
        *why = "is too large";
        return false;
    }
    if (l1_offset & (s->cluster_size - 1)) {
        *why = "is not cluster aligned";
        return false;
    }
    if (l1_size && (l1_offset < s->cluster_size || l1_offset >= file_len ||
                    l1_size * 8 > file_len - l1_offset)) {
        *why = l1_offset < s->cluster_size ? "overlaps the header"
                                           : "is past the end of the file";
        return false;
    }
    return true;
}

static bool parse_entry(Qcow2State *s, TableReader *r, uint64_t *pos,
                        uint32_t i, Qcow2Snapshot *sn, GError **errp)
{
    const char *f = qcow2_fname(s), *why = NULL;
    uint32_t id_len, name_len, known;
    uint64_t p = qcow2_align_up(*pos, 8);
    const uint8_t *h;
    int ret;

    ret = reader_need(r, p + SN_HEADER_BYTES);
    if (ret < 0) {
        goto io_fail;
    }
    h = r->buf + p;
    sn->l1_offset = ferry_ld_be64(h);
    sn->l1_size = ferry_ld_be32(h + 8);
    id_len = ferry_ld_be16(h + 12);
    name_len = ferry_ld_be16(h + 14);
    sn->date_sec = ferry_ld_be32(h + 16);
    sn->date_nsec = ferry_ld_be32(h + 20);
    sn->vm_clock_nsec = ferry_ld_be64(h + 24);
    sn->vm_state_size = ferry_ld_be32(h + 32);
    sn->extra_size = ferry_ld_be32(h + 36);
    if (sn->extra_size > QCOW2_MAX_SNAPSHOT_EXTRA) {
        ferry_error_set(errp, FERRY_ERROR_CORRUPT, "qcow2 '%s': snapshot table "
                        "entry %u has %u bytes of extra data (at most %u)", f,
                        i, sn->extra_size, QCOW2_MAX_SNAPSHOT_EXTRA);
        return false;
    }
    p += SN_HEADER_BYTES;
    ret = reader_need(r, p + sn->extra_size + id_len + name_len);
    if (ret < 0) {
        goto io_fail;
    }
    h = r->buf + p;
    known = MIN(sn->extra_size, (uint32_t)QCOW2_SNAPSHOT_EXTRA_KNOWN);
    sn->disk_size = s->size;
    sn->icount = UINT64_MAX;
    if (known >= 8) {
        sn->vm_state_size = ferry_ld_be64(h);
    }
    if (known >= 16) {
        sn->disk_size = ferry_ld_be64(h + 8);
    }
    if (known >= 24) {
        sn->icount = ferry_ld_be64(h + 16);
    }
    if (sn->extra_size > QCOW2_SNAPSHOT_EXTRA_KNOWN) {
        sn->unknown_extra = g_memdup2(h + QCOW2_SNAPSHOT_EXTRA_KNOWN,
                                      sn->extra_size -
                                      QCOW2_SNAPSHOT_EXTRA_KNOWN);
    }
    p += sn->extra_size;
    sn->id = g_strndup((const char *)r->buf + p, id_len);
    sn->name = g_strndup((const char *)r->buf + p + id_len, name_len);
    p += id_len + name_len;
    if (p > QCOW2_MAX_SNAPSHOTS_BYTES) {
        ferry_error_set(errp, FERRY_ERROR_CORRUPT, "qcow2 '%s': the snapshot "
                        "table is larger than %u bytes", f,
                        QCOW2_MAX_SNAPSHOTS_BYTES);
        return false;
    }
    if (!valid_l1(s, sn->l1_offset, sn->l1_size, r->file_len, &why)) {
        ferry_error_set(errp, FERRY_ERROR_CORRUPT, "qcow2 '%s': the %u-entry "
                        "L1 table at 0x%" G_GINT64_MODIFIER "x of snapshot "
                        "table entry %u %s", f, sn->l1_size, sn->l1_offset, i,
                        why);
        return false;
    }
    if (sn->disk_size > (uint64_t)INT64_MAX - s->cluster_size) {
        ferry_error_set(errp, FERRY_ERROR_CORRUPT, "qcow2 '%s': snapshot table "
                        "entry %u has an invalid disk size", f, i);
        return false;
    }
    *pos = p;
    return true;

io_fail:
    if (ret == -EINVAL) {
        ferry_error_set(errp, FERRY_ERROR_CORRUPT, "qcow2 '%s': snapshot table "
                        "entry %u runs past the end of the file", f, i);
    } else {
        ferry_error_setg_errno(errp, -ret, "qcow2 '%s': cannot read the "
                               "snapshot table", f);
    }
    return false;
}

/*
 * Read the snapshot table the header names: at most 65536 entries and
 * 64 MiB, inside the file, each entry's L1 table inside the file.
 */
bool qcow2_read_snapshots(Qcow2State *s, uint64_t file_len, GError **errp)
{
    TableReader r = { .s = s, .base = s->snapshots_offset,
                      .file_len = file_len };
    uint64_t pos = 0;
    bool ok = true;

    s->snapshots_size = 0;
    if (!s->nb_snapshots) {
        return true;
    }
    if (s->nb_snapshots > QCOW2_MAX_SNAPSHOTS) {
        ferry_error_set(errp, FERRY_ERROR_CORRUPT, "qcow2 '%s': the header "
                        "names %u snapshots, more than the %u a qcow2 image "
                        "may have", qcow2_fname(s), s->nb_snapshots,
                        QCOW2_MAX_SNAPSHOTS);
        return false;
    }
    if (s->snapshots_offset & (s->cluster_size - 1) ||
        s->snapshots_offset < s->cluster_size ||
        s->snapshots_offset >= file_len) {
        ferry_error_set(errp, FERRY_ERROR_CORRUPT, "qcow2 '%s': snapshot table "
                        "offset 0x%" G_GINT64_MODIFIER "x is invalid",
                        qcow2_fname(s), s->snapshots_offset);
        return false;
    }
    s->snapshots = g_new0(Qcow2Snapshot, s->nb_snapshots);
    for (uint32_t i = 0; i < s->nb_snapshots && ok; i++) {
        ok = parse_entry(s, &r, &pos, i, &s->snapshots[i], errp);
    }
    g_free(r.buf);
    if (!ok) {
        qcow2_snapshots_free(s);
        return false;
    }
    s->snapshots_size = pos;
    return true;
}

/* -- writing the table ------------------------------------------------- */

static uint64_t entry_bytes(const Qcow2Snapshot *sn)
{
    return SN_HEADER_BYTES + MAX(sn->extra_size,
                                 (uint32_t)QCOW2_SNAPSHOT_EXTRA_KNOWN) +
           strlen(sn->id) + strlen(sn->name);
}

static void serialize_entry(const Qcow2Snapshot *sn, uint8_t *p)
{
    uint32_t extra = MAX(sn->extra_size, (uint32_t)QCOW2_SNAPSHOT_EXTRA_KNOWN);
    size_t id_len = strlen(sn->id), name_len = strlen(sn->name);

    ferry_st_be64(p, sn->l1_offset);
    ferry_st_be32(p + 8, sn->l1_size);
    ferry_st_be16(p + 12, (uint16_t)id_len);
    ferry_st_be16(p + 14, (uint16_t)name_len);
    ferry_st_be32(p + 16, sn->date_sec);
    ferry_st_be32(p + 20, sn->date_nsec);
    ferry_st_be64(p + 24, sn->vm_clock_nsec);
    /* Spec: a VM state too large for 32 bits leaves the old field 0. */
    ferry_st_be32(p + 32, sn->vm_state_size <= UINT32_MAX
                              ? (uint32_t)sn->vm_state_size : 0);
    ferry_st_be32(p + 36, extra);
    p += SN_HEADER_BYTES;
    ferry_st_be64(p, sn->vm_state_size);
    ferry_st_be64(p + 8, sn->disk_size);
    ferry_st_be64(p + 16, sn->icount);
    if (extra > QCOW2_SNAPSHOT_EXTRA_KNOWN) {
        memcpy(p + QCOW2_SNAPSHOT_EXTRA_KNOWN, sn->unknown_extra,
               extra - QCOW2_SNAPSHOT_EXTRA_KNOWN);
    }
    p += extra;
    memcpy(p, sn->id, id_len);
    memcpy(p + id_len, sn->name, name_len);
}

/*
 * Replace the snapshot table with sns[0..nb) (invariant 8): new clusters,
 * flushed, then the header's count and offset in one write, flushed, then
 * the old table is freed.  On success s->snapshots becomes sns (the old
 * array is freed, not its entries: the caller moved or cleared them).
 */
static int write_table(Qcow2State *s, Qcow2Snapshot *sns, uint32_t nb)
{
    uint64_t size = 0, old_off = s->snapshots_offset;
    uint64_t old_clusters = qcow2_align_up(s->snapshots_size, s->cluster_size)
                            >> s->cluster_bits;
    g_autofree uint8_t *buf = NULL;
    int64_t off = 0;
    uint8_t hdr[12];
    int ret;

    for (uint32_t i = 0; i < nb; i++) {
        size = qcow2_align_up(size, 8) + entry_bytes(&sns[i]);
        if (size > QCOW2_MAX_SNAPSHOTS_BYTES) {
            return -EFBIG;
        }
    }
    if (nb) {
        uint64_t alloc = qcow2_align_up(size, s->cluster_size);
        buf = g_try_malloc0(alloc);
        if (!buf) {
            return -ENOMEM;
        }
        for (uint32_t i = 0, p = 0; i < nb; i++) {
            p = qcow2_align_up(p, 8);
            serialize_entry(&sns[i], buf + p);
            p += entry_bytes(&sns[i]);
        }
        off = qcow2_alloc_clusters(s, alloc >> s->cluster_bits);
        if (off < 0) {
            return (int)off;
        }
        ret = qcow2_cache_write_all(&s->rb_cache);
        if (ret == 0) {
            ret = block_node_pwrite(s->bs->file->node, off, alloc, buf, 0);
        }
        if (ret == 0) {
            ret = qcow2_barrier(s);
        }
        if (ret < 0) {
            qcow2_free_clusters_now(s, off, alloc >> s->cluster_bits,
                                    QCOW2_DISCARD_OTHER);
            return ret;
        }
    }
    ferry_st_be32(hdr, nb);
    ferry_st_be64(hdr + 4, (uint64_t)off);
    ret = qcow2_write_header_field(s, 60, hdr, sizeof(hdr));
    if (ret == 0) {
        ret = qcow2_barrier(s);
    }
    if (ret < 0) {
        /* The header may point at either table: keep both. */
        return ret;
    }
    if (s->snapshots != sns) {
        g_free(s->snapshots);
        s->snapshots = sns;
    }
    s->nb_snapshots = nb;
    s->snapshots_offset = (uint64_t)off;
    s->snapshots_size = size;
    s->meta_stale = s->inactive_l2_stale = true;
    if (old_off && old_clusters) {
        ret = qcow2_free_clusters_now(s, old_off, old_clusters,
                                      QCOW2_DISCARD_SNAPSHOT);
    }
    return ret;
}

/* Write the table again as it is (amend: v3 entries need their extras). */
int qcow2_rewrite_snapshot_table(Qcow2State *s)
{
    int ret = write_table(s, s->snapshots, s->nb_snapshots);

    for (uint32_t i = 0; ret == 0 && i < s->nb_snapshots; i++) {
        s->snapshots[i].extra_size = MAX(s->snapshots[i].extra_size,
                                         (uint32_t)QCOW2_SNAPSHOT_EXTRA_KNOWN);
    }
    return ret;
}

/* -- the refcount walk --------------------------------------------------- */

typedef enum {
    WALK_CHECK_INC,     /* only check that +1 fits everywhere */
    WALK_INC,           /* +1, then COPIED from the refcounts */
    WALK_DEC,           /* -1 (frees at 0), COPIED left alone */
    WALK_COPIED,        /* only COPIED from the refcounts */
} WalkMode;

static int bad_offset(Qcow2State *s, const char *what, uint64_t off)
{
    return qcow2_mark_corrupt_locked(s, "%s offset 0x%" G_GINT64_MODIFIER "x "
                                     "is invalid", what, off);
}

static bool offset_ok(Qcow2State *s, uint64_t off)
{
    return !(off & (s->cluster_size - 1)) && off >= s->cluster_size &&
           off < s->file_end;
}

/* One cluster (or compressed byte range) the walk reaches. */
static int walk_cluster(Qcow2State *s, uint64_t off, uint64_t bytes,
                        WalkMode mode)
{
    uint64_t first = off >> s->cluster_bits;
    uint64_t n = ((off + bytes - 1) >> s->cluster_bits) - first + 1;
    uint64_t rc;
    int ret;

    switch (mode) {
    case WALK_CHECK_INC:
        for (uint64_t c = 0; c < n; c++) {
            ret = qcow2_get_refcount(s, first + c, &rc);
            if (ret < 0) {
                return ret;
            }
            if (rc >= s->refcount_max) {
                return -ERANGE;
            }
        }
        return 0;
    case WALK_INC:
        return qcow2_update_refcount(s, off, bytes, 1);
    case WALK_DEC:
        return qcow2_free_clusters_now(s, first << s->cluster_bits, n,
                                       QCOW2_DISCARD_SNAPSHOT);
    default:
        return 0;
    }
}

/* Walk one L2 table; COPIED of its entries follows the refcounts. */
static int walk_l2(Qcow2State *s, uint64_t l2off, WalkMode mode)
{
    void *l2;
    bool dirty = false;
    int ret = 0;

    l2 = qcow2_cache_get(&s->l2_cache, l2off, &ret);
    if (!l2) {
        return ret;
    }
    for (uint64_t j = 0; j < s->l2_entries && ret == 0; j++) {
        uint64_t e = qcow2_l2e_get(s, l2, j), off, rc, want;

        if (e & QCOW2_OFLAG_COMPRESSED) {
            uint64_t coff, clen;
            qcow2_compressed_location(s, e, &coff, &clen);
            if (coff < s->cluster_size || coff >= s->file_end) {
                ret = bad_offset(s, "compressed cluster", coff);
                break;
            }
            ret = walk_cluster(s, coff, MIN(clen, s->file_end - coff), mode);
            continue;
        }
        if (!qcow2_l2e_has_host(s, e)) {
            continue;
        }
        off = e & QCOW2_L2E_OFFSET_MASK;
        if (!offset_ok(s, off)) {
            ret = bad_offset(s, "data cluster", off);
            break;
        }
        ret = walk_cluster(s, off, s->cluster_size, mode);
        if (ret < 0 || mode == WALK_DEC || mode == WALK_CHECK_INC) {
            continue;
        }
        ret = qcow2_get_refcount(s, off >> s->cluster_bits, &rc);
        want = rc == 1 ? QCOW2_OFLAG_COPIED : 0;
        if (ret == 0 && (e & QCOW2_OFLAG_COPIED) != want) {
            qcow2_l2e_set(s, l2, j, (e & ~QCOW2_OFLAG_COPIED) | want,
                          qcow2_l2e_bitmap(s, l2, j));
            dirty = true;
        }
    }
    if (dirty) {
        qcow2_cache_mark_dirty(&s->l2_cache, l2);
    }
    qcow2_cache_put(&s->l2_cache, l2);
    return ret;
}

/*
 * Walk every L2 table and cluster an L1 table (host-endian, l1_size
 * entries) reaches, as the mode says.  In WALK_INC and WALK_COPIED, l1[]
 * gets COPIED where the L2 table's refcount is 1 and *l1_changed is set if
 * an entry changed.  A failed walk leaves refcounts too high (leaks), never
 * too low.
 */
static int walk_l1(Qcow2State *s, uint64_t *l1, uint32_t l1_size,
                   WalkMode mode, bool *l1_changed)
{
    for (uint32_t i = 0; i < l1_size; i++) {
        uint64_t l2off = l1[i] & QCOW2_L1E_OFFSET_MASK, rc, want;
        int ret;

        if (!l2off) {
            continue;
        }
        if (!offset_ok(s, l2off)) {
            return bad_offset(s, "L2 table", l2off);
        }
        ret = walk_l2(s, l2off, mode);
        if (ret == 0) {
            ret = walk_cluster(s, l2off, s->cluster_size, mode);
        }
        if (ret < 0) {
            return ret;
        }
        if (mode != WALK_INC && mode != WALK_COPIED) {
            continue;
        }
        ret = qcow2_get_refcount(s, l2off >> s->cluster_bits, &rc);
        if (ret < 0) {
            return ret;
        }
        want = rc == 1 ? QCOW2_OFLAG_COPIED : 0;
        if ((l1[i] & QCOW2_OFLAG_COPIED) != want) {
            l1[i] = (l1[i] & ~QCOW2_OFLAG_COPIED) | want;
            *l1_changed = true;
        }
    }
    return 0;
}

/* Write the active L1 after the refcounts it was derived from (inv. 8). */
static int write_active_l1(Qcow2State *s)
{
    g_autofree uint64_t *be = g_try_new(uint64_t, MAX(s->l1_size, 1));
    int ret;

    if (!be) {
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < s->l1_size; i++) {
        be[i] = GUINT64_TO_BE(s->l1[i]);
    }
    ret = qcow2_cache_write_all(&s->rb_cache);
    if (ret == 0) {
        ret = qcow2_barrier(s);
    }
    if (ret == 0 && s->l1_size) {
        ret = block_node_pwrite(s->bs->file->node, s->l1_offset,
                                (int64_t)s->l1_size * 8, be, 0);
    }
    return ret;
}

/* Refcounts, then L2 tables, then (if changed) the active L1; flushed. */
static int write_metadata(Qcow2State *s, bool l1_changed)
{
    int ret = qcow2_cache_write_all(&s->rb_cache);

    if (ret == 0) {
        ret = qcow2_barrier(s);
    }
    if (ret == 0) {
        ret = qcow2_cache_write_all(&s->l2_cache);
    }
    if (ret == 0 && l1_changed) {
        ret = write_active_l1(s);
    }
    if (ret == 0) {
        ret = qcow2_barrier(s);
    }
    return ret;
}

/* A snapshot's L1 table, host-endian, padded with zeroes to `entries`. */
static int read_snapshot_l1(Qcow2State *s, const Qcow2Snapshot *sn,
                            uint32_t entries, uint64_t **out)
{
    uint64_t *l1 = g_try_new0(uint64_t, MAX(MAX(entries, sn->l1_size), 1));
    int ret = 0;

    if (!l1) {
        return -ENOMEM;
    }
    if (sn->l1_size) {
        ret = block_node_pread(s->bs->file->node, sn->l1_offset,
                               (int64_t)sn->l1_size * 8, l1, 0);
    }
    for (uint32_t i = 0; ret == 0 && i < sn->l1_size; i++) {
        l1[i] = GUINT64_FROM_BE(l1[i]);
        if ((l1[i] & QCOW2_L1E_RESERVED) ||
            ((l1[i] & QCOW2_L1E_OFFSET_MASK) &&
             !offset_ok(s, l1[i] & QCOW2_L1E_OFFSET_MASK))) {
            ret = -EUCLEAN;
        }
    }
    if (ret < 0) {
        g_free(l1);
        return ret;
    }
    *out = l1;
    return 0;
}

/* -- the driver ops ------------------------------------------------------ */

static int find_snapshot(Qcow2State *s, const char *id, const char *name)
{
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        if ((!id || !strcmp(s->snapshots[i].id, id)) &&
            (!name || !strcmp(s->snapshots[i].name, name))) {
            return (int)i;
        }
    }
    return -1;
}

static bool snapshots_allowed(Qcow2State *s, const char *verb, GError **errp)
{
    if (s->incompat & QCOW2_INCOMPAT_CORRUPT) {
        ferry_error_set(errp, FERRY_ERROR_CORRUPT, "qcow2 '%s': the image is "
                        "marked corrupt", qcow2_fname(s));
        return false;
    }
    if (s->has_data_file) {
        ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED, "qcow2 '%s': cannot %s "
                        "internal snapshots of an image with an external data "
                        "file", qcow2_fname(s), verb);
        return false;
    }
    if (!s->writable) {
        ferry_error_set(errp, FERRY_ERROR_PERMISSION, "qcow2 '%s': the image "
                        "is read-only", qcow2_fname(s));
        return false;
    }
    return true;
}

static char *next_id(Qcow2State *s)
{
    unsigned long max = 0;

    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        unsigned long v = strtoul(s->snapshots[i].id, NULL, 10);
        max = MAX(max, v);
    }
    return g_strdup_printf("%lu", max + 1);
}

static int set_error(Qcow2State *s, int ret, const char *what, GError **errp)
{
    if (ret == -EUCLEAN) {
        ferry_error_set(errp, FERRY_ERROR_CORRUPT, "qcow2 '%s': %s: the "
                        "snapshot's L1 table is corrupt", qcow2_fname(s), what);
    } else {
        ferry_error_setg_errno(errp, -ret, "qcow2 '%s': %s", qcow2_fname(s),
                               what);
    }
    return ret;
}

/*
 * Invariant 8, create: every cluster the active L1 reaches gains a
 * reference and loses COPIED (flushed), then the L1 is copied to new
 * clusters (flushed).  *l1_off: the copy (0 for an empty L1).
 */
static int share_active_l1(Qcow2State *s, int64_t *l1_off)
{
    uint64_t l1_clusters = qcow2_align_up((uint64_t)s->l1_size * 8,
                                          s->cluster_size) >> s->cluster_bits;
    g_autofree uint64_t *be = NULL;
    bool l1_changed = false;
    int ret = 0;

    *l1_off = 0;
    if (l1_clusters) {
        *l1_off = qcow2_alloc_clusters(s, l1_clusters);
        if (*l1_off < 0) {
            return (int)*l1_off;
        }
    }
    ret = walk_l1(s, s->l1, s->l1_size, WALK_INC, &l1_changed);
    if (ret < 0) {
        if (l1_clusters) {
            qcow2_free_clusters_now(s, *l1_off, l1_clusters,
                                    QCOW2_DISCARD_OTHER);
        }
        return ret;
    }
    ret = write_metadata(s, l1_changed);
    if (ret < 0 || !l1_clusters) {
        return ret;
    }
    be = g_try_malloc0(l1_clusters << s->cluster_bits);
    if (!be) {
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < s->l1_size; i++) {
        be[i] = GUINT64_TO_BE(s->l1[i]);
    }
    ret = block_node_pwrite(s->bs->file->node, *l1_off,
                            l1_clusters << s->cluster_bits, be, 0);
    return ret ? ret : qcow2_barrier(s);
}

static bool create_locked(Qcow2State *s, BlockSnapshotInfo *info,
                          GError **errp)
{
    Qcow2Snapshot *sns, *sn;
    bool unused = false;
    int64_t l1_off = 0;
    int ret;

    if (s->nb_snapshots >= QCOW2_MAX_SNAPSHOTS) {
        ferry_error_set(errp, FERRY_ERROR_NO_SPACE, "qcow2 '%s': the image "
                        "already has %u snapshots, the most qcow2 allows",
                        qcow2_fname(s), s->nb_snapshots);
        return false;
    }
    ret = qcow2_flush_locked(s);
    if (ret == 0 && s->refcount_order <= 3) {
        /* A narrow refcount may not count one more reference: say so now
         * (16 bits and more only overflow past QEMU's 65536 snapshots). */
        ret = walk_l1(s, s->l1, s->l1_size, WALK_CHECK_INC, &unused);
        if (ret == -ERANGE) {
            ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED, "qcow2 '%s': a "
                            "cluster already has the most references "
                            "refcount_bits=%u can count", qcow2_fname(s),
                            s->refcount_bits);
            return false;
        }
    }
    if (ret == 0) {
        ret = share_active_l1(s, &l1_off);
    }
    if (ret < 0) {
        set_error(s, ret, "cannot create the snapshot", errp);
        return false;
    }
    sns = g_new0(Qcow2Snapshot, s->nb_snapshots + 1);
    memcpy(sns, s->snapshots, sizeof(*sns) * s->nb_snapshots);
    sn = &sns[s->nb_snapshots];
    *sn = (Qcow2Snapshot){
        .id = next_id(s), .name = g_strdup(info->name ? info->name : ""),
        .l1_offset = (uint64_t)l1_off, .l1_size = s->l1_size,
        .date_sec = info->date_sec, .date_nsec = info->date_nsec,
        .vm_clock_nsec = info->vm_clock_nsec,
        .vm_state_size = info->vm_state_size, .disk_size = s->size,
        .icount = info->icount, .extra_size = QCOW2_SNAPSHOT_EXTRA_KNOWN,
    };
    ret = write_table(s, sns, s->nb_snapshots + 1);
    if (ret < 0) {
        snapshot_clear(sn);
        g_free(sns);
        set_error(s, ret, "cannot write the snapshot table", errp);
        return false;
    }
    g_free(info->id);
    info->id = g_strdup(sn->id);
    FERRY_TRACE_POINT(QCOW2, "node=%s snapshot-create id=%s l1=0x%"
                      G_GINT64_MODIFIER "x", s->bs->node_name, sn->id,
                      sn->l1_offset);
    ret = qcow2_flush_locked(s);
    if (ret < 0) {
        set_error(s, ret, "created the snapshot, but cannot flush", errp);
        return false;
    }
    return true;
}

bool qcow2_snapshot_create(BlockNode *bs, BlockSnapshotInfo *info,
                                  GError **errp)
{
    Qcow2State *s = bs->opaque;
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&s->lock);

    if (!snapshots_allowed(s, "create", errp)) {
        return false;
    }
    if (info->name && strlen(info->name) > 255) {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "qcow2 '%s': a snapshot name "
                        "may have at most 255 bytes", qcow2_fname(s));
        return false;
    }
    return create_locked(s, info, errp);
}

/* Every enabled bitmap: the whole disk changed (spec, "auto" flag). */
static void dirty_all_bitmaps(BlockNode *bs)
{
    g_mutex_lock(&bs->bitmaps_lock);
    for (GList *l = bs->bitmaps; l; l = l->next) {
        BlockDirtyBitmap *bm = l->data;
        block_dirty_bitmap_resize(bm, block_node_getlength(bs));
        if (bm->enabled) {
            block_dirty_bitmap_set(bm, 0, bm->size);
        }
    }
    g_mutex_unlock(&bs->bitmaps_lock);
}

/*
 * Invariant 8, revert: the snapshot's clusters gain a reference (flushed),
 * then its L1 is written over the active L1 (flushed).  Returns the new
 * active L1 (host-endian, s->l1_size entries) in *out.
 */
static int take_snapshot_l1(Qcow2State *s, const Qcow2Snapshot *sn,
                            uint64_t **out)
{
    uint64_t l2_cover = s->cluster_size << s->l2_bits;
    uint64_t need = (sn->disk_size + l2_cover - 1) / l2_cover;
    g_autofree uint64_t *l1 = NULL;
    g_autofree uint64_t *be = NULL;
    bool unused = false;
    int ret;

    ret = qcow2_grow_l1_locked(s, MAX(need, (uint64_t)sn->l1_size));
    if (ret == 0) {
        ret = qcow2_flush_locked(s);
    }
    if (ret == 0) {
        ret = read_snapshot_l1(s, sn, s->l1_size, &l1);
    }
    if (ret == 0) {
        ret = walk_l1(s, l1, sn->l1_size, WALK_INC, &unused);
    }
    if (ret == 0) {
        ret = write_metadata(s, false);
    }
    if (ret < 0) {
        return ret;
    }
    be = g_new(uint64_t, MAX(s->l1_size, 1));
    for (uint32_t i = 0; i < s->l1_size; i++) {
        be[i] = GUINT64_TO_BE(l1[i]);
    }
    ret = block_node_pwrite(s->bs->file->node, s->l1_offset,
                            (int64_t)s->l1_size * 8, be, 0);
    if (ret == 0) {
        ret = qcow2_barrier(s);
    }
    if (ret == 0) {
        *out = g_steal_pointer(&l1);
    }
    return ret;
}

static int write_size(Qcow2State *s, uint64_t size)
{
    uint64_t v = GUINT64_TO_BE(size);
    int ret = qcow2_write_header_field(s, QCOW2_HDR_SIZE_OFF, &v, 8);

    if (ret == 0) {
        ret = qcow2_barrier(s);
    }
    if (ret == 0) {
        __atomic_store_n(&s->size, size, __ATOMIC_RELAXED);
    }
    return ret;
}

static bool goto_locked(Qcow2State *s, Qcow2Snapshot *sn, GError **errp)
{
    uint64_t *new_l1 = NULL;
    g_autofree uint64_t *old_l1 = NULL;
    bool changed = false;
    uint32_t old_size;
    int ret;

    ret = qcow2_flush_locked(s);
    if (ret == 0) {
        ret = qcow2_bitmaps_before_write_locked(s);
    }
    if (ret == 0) {
        ret = take_snapshot_l1(s, sn, &new_l1);
    }
    if (ret < 0) {
        set_error(s, ret, "cannot revert to the snapshot", errp);
        return false;
    }
    old_l1 = s->l1;
    old_size = s->l1_size;
    s->l1 = new_l1;
    s->meta_stale = true;
    /* The old active clusters lose a reference (leaks at worst on error). */
    ret = walk_l1(s, old_l1, old_size, WALK_DEC, &changed);
    if (ret == 0 && sn->disk_size != s->size) {
        ret = write_size(s, sn->disk_size);
    }
    changed = false;
    if (ret == 0) {
        ret = walk_l1(s, s->l1, s->l1_size, WALK_COPIED, &changed);
    }
    if (ret == 0) {
        ret = write_metadata(s, changed);
    }
    if (ret == 0) {
        ret = qcow2_flush_locked(s);
    }
    if (ret < 0) {
        set_error(s, ret, "reverted to the snapshot, but cannot finish", errp);
        return false;
    }
    FERRY_TRACE_POINT(QCOW2, "node=%s snapshot-goto id=%s", s->bs->node_name,
                      sn->id);
    return true;
}

bool qcow2_snapshot_goto(BlockNode *bs, const char *id_or_name,
                                GError **errp)
{
    Qcow2State *s = bs->opaque;
    bool ok;
    int i;

    g_mutex_lock(&s->lock);
    if (!snapshots_allowed(s, "apply", errp)) {
        g_mutex_unlock(&s->lock);
        return false;
    }
    /* As QEMU: by ID first, then by name. */
    i = find_snapshot(s, id_or_name, NULL);
    if (i < 0) {
        i = find_snapshot(s, NULL, id_or_name);
    }
    if (i < 0) {
        g_mutex_unlock(&s->lock);
        ferry_error_set(errp, FERRY_ERROR_NOT_FOUND, "snapshot not found");
        return false;
    }
    ok = goto_locked(s, &s->snapshots[i], errp);
    g_mutex_unlock(&s->lock);
    if (ok) {
        dirty_all_bitmaps(bs);
    }
    return ok;
}

static bool delete_locked(Qcow2State *s, int idx, GError **errp)
{
    Qcow2Snapshot gone = s->snapshots[idx];
    g_autofree uint64_t *l1 = NULL;
    Qcow2Snapshot *sns;
    bool changed = false;
    int ret;

    ret = qcow2_flush_locked(s);
    if (ret == 0) {
        ret = read_snapshot_l1(s, &gone, gone.l1_size, &l1);
    }
    if (ret < 0) {
        set_error(s, ret, "cannot delete the snapshot", errp);
        return false;
    }
    sns = g_new0(Qcow2Snapshot, MAX(s->nb_snapshots - 1, 1));
    memcpy(sns, s->snapshots, sizeof(*sns) * idx);
    memcpy(sns + idx, s->snapshots + idx + 1,
           sizeof(*sns) * (s->nb_snapshots - idx - 1));
    ret = write_table(s, sns, s->nb_snapshots - 1);
    if (ret < 0) {
        g_free(sns);
        set_error(s, ret, "cannot write the snapshot table", errp);
        return false;
    }
    /* Nothing refers to the snapshot's clusters through it any more. */
    ret = walk_l1(s, l1, gone.l1_size, WALK_DEC, &changed);
    if (ret == 0 && gone.l1_size) {
        ret = qcow2_free_clusters_now(s, gone.l1_offset,
                                      qcow2_align_up((uint64_t)gone.l1_size * 8,
                                                     s->cluster_size)
                                      >> s->cluster_bits,
                                      QCOW2_DISCARD_SNAPSHOT);
    }
    FERRY_TRACE_POINT(QCOW2, "node=%s snapshot-delete id=%s", s->bs->node_name,
                      gone.id);
    snapshot_clear(&gone);
    changed = false;
    if (ret == 0) {
        ret = walk_l1(s, s->l1, s->l1_size, WALK_COPIED, &changed);
    }
    if (ret == 0) {
        ret = write_metadata(s, changed);
    }
    if (ret == 0) {
        ret = qcow2_flush_locked(s);
    }
    if (ret < 0) {
        set_error(s, ret, "deleted the snapshot, but cannot finish", errp);
        return false;
    }
    return true;
}

bool qcow2_snapshot_delete(BlockNode *bs, const char *id,
                                  const char *name, GError **errp)
{
    Qcow2State *s = bs->opaque;
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&s->lock);
    int i;

    if (!snapshots_allowed(s, "delete", errp)) {
        return false;
    }
    i = find_snapshot(s, id, name);
    if (i < 0) {
        ferry_error_set(errp, FERRY_ERROR_NOT_FOUND, "snapshot not found");
        return false;
    }
    return delete_locked(s, i, errp);
}

int qcow2_snapshot_list(BlockNode *bs, BlockSnapshotInfo **list,
                               GError **errp)
{
    Qcow2State *s = bs->opaque;
    BlockSnapshotInfo *out;

    g_mutex_lock(&s->lock);
    out = g_new0(BlockSnapshotInfo, MAX(s->nb_snapshots, 1));
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        const Qcow2Snapshot *sn = &s->snapshots[i];
        /* qemu-img shows at most 127 bytes of an ID, 255 of a name. */
        out[i].id = g_strndup(sn->id, 127);
        out[i].name = g_strndup(sn->name, 255);
        out[i].vm_state_size = sn->vm_state_size;
        out[i].date_sec = sn->date_sec;
        out[i].date_nsec = sn->date_nsec;
        out[i].vm_clock_nsec = sn->vm_clock_nsec;
        out[i].icount = sn->icount;
        out[i].disk_size = sn->disk_size;
    }
    *list = out;
    g_mutex_unlock(&s->lock);
    return (int)s->nb_snapshots;
}

/*
 * The L2 tables the snapshots reach, each once, for the overlap check.  The
 * snapshot L1 tables are read (up to 4M entries in all: beyond that, as in
 * QEMU's default, snapshot L2 tables are not covered); entries that are not
 * valid table offsets are skipped, check reports them.
 */
int qcow2_collect_inactive_l2(Qcow2State *s, GArray *out)
{
    /* Offsets fit a pointer on the 64-bit hosts ferry runs on. */
    g_autoptr(GHashTable) seen = g_hash_table_new(g_direct_hash,
                                                  g_direct_equal);
    uint64_t budget = 1ull << 22;

    G_STATIC_ASSERT(sizeof(gsize) == sizeof(uint64_t));

    for (uint32_t n = 0; n < s->nb_snapshots; n++) {
        const Qcow2Snapshot *sn = &s->snapshots[n];
        g_autofree uint64_t *l1 = NULL;
        int ret;

        if (sn->l1_size > budget) {
            break;
        }
        budget -= sn->l1_size;
        l1 = g_try_new(uint64_t, MAX(sn->l1_size, 1));
        if (!l1) {
            return -ENOMEM;
        }
        ret = sn->l1_size ? block_node_pread(s->bs->file->node, sn->l1_offset,
                                             (int64_t)sn->l1_size * 8, l1, 0)
                          : 0;
        if (ret < 0) {
            return ret;
        }
        for (uint32_t i = 0; i < sn->l1_size; i++) {
            uint64_t off = GUINT64_FROM_BE(l1[i]) & QCOW2_L1E_OFFSET_MASK;
            if (off && offset_ok(s, off) &&
                g_hash_table_add(seen, GSIZE_TO_POINTER((gsize)off))) {
                g_array_append_val(out, off);
            }
        }
    }
    return 0;
}
