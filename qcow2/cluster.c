/*
 * Guest-to-host mapping: L1/L2 lookups, reads by contiguous host runs,
 * writes with cluster allocation and copy-on-write (from the backing file,
 * shared snapshot clusters, compressed or zero clusters), zero clusters,
 * discard, block status, subclusters (extended L2) and L1 growth.
 * Spec: "Cluster mapping", "Extended L2 Entries".  The metadata lock is
 * never held across guest data I/O; allocations in flight are tracked so
 * overlapping writers wait (internal.h, invariants 1-4).
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/bytes.h"
#include "common/error.h"
#include "common/log.h"
#include "qcow2/internal.h"

/* -- L2 entries ---------------------------------------------------------- */

uint64_t qcow2_l2e_get(Qcow2State *s, const void *l2, uint64_t i)
{
    return ferry_ld_be64((const uint8_t *)l2 + i * s->l2_entry_bytes);
}

uint64_t qcow2_l2e_bitmap(Qcow2State *s, const void *l2, uint64_t i)
{
    if (!s->extended_l2) {
        return 0;
    }
    return ferry_ld_be64((const uint8_t *)l2 + i * 16 + 8);
}

void qcow2_l2e_set(Qcow2State *s, void *l2, uint64_t i, uint64_t entry,
                   uint64_t bitmap)
{
    ferry_st_be64((uint8_t *)l2 + i * s->l2_entry_bytes, entry);
    if (s->extended_l2) {
        ferry_st_be64((uint8_t *)l2 + i * 16 + 8, bitmap);
    }
}

/* Does the entry name a host cluster?  Offset 0 is valid in a data file. */
static bool host_set(Qcow2State *s, uint64_t entry)
{
    return (entry & QCOW2_L2E_OFFSET_MASK) ||
           (s->has_data_file && (entry & QCOW2_OFLAG_COPIED));
}

Qcow2ClusterType qcow2_l2e_type(Qcow2State *s, uint64_t entry, uint64_t bitmap,
                                uint32_t sc)
{
    if (entry & QCOW2_OFLAG_COMPRESSED) {
        return QCOW2_CL_COMPRESSED;
    }
    if (s->extended_l2) {
        bool alloc = bitmap & (1ull << sc);
        bool zero = bitmap & (1ull << (32 + sc));
        if (!host_set(s, entry)) {
            return zero ? QCOW2_CL_ZERO_PLAIN : QCOW2_CL_UNALLOCATED;
        }
        if (zero) {
            return QCOW2_CL_ZERO_ALLOC;
        }
        return alloc ? QCOW2_CL_NORMAL : QCOW2_CL_UNALLOCATED;
    }
    if ((entry & QCOW2_OFLAG_ZERO) && s->version >= 3) {
        return host_set(s, entry) ? QCOW2_CL_ZERO_ALLOC : QCOW2_CL_ZERO_PLAIN;
    }
    return host_set(s, entry) ? QCOW2_CL_NORMAL : QCOW2_CL_UNALLOCATED;
}

static uint64_t l2_cover(Qcow2State *s)
{
    return s->cluster_size << s->l2_bits;
}

/* -- L1 / L2 tables ---------------------------------------------------------- */

static int check_table_offset(Qcow2State *s, uint64_t off, const char *what,
                              uint64_t idx)
{
    if (off & (s->cluster_size - 1)) {
        return qcow2_mark_corrupt_locked(s, "%s %" G_GUINT64_FORMAT " offset "
                                         "0x%" G_GINT64_MODIFIER "x is not "
                                         "cluster aligned", what, idx, off);
    }
    if (off < s->cluster_size || off >= s->file_end) {
        return qcow2_mark_corrupt_locked(s, "%s %" G_GUINT64_FORMAT " offset "
                                         "0x%" G_GINT64_MODIFIER "x is %s",
                                         what, idx, off, off ? "past the end "
                                         "of the file" : "in the header");
    }
    return 0;
}

/*
 * Give L1 entry idx a private, writable L2 table (invariant 3): a new one,
 * or a copy of a table shared with a snapshot.
 */
static int l2_allocate(Qcow2State *s, uint64_t idx)
{
    uint64_t old = s->l1[idx] & QCOW2_L1E_OFFSET_MASK;
    uint64_t be;
    int64_t new_off;
    void *table;
    int ret;

    new_off = qcow2_alloc_clusters(s, 1);
    if (new_off < 0) {
        return (int)new_off;
    }
    if (old) {
        void *src = qcow2_cache_get(&s->l2_cache, old, &ret);
        if (!src) {
            return ret;
        }
        table = qcow2_cache_get_empty(&s->l2_cache, new_off, &ret);
        if (table) {
            memcpy(table, src, s->cluster_size);
        }
        qcow2_cache_put(&s->l2_cache, src);
    } else {
        table = qcow2_cache_get_empty(&s->l2_cache, new_off, &ret);
    }
    if (!table) {
        return ret;
    }
    /* Invariant 2 then 3: refcounts, the table, a barrier, the L1 entry. */
    ret = qcow2_cache_write_all(&s->rb_cache);
    if (ret == 0 && !s->lazy_refcounts) {
        ret = qcow2_barrier(s);
    }
    if (ret == 0) {
        ret = block_node_pwrite(s->bs->file->node, new_off, s->cluster_size,
                                table, 0);
    }
    qcow2_cache_put(&s->l2_cache, table);
    if (ret == 0) {
        ret = qcow2_barrier(s);
    }
    if (ret < 0) {
        qcow2_cache_discard(&s->l2_cache, new_off);
        return ret;
    }
    s->l1[idx] = (uint64_t)new_off | QCOW2_OFLAG_COPIED;
    s->meta_stale = true;
    be = GUINT64_TO_BE(s->l1[idx]);
    ret = block_node_pwrite(s->bs->file->node, s->l1_offset + idx * 8, 8, &be,
                            0);
    if (ret < 0) {
        s->l1[idx] = old;
        return ret;
    }
    if (old) {
        qcow2_free_deferred(s, old, 1, QCOW2_DISCARD_OTHER);
    }
    FERRY_TRACE_POINT(QCOW2, "node=%s l2-alloc idx=%" G_GUINT64_FORMAT
                      " off=0x%" G_GINT64_MODIFIER "x", s->bs->node_name, idx,
                      (uint64_t)new_off);
    return 0;
}

/*
 * The L2 table for guest offset (pinned; release with qcow2_cache_put),
 * or *l2 = NULL when none exists and !for_write.  for_write makes sure the
 * table exists and is private to the active L1 (COPIED).
 */
static int get_l2(Qcow2State *s, uint64_t offset, bool for_write, void **l2)
{
    uint64_t idx = offset / l2_cover(s);
    uint64_t entry, off;
    int ret;

    *l2 = NULL;
    if (idx >= s->l1_size) {
        if (!for_write) {
            return 0;
        }
        return qcow2_mark_corrupt_locked(s, "guest offset 0x%" G_GINT64_MODIFIER
                                         "x is beyond the L1 table (%u entries)",
                                         offset, s->l1_size);
    }
    entry = s->l1[idx];
    off = entry & QCOW2_L1E_OFFSET_MASK;
    if (off) {
        ret = check_table_offset(s, off, "L2 table for L1 entry", idx);
        if (ret < 0) {
            return ret;
        }
    }
    if (for_write && (!off || !(entry & QCOW2_OFLAG_COPIED))) {
        ret = l2_allocate(s, idx);
        if (ret < 0) {
            return ret;
        }
        off = s->l1[idx] & QCOW2_L1E_OFFSET_MASK;
    }
    if (!off) {
        return 0;
    }
    *l2 = qcow2_cache_get(&s->l2_cache, off, &ret);
    return *l2 ? 0 : ret;
}

int qcow2_get_l2_for_write(Qcow2State *s, uint64_t offset, void **l2)
{
    return get_l2(s, offset, true, l2);
}

int qcow2_grow_l1_locked(Qcow2State *s, uint64_t min_size)
{
    uint64_t new_size = MAX(min_size, (uint64_t)s->l1_size);
    uint64_t bytes, old_off = s->l1_offset, old_size = s->l1_size;
    g_autofree uint64_t *be = NULL;
    uint64_t *table;
    uint8_t hdr[12];
    int64_t off;
    int ret;

    if (min_size <= s->l1_size) {
        return 0;
    }
    if (new_size > QCOW2_MAX_L1_BYTES / 8) {
        return -EFBIG;
    }
    bytes = qcow2_align_up(new_size * 8, s->cluster_size);
    table = g_try_new0(uint64_t, bytes / 8);
    be = g_try_new0(uint64_t, bytes / 8);
    if (!table || !be) {
        g_free(table);
        return -ENOMEM;
    }
    memcpy(table, s->l1, s->l1_size * 8);
    for (uint64_t i = 0; i < new_size; i++) {
        be[i] = GUINT64_TO_BE(table[i]);
    }
    off = qcow2_alloc_clusters(s, bytes / s->cluster_size);
    if (off < 0) {
        g_free(table);
        return (int)off;
    }
    /* Invariant 5: the new table, its refcounts, a barrier, the header. */
    ret = qcow2_cache_write_all(&s->rb_cache);
    if (ret == 0) {
        ret = block_node_pwrite(s->bs->file->node, off, bytes, be, 0);
    }
    if (ret == 0) {
        ret = qcow2_barrier(s);
    }
    if (ret < 0) {
        g_free(table);
        return ret;
    }
    ferry_st_be32(hdr, (uint32_t)new_size);
    ferry_st_be64(hdr + 4, (uint64_t)off);    /* unaligned: no casts */
    ret = qcow2_write_header_field(s, QCOW2_HDR_L1_SIZE_OFF, hdr, 12);
    if (ret == 0) {
        ret = qcow2_barrier(s);
    }
    if (ret < 0) {
        g_free(table);
        return ret;
    }
    g_free(s->l1);
    s->l1 = table;
    s->l1_size = (uint32_t)new_size;
    s->l1_offset = (uint64_t)off;
    if (old_size) {
        qcow2_free_deferred(s, old_off,
                            qcow2_align_up(old_size * 8, s->cluster_size) /
                            s->cluster_size, QCOW2_DISCARD_OTHER);
    }
    return 0;
}

/* -- mapping for reads --------------------------------------------------- */

typedef struct Qcow2Map {
    Qcow2ClusterType type;
    uint64_t bytes;         /* length of the run from the asked offset */
    uint64_t host;          /* host offset of the run's start (NORMAL, ZERO_ALLOC) */
    uint64_t entry;         /* the L2 entry (COMPRESSED) */
    bool unalloc_host;      /* UNALLOCATED subclusters of an allocated cluster:
                               host is valid (block status reports it) */
} Qcow2Map;

static int check_data_offset(Qcow2State *s, uint64_t host, uint64_t guest)
{
    if (host & (s->cluster_size - 1)) {
        return qcow2_mark_corrupt_locked(s, "cluster at guest offset 0x%"
                                         G_GINT64_MODIFIER "x has unaligned "
                                         "host offset 0x%" G_GINT64_MODIFIER
                                         "x", guest, host);
    }
    if (!s->has_data_file && (host < s->cluster_size || host >= s->file_end)) {
        return qcow2_mark_corrupt_locked(s, "cluster at guest offset 0x%"
                                         G_GINT64_MODIFIER "x points %s "
                                         "(host offset 0x%" G_GINT64_MODIFIER
                                         "x)", guest, host ? "past the end of "
                                         "the file" : "into the header", host);
    }
    return 0;
}

/* Locked.  Describe the longest run at offset (within one L2 table). */
static int map_range(Qcow2State *s, uint64_t offset, uint64_t bytes,
                     Qcow2Map *m)
{
    uint64_t cs = s->cluster_size, scs = s->subcluster_size;
    uint64_t end = MIN(offset + bytes, (offset / l2_cover(s) + 1) * l2_cover(s));
    uint64_t pos = offset;
    void *l2;
    int ret;

    ret = get_l2(s, offset, false, &l2);
    if (ret < 0) {
        return ret;
    }
    if (!l2) {
        m->type = QCOW2_CL_UNALLOCATED;
        m->bytes = end - offset;
        return 0;
    }
    while (pos < end) {
        uint64_t i = (pos / cs) & (s->l2_entries - 1);
        uint64_t entry = qcow2_l2e_get(s, l2, i);
        uint64_t bitmap = qcow2_l2e_bitmap(s, l2, i);
        uint64_t in_cl = pos & (cs - 1);
        uint32_t sc = (uint32_t)(in_cl / scs);
        uint64_t piece_end = MIN(end, (pos & ~(scs - 1)) + scs);
        Qcow2ClusterType t = qcow2_l2e_type(s, entry, bitmap, sc);
        uint64_t host = (entry & QCOW2_L2E_OFFSET_MASK) + in_cl;

        if (t == QCOW2_CL_COMPRESSED) {
            if (pos != offset) {
                break;
            }
            m->type = t;
            m->entry = entry;
            m->bytes = MIN(end, (pos & ~(cs - 1)) + cs) - offset;
            break;
        }
        if (t == QCOW2_CL_NORMAL || t == QCOW2_CL_ZERO_ALLOC) {
            if (in_cl == 0 || pos == offset) {
                ret = check_data_offset(s, entry & QCOW2_L2E_OFFSET_MASK,
                                        pos & ~(cs - 1));
                if (ret < 0) {
                    qcow2_cache_put(&s->l2_cache, l2);
                    return ret;
                }
            }
        }
        bool unalloc_host = t == QCOW2_CL_UNALLOCATED && host_set(s, entry);
        if (pos == offset) {
            m->type = t;
            m->host = host;
            m->unalloc_host = unalloc_host;
        } else if (t != m->type || unalloc_host != m->unalloc_host ||
                   ((t == QCOW2_CL_NORMAL || unalloc_host) &&
                    host != m->host + (pos - offset))) {
            break;
        }
        pos = piece_end;
        m->bytes = pos - offset;
    }
    qcow2_cache_put(&s->l2_cache, l2);
    return 0;
}

/* -- reads --------------------------------------------------------------- */

static int read_backing(Qcow2State *s, uint64_t offset, uint64_t bytes,
                        uint8_t *buf)
{
    BlockNode *backing = s->bs->backing ? s->bs->backing->node : NULL;
    int64_t blen;
    uint64_t n;

    if (!backing) {
        memset(buf, 0, bytes);
        return 0;
    }
    blen = block_node_getlength(backing);
    if (blen < 0) {
        return (int)blen;
    }
    n = (uint64_t)blen > offset ? MIN(bytes, (uint64_t)blen - offset) : 0;
    if (n < bytes) {
        memset(buf + n, 0, bytes - n);
    }
    return n ? block_node_pread(backing, offset, n, buf, 0) : 0;
}

void qcow2_compressed_location(Qcow2State *s, uint64_t entry, uint64_t *off,
                               uint64_t *len)
{
    uint32_t x = 62 - (s->cluster_bits - 8);
    uint64_t nb_sectors = ((entry >> x) & ((1ull << (s->cluster_bits - 8)) - 1))
                          + 1;

    *off = entry & ((1ull << x) - 1);
    *len = nb_sectors * 512 - (*off & 511);
}

static int read_compressed(Qcow2State *s, uint64_t entry, uint8_t *cluster)
{
    uint64_t off, len;
    g_autofree uint8_t *cbuf = NULL;
    int ret;

    qcow2_compressed_location(s, entry, &off, &len);
    if (off >= s->file_end) {
        g_mutex_lock(&s->lock);
        ret = qcow2_mark_corrupt_locked(s, "compressed cluster at host offset "
                                        "0x%" G_GINT64_MODIFIER "x is past the "
                                        "end of the file", off);
        g_mutex_unlock(&s->lock);
        return ret;
    }
    len = MIN(len, s->file_end - off);
    cbuf = g_try_malloc(len);
    if (!cbuf) {
        return -ENOMEM;
    }
    ret = block_node_pread(s->bs->file->node, off, len, cbuf, 0);
    if (ret < 0) {
        return ret;
    }
    return qcow2_decompress(s->compression_type, cluster, s->cluster_size,
                            cbuf, len);
}

/* Read guest bytes as the image presents them (no graph checks). */
static int read_guest(Qcow2State *s, uint64_t offset, uint64_t bytes,
                      uint8_t *buf)
{
    while (bytes > 0) {
        Qcow2Map m = { 0 };
        int ret;

        g_mutex_lock(&s->lock);
        ret = map_range(s, offset, bytes, &m);
        g_mutex_unlock(&s->lock);
        if (ret < 0) {
            return ret;
        }
        switch (m.type) {
        case QCOW2_CL_UNALLOCATED:
            ret = read_backing(s, offset, m.bytes, buf);
            break;
        case QCOW2_CL_ZERO_PLAIN:
        case QCOW2_CL_ZERO_ALLOC:
            memset(buf, 0, m.bytes);
            break;
        case QCOW2_CL_NORMAL:
            ret = block_node_pread(qcow2_data_node(s), m.host, m.bytes, buf, 0);
            break;
        case QCOW2_CL_COMPRESSED: {
            uint8_t *cl = g_try_malloc(s->cluster_size);
            if (!cl) {
                return -ENOMEM;
            }
            ret = read_compressed(s, m.entry, cl);
            if (ret == 0) {
                memcpy(buf, cl + (offset & (s->cluster_size - 1)), m.bytes);
            }
            g_free(cl);
            break;
        }
        }
        if (ret < 0) {
            return ret;
        }
        offset += m.bytes;
        bytes -= m.bytes;
        buf += m.bytes;
    }
    return 0;
}

int qcow2_pread(BlockNode *bs, int64_t offset, int64_t bytes, void *buf,
                uint32_t flags)
{
    return read_guest(bs->opaque, offset, bytes, buf);
}

/* -- allocations in flight ----------------------------------------------- */

static bool in_flight_overlaps(Qcow2State *s, uint64_t start, uint64_t end)
{
    for (guint i = 0; i < s->in_flight->len; i++) {
        Qcow2InFlight *f = &g_array_index(s->in_flight, Qcow2InFlight, i);
        if (f->start < end && start < f->end) {
            return true;
        }
    }
    return false;
}

static void in_flight_add(Qcow2State *s, uint64_t start, uint64_t end)
{
    Qcow2InFlight f = { start, end };

    g_array_append_val(s->in_flight, f);
}

static void in_flight_remove(Qcow2State *s, uint64_t start, uint64_t end)
{
    for (guint i = 0; i < s->in_flight->len; i++) {
        Qcow2InFlight *f = &g_array_index(s->in_flight, Qcow2InFlight, i);
        if (f->start == start && f->end == end) {
            g_array_remove_index_fast(s->in_flight, i);
            break;
        }
    }
    g_cond_broadcast(&s->alloc_cond);
}

/* -- writes -------------------------------------------------------------- */

static int u64_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

/* What a metadata cluster of the overlap list is: its low bits. */
enum { META_L2, META_SNAPSHOT_L2, META_REFBLOCK, META_SNAPSHOT_L1,
       META_BITMAP };
static const char *const meta_names[] = {
    [META_L2] = "an L2 table", [META_SNAPSHOT_L2] = "a snapshot's L2 table",
    [META_REFBLOCK] = "a refcount block",
    [META_SNAPSHOT_L1] = "a snapshot's L1 table",
    [META_BITMAP] = "a bitmap directory or table",
};

static void meta_add(GArray *a, uint64_t off, uint64_t kind)
{
    uint64_t v = off | kind;

    g_array_append_val(a, v);
}

/*
 * Locked.  The sorted list of metadata clusters that move, each offset
 * tagged with its kind in the low bits (clusters are 512-byte aligned or
 * more): active and snapshot L2 tables, refcount blocks, snapshot L1
 * tables, bitmap tables.  Rebuilt after any of them changes (meta_stale);
 * snapshot L2 tables are read again only after a snapshot operation
 * (inactive_l2_stale).
 */
static int rebuild_meta(Qcow2State *s)
{
    uint64_t cs = s->cluster_size;
    g_autoptr(GArray) a = g_array_new(FALSE, FALSE, sizeof(uint64_t));
    g_autoptr(GArray) bm = g_array_new(FALSE, FALSE, sizeof(uint64_t));
    int ret;

    if (s->inactive_l2_stale) {
        g_autoptr(GArray) in = g_array_new(FALSE, FALSE, sizeof(uint64_t));
        ret = qcow2_collect_inactive_l2(s, in);
        if (ret < 0) {
            return ret;
        }
        g_free(s->inactive_l2);
        s->nb_inactive_l2 = in->len;
        s->inactive_l2 = (uint64_t *)g_array_free(g_steal_pointer(&in), FALSE);
        s->inactive_l2_stale = false;
    }
    for (size_t i = 0; i < s->nb_inactive_l2; i++) {
        meta_add(a, s->inactive_l2[i], META_SNAPSHOT_L2);
    }
    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t off = s->l1[i] & QCOW2_L1E_OFFSET_MASK;
        if (off) {
            meta_add(a, off, META_L2);
        }
    }
    for (uint64_t i = 0; i < s->reftable_size; i++) {
        if (s->reftable[i]) {
            meta_add(a, s->reftable[i], META_REFBLOCK);
        }
    }
    for (uint32_t n = 0; n < s->nb_snapshots; n++) {
        const Qcow2Snapshot *sn = &s->snapshots[n];
        for (uint64_t o = 0; o < (uint64_t)sn->l1_size * 8; o += cs) {
            meta_add(a, sn->l1_offset + o, META_SNAPSHOT_L1);
        }
    }
    qcow2_collect_bitmap_meta(s, bm);
    for (guint i = 0; i < bm->len; i++) {
        meta_add(a, g_array_index(bm, uint64_t, i), META_BITMAP);
    }
    g_array_sort(a, u64_cmp);
    g_free(s->meta);
    s->nb_meta = a->len;
    s->meta = (uint64_t *)g_array_free(g_steal_pointer(&a), FALSE);
    s->meta_stale = false;
    return 0;
}

/* The first metadata cluster of the list inside [start, end), or NULL. */
static const char *meta_hit(Qcow2State *s, uint64_t start, uint64_t end)
{
    uint64_t mask = s->cluster_size - 1;
    size_t lo = 0, hi = s->nb_meta;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->meta[mid] < start) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if (lo < s->nb_meta && (s->meta[lo] & ~mask) < end) {
        return meta_names[s->meta[lo] & mask];
    }
    return NULL;
}

/* Locked.  Is the cluster at off in the overlap check's list? */
bool qcow2_is_meta_cluster(Qcow2State *s, uint64_t off)
{
    return !s->meta_stale && meta_hit(s, off, off + 1) != NULL;
}

/* Does this metadata-free host range collide with known metadata? */
static int overlap_check(Qcow2State *s, uint64_t host, uint64_t bytes)
{
    uint64_t end = host + bytes;
    uint64_t cs = s->cluster_size;
    const char *what = NULL;
    int ret;

    if (s->has_data_file) {
        return 0;
    }
    if (s->meta_stale || s->inactive_l2_stale) {
        ret = rebuild_meta(s);
        if (ret < 0) {
            return ret;
        }
    }
    if (host < cs) {
        what = "the header";
    } else if (host < s->l1_offset + qcow2_align_up(s->l1_size * 8, cs) &&
               s->l1_offset < end) {
        what = "the active L1 table";
    } else if (host < s->reftable_offset + s->reftable_clusters * cs &&
               s->reftable_offset < end) {
        what = "the refcount table";
    } else if (s->nb_snapshots &&
               host < s->snapshots_offset +
                      qcow2_align_up(s->snapshots_size, cs) &&
               s->snapshots_offset < end) {
        what = "the snapshot table";
    } else {
        what = meta_hit(s, host & ~(cs - 1), end);
    }
    if (what) {
        return qcow2_mark_corrupt_locked(s, "a data write to host offset 0x%"
                                         G_GINT64_MODIFIER "x would overwrite "
                                         "%s", host, what);
    }
    return 0;
}

typedef struct WriteRun {
    bool alloc;             /* false: data goes in place, no metadata */
    uint64_t offset;        /* guest bytes this run writes */
    uint64_t bytes;
    uint64_t host;          /* in place: host of offset; alloc: of cl_start */
    uint64_t cl_start;      /* alloc: guest cluster range */
    uint64_t nclusters;
    bool reuse_host;        /* extended L2: fill subclusters of a cluster */
} WriteRun;

/* Subclusters [first, last] of a cluster that [offset, end) touches. */
static void touched_subclusters(Qcow2State *s, uint64_t cl, uint64_t offset,
                                uint64_t end, uint32_t *first, uint32_t *last)
{
    uint64_t a = MAX(offset, cl) - cl;
    uint64_t b = MIN(end, cl + s->cluster_size) - cl;

    *first = (uint32_t)(a / s->subcluster_size);
    *last = (uint32_t)((b - 1) / s->subcluster_size);
}

/* Can the part of this cluster that [offset,end) touches be written in place? */
static bool writable_in_place(Qcow2State *s, uint64_t entry, uint64_t bitmap,
                              uint64_t cl, uint64_t offset, uint64_t end)
{
    uint32_t a, b;

    if (!host_set(s, entry) || (entry & QCOW2_OFLAG_COMPRESSED) ||
        !(entry & QCOW2_OFLAG_COPIED)) {
        return false;
    }
    touched_subclusters(s, cl, offset, end, &a, &b);
    for (uint32_t sc = a; sc <= b; sc++) {
        if (qcow2_l2e_type(s, entry, bitmap, sc) != QCOW2_CL_NORMAL) {
            return false;
        }
    }
    return true;
}

/* Locked.  Plan the first run of [offset, offset+bytes). */
static int plan_write(Qcow2State *s, uint64_t offset, uint64_t bytes,
                      WriteRun *r)
{
    uint64_t cs = s->cluster_size;
    uint64_t end = MIN(offset + bytes, (offset / l2_cover(s) + 1) * l2_cover(s));
    uint64_t pos = offset;
    void *l2;
    int ret;

    ret = get_l2(s, offset, false, &l2);
    if (ret < 0) {
        return ret;
    }
    memset(r, 0, sizeof(*r));
    r->offset = offset;
    while (pos < end) {
        uint64_t cl = pos & ~(cs - 1);
        uint64_t i = (cl / cs) & (s->l2_entries - 1);
        uint64_t entry = l2 ? qcow2_l2e_get(s, l2, i) : 0;
        uint64_t bitmap = l2 ? qcow2_l2e_bitmap(s, l2, i) : 0;
        uint64_t piece_end = MIN(end, cl + cs);
        bool inplace = l2 && writable_in_place(s, entry, bitmap, cl, pos,
                                               piece_end);
        uint64_t host = (entry & QCOW2_L2E_OFFSET_MASK) + (pos - cl);

        if (pos == offset) {
            r->alloc = !inplace;
            r->host = inplace ? host : 0;
            r->cl_start = cl;
            if (inplace) {
                ret = check_data_offset(s, entry & QCOW2_L2E_OFFSET_MASK, cl);
                if (ret < 0) {
                    break;
                }
            }
            if (!inplace && s->extended_l2 && host_set(s, entry) &&
                (entry & QCOW2_OFLAG_COPIED) &&
                !(entry & QCOW2_OFLAG_COMPRESSED)) {
                /* Same host cluster, new subclusters: one cluster. */
                r->reuse_host = true;
                r->host = entry & QCOW2_L2E_OFFSET_MASK;
                r->nclusters = 1;
                pos = piece_end;
                break;
            }
        } else if (inplace != !r->alloc ||
                   (inplace && host != r->host + (pos - offset))) {
            break;
        } else if (!inplace && s->extended_l2 && host_set(s, entry) &&
                   (entry & QCOW2_OFLAG_COPIED) &&
                   !(entry & QCOW2_OFLAG_COMPRESSED)) {
            break;
        }
        if (r->alloc) {
            r->nclusters++;
        }
        pos = piece_end;
    }
    if (l2) {
        qcow2_cache_put(&s->l2_cache, l2);
    }
    if (ret < 0) {
        return ret;
    }
    r->bytes = pos - offset;
    if (!r->alloc) {
        return overlap_check(s, r->host, r->bytes);
    }
    return 0;
}

/* Copy-on-write sources for one cluster of an allocating run. */
static int fill_cow(Qcow2State *s, WriteRun *r, uint64_t cl, uint64_t entry,
                    uint64_t bitmap, uint8_t *dst, bool *used)
{
    /* dst == NULL: only tell (*used) whether a copy is needed. */
    uint64_t scs = s->subcluster_size;
    uint64_t wend = r->offset + r->bytes;
    uint32_t a, b;
    int ret;

    touched_subclusters(s, cl, r->offset, wend, &a, &b);
    for (uint32_t sc = 0; sc < s->subclusters; sc++) {
        uint64_t sstart = cl + sc * scs, send = sstart + scs;
        Qcow2ClusterType t = qcow2_l2e_type(s, entry, bitmap, sc);
        if (sc >= a && sc <= b) {
            /* Touched: copy the parts the write leaves. */
            if (r->offset > sstart) {
                *used = true;
                ret = dst ? read_guest(s, sstart, r->offset - sstart,
                                       dst + (sstart - cl)) : 0;
                if (ret < 0) {
                    return ret;
                }
            }
            if (wend < send) {
                *used = true;
                ret = dst ? read_guest(s, wend, send - wend,
                                       dst + (wend - cl)) : 0;
                if (ret < 0) {
                    return ret;
                }
            }
        } else if (!r->reuse_host &&
                   (t == QCOW2_CL_NORMAL || t == QCOW2_CL_COMPRESSED)) {
            *used = true;
            ret = dst ? read_guest(s, sstart, scs, dst + (sstart - cl)) : 0;
            if (ret < 0) {
                return ret;
            }
        }
    }
    return 0;
}

/* Locked.  Queue the host clusters an old entry held (invariant 4). */
static void free_old_entry(Qcow2State *s, uint64_t old, Qcow2DiscardType type)
{
    uint64_t cs = s->cluster_size;

    if (s->has_data_file) {
        return;
    }
    if (old & QCOW2_OFLAG_COMPRESSED) {
        uint64_t coff, clen;
        qcow2_compressed_location(s, old, &coff, &clen);
        qcow2_free_deferred(s, coff & ~(cs - 1),
                            (coff + clen - 1) / cs - coff / cs + 1, type);
    } else if (host_set(s, old)) {
        qcow2_free_deferred(s, old & QCOW2_L2E_OFFSET_MASK, 1, type);
    }
}

/* Locked.  Point the run's clusters at their new data (invariant 1). */
static int commit_run(Qcow2State *s, WriteRun *r)
{
    uint64_t cs = s->cluster_size, wend = r->offset + r->bytes;
    void *l2;
    int ret;

    ret = get_l2(s, r->cl_start, true, &l2);
    if (ret < 0) {
        return ret;
    }
    for (uint64_t k = 0; k < r->nclusters; k++) {
        uint64_t cl = r->cl_start + k * cs;
        uint64_t i = (cl / cs) & (s->l2_entries - 1);
        uint64_t old = qcow2_l2e_get(s, l2, i);
        uint64_t obm = qcow2_l2e_bitmap(s, l2, i);
        uint64_t host = r->host + k * cs;
        uint64_t bm = 0;
        uint32_t a, b;

        if (s->extended_l2) {
            touched_subclusters(s, cl, r->offset, wend, &a, &b);
            for (uint32_t sc = 0; sc < s->subclusters; sc++) {
                Qcow2ClusterType t = qcow2_l2e_type(s, old, obm, sc);
                bool alloc = (sc >= a && sc <= b) || t == QCOW2_CL_NORMAL ||
                             t == QCOW2_CL_COMPRESSED;
                if (alloc) {
                    bm |= 1ull << sc;
                } else if (t == QCOW2_CL_ZERO_PLAIN ||
                           t == QCOW2_CL_ZERO_ALLOC) {
                    bm |= 1ull << (32 + sc);
                }
            }
        }
        qcow2_l2e_set(s, l2, i, host | QCOW2_OFLAG_COPIED, bm);
        if (!r->reuse_host) {
            free_old_entry(s, old, QCOW2_DISCARD_OTHER);
        }
    }
    qcow2_cache_mark_dirty(&s->l2_cache, l2);
    qcow2_cache_put(&s->l2_cache, l2);
    return 0;
}

/* Unlocked.  Write one allocating run: COW sources, data, then metadata. */
static int write_alloc_run(Qcow2State *s, WriteRun *r, const uint8_t *buf)
{
    uint64_t cs = s->cluster_size, span = r->nclusters * cs;
    g_autofree uint64_t *entries = g_new(uint64_t, r->nclusters * 2);
    g_autofree uint8_t *bounce = NULL;
    bool cow = false;
    int ret = 0;

    /* Old entries: stable while the range is in flight. */
    g_mutex_lock(&s->lock);
    {
        void *l2;
        ret = get_l2(s, r->cl_start, false, &l2);
        for (uint64_t k = 0; k < r->nclusters && ret == 0; k++) {
            uint64_t i = ((r->cl_start / cs) + k) & (s->l2_entries - 1);
            entries[2 * k] = l2 ? qcow2_l2e_get(s, l2, i) : 0;
            entries[2 * k + 1] = l2 ? qcow2_l2e_bitmap(s, l2, i) : 0;
        }
        if (l2) {
            qcow2_cache_put(&s->l2_cache, l2);
        }
    }
    g_mutex_unlock(&s->lock);
    if (ret < 0) {
        return ret;
    }
    for (uint64_t k = 0; k < r->nclusters && !cow; k++) {
        fill_cow(s, r, r->cl_start + k * cs, entries[2 * k],
                 entries[2 * k + 1], NULL, &cow);
    }
    if (cow) {
        bounce = g_try_malloc0(span);
        if (!bounce) {
            return -ENOMEM;
        }
    }
    for (uint64_t k = 0; k < r->nclusters && cow; k++) {
        bool used = false;
        ret = fill_cow(s, r, r->cl_start + k * cs, entries[2 * k],
                       entries[2 * k + 1], bounce + k * cs, &used);
        if (ret < 0) {
            return ret;
        }
    }
    if (cow && r->reuse_host) {
        /* Only the touched subclusters: the others hold live data. */
        uint64_t scs = s->subcluster_size;
        uint64_t a = (r->offset - r->cl_start) & ~(scs - 1);
        uint64_t b = qcow2_align_up(r->offset + r->bytes - r->cl_start, scs);
        memcpy(bounce + (r->offset - r->cl_start), buf, r->bytes);
        ret = block_node_pwrite(qcow2_data_node(s), r->host + a, b - a,
                                bounce + a, 0);
    } else if (cow) {
        memcpy(bounce + (r->offset - r->cl_start), buf, r->bytes);
        ret = block_node_pwrite(qcow2_data_node(s), r->host, span, bounce, 0);
    } else {
        g_clear_pointer(&bounce, g_free);
        ret = block_node_pwrite(qcow2_data_node(s),
                                r->host + (r->offset - r->cl_start), r->bytes,
                                buf, 0);
    }
    return ret;
}

int qcow2_pwrite(BlockNode *bs, int64_t offset, int64_t bytes,
                 const void *buf, uint32_t flags)
{
    Qcow2State *s = bs->opaque;
    const uint8_t *p = buf;
    int ret = 0;

    ret = qcow2_bitmaps_before_write(s);
    if (ret < 0) {
        return ret;
    }
    if (flags & BLOCK_REQ_WRITE_COMPRESSED) {
        return qcow2_pwrite_compressed(bs, offset, bytes, buf);
    }
    while (bytes > 0) {
        WriteRun r;
        uint64_t ip_end = 0;

        g_mutex_lock(&s->lock);
        if (s->incompat & QCOW2_INCOMPAT_CORRUPT) {
            g_mutex_unlock(&s->lock);
            return -EIO;
        }
        for (;;) {
            ret = plan_write(s, offset, bytes, &r);
            if (ret < 0 || !r.alloc ||
                !in_flight_overlaps(s, r.cl_start,
                                    r.cl_start + r.nclusters * s->cluster_size)) {
                break;
            }
            g_cond_wait(&s->alloc_cond, &s->lock);
        }
        if (ret == 0 && r.alloc) {
            ret = qcow2_mark_dirty_locked(s);
            if (ret == 0) {
                /* Make the L2 table private now: commit_run needs it. */
                void *l2;
                ret = get_l2(s, r.cl_start, true, &l2);
                if (ret == 0) {
                    qcow2_cache_put(&s->l2_cache, l2);
                }
            }
            if (ret == 0 && !r.reuse_host) {
                int64_t host;
                if (s->has_data_file) {
                    host = (int64_t)r.cl_start;
                } else {
                    host = qcow2_alloc_clusters(s, r.nclusters);
                }
                if (host < 0) {
                    ret = (int)host;
                } else {
                    r.host = (uint64_t)host;
                }
            }
            if (ret == 0) {
                in_flight_add(s, r.cl_start,
                              r.cl_start + r.nclusters * s->cluster_size);
            }
        } else if (ret == 0) {
            /* Invariant 11: a discard of these clusters waits for us. */
            ip_end = qcow2_align_up(r.offset + r.bytes, s->cluster_size);
            in_flight_add(s, r.cl_start, ip_end);
        }
        g_mutex_unlock(&s->lock);
        if (ret < 0) {
            return ret;
        }
        if (!r.alloc) {
            if (G_UNLIKELY(s->test_hook)) {
                s->test_hook(s, "in-place-write");
            }
            ret = block_node_pwrite(qcow2_data_node(s), r.host, r.bytes, p, 0);
            g_mutex_lock(&s->lock);
            in_flight_remove(s, r.cl_start, ip_end);
            g_mutex_unlock(&s->lock);
        } else {
            uint64_t end = r.cl_start + r.nclusters * s->cluster_size;
            ret = write_alloc_run(s, &r, p);
            g_mutex_lock(&s->lock);
            if (ret == 0) {
                ret = commit_run(s, &r);
            }
            if (ret < 0 && !r.reuse_host && !s->has_data_file) {
                /* Nothing refers to the new clusters: give them back. */
                qcow2_free_deferred(s, r.host, r.nclusters, QCOW2_DISCARD_OTHER);
            }
            in_flight_remove(s, r.cl_start, end);
            g_mutex_unlock(&s->lock);
        }
        if (ret < 0) {
            return ret;
        }
        offset += r.bytes;
        bytes -= r.bytes;
        p += r.bytes;
    }
    return 0;
}

/* -- zeroes and discard -------------------------------------------------- */

/* Does [offset, offset+bytes) read as zeroes now?  Locked. */
static int reads_as_zero(Qcow2State *s, uint64_t offset, uint64_t bytes,
                         bool *zero)
{
    BlockNode *backing = s->bs->backing ? s->bs->backing->node : NULL;
    int64_t blen = backing ? block_node_getlength(backing) : 0;

    *zero = false;
    while (bytes > 0) {
        Qcow2Map m = { 0 };
        int ret = map_range(s, offset, bytes, &m);
        if (ret < 0) {
            return ret;
        }
        if (m.type == QCOW2_CL_UNALLOCATED) {
            if (blen < 0 || (backing && (int64_t)offset < blen)) {
                return 0;
            }
        } else if (m.type != QCOW2_CL_ZERO_PLAIN &&
                   m.type != QCOW2_CL_ZERO_ALLOC) {
            return 0;
        }
        offset += m.bytes;
        bytes -= m.bytes;
    }
    *zero = true;
    return 0;
}

/* Locked.  The new entry for one cluster zeroed or discarded. */
static void zero_entry(Qcow2State *s, uint64_t old, uint64_t obm,
                       uint32_t a, uint32_t b, bool zero, bool unmap,
                       bool full, bool backing, uint64_t *entry, uint64_t *bm,
                       bool *drop_host)
{
    bool compressed = old & QCOW2_OFLAG_COMPRESSED;

    *entry = old;
    *bm = obm;
    *drop_host = false;
    if (s->extended_l2 && !compressed) {
        for (uint32_t sc = a; sc <= b; sc++) {
            *bm &= ~(1ull << sc) & ~(1ull << (32 + sc));
            if (!full && (zero || backing || host_set(s, old))) {
                *bm |= 1ull << (32 + sc);
            }
        }
        if (!(*bm & 0xffffffffull) && host_set(s, old) && (unmap || full)) {
            *drop_host = true;     /* no subcluster keeps data */
            *entry = 0;
        }
        return;
    }
    if (compressed) {
        /* Only whole clusters get here: the data goes. */
        *drop_host = true;
        *bm = 0;
        *entry = (full || s->version < 3) ? 0 : QCOW2_OFLAG_ZERO;
        if (s->extended_l2) {
            *entry = 0;
            *bm = full ? 0 : 0xffffffff00000000ull;
        }
        return;
    }
    if (full) {
        *drop_host = host_set(s, old);
        *entry = 0;
    } else if (zero) {
        /*
         * Unallocated clusters become zero clusters even without a backing
         * file, as in QEMU: they must stay zero if one is added later
         * (rebase, commit).
         */
        if (!unmap && host_set(s, old) && (old & QCOW2_OFLAG_COPIED)) {
            *entry = (old & (QCOW2_L2E_OFFSET_MASK | QCOW2_OFLAG_COPIED)) |
                     QCOW2_OFLAG_ZERO;
        } else {
            *drop_host = host_set(s, old);
            *entry = QCOW2_OFLAG_ZERO;
        }
    } else {
        *drop_host = host_set(s, old);
        *entry = (s->version >= 3 && (backing || *drop_host)) ?
                 QCOW2_OFLAG_ZERO : 0;
    }
}

/*
 * Locked.  Set the subclusters of [start, end) (subcluster aligned; whole
 * clusters without extended L2) to zero, or discard them; full discard
 * makes them unallocated, whatever the backing file holds.
 */
static int zero_or_discard_locked(Qcow2State *s, uint64_t start, uint64_t end,
                                  bool zero, bool unmap, bool full,
                                  Qcow2DiscardType type)
{
    uint64_t cs = s->cluster_size;
    bool backing = s->bs->backing != NULL;
    int ret;

    ret = qcow2_mark_dirty_locked(s);
    if (ret < 0) {
        return ret;
    }
    while (start < end) {
        uint64_t l2end = MIN(end, (start / l2_cover(s) + 1) * l2_cover(s));
        void *l2;

        ret = get_l2(s, start, false, &l2);
        if (ret < 0) {
            return ret;
        }
        if (!l2 && (full || s->version < 3 || (!zero && !backing))) {
            start = l2end;      /* nothing allocated, nothing to hide */
            continue;
        }
        if (l2) {
            qcow2_cache_put(&s->l2_cache, l2);
        }
        ret = get_l2(s, start, true, &l2);
        if (ret < 0) {
            return ret;
        }
        while (start < l2end) {
            uint64_t cl = start & ~(cs - 1);
            uint64_t i = (cl / cs) & (s->l2_entries - 1);
            uint64_t old = qcow2_l2e_get(s, l2, i);
            uint64_t obm = qcow2_l2e_bitmap(s, l2, i);
            uint64_t cend = MIN(l2end, cl + cs);
            uint64_t entry, bm;
            bool drop_host;
            uint32_t a, b;

            touched_subclusters(s, cl, start, cend, &a, &b);
            if ((old & QCOW2_OFLAG_COMPRESSED) &&
                (start != cl || cend != cl + cs)) {
                start = cend;   /* part of a compressed cluster: leave it */
                continue;
            }
            zero_entry(s, old, obm, a, b, zero, unmap, full, backing, &entry,
                       &bm, &drop_host);
            if (entry != old || bm != obm) {
                qcow2_l2e_set(s, l2, i, entry, bm);
                qcow2_cache_mark_dirty(&s->l2_cache, l2);
            }
            if (drop_host) {
                free_old_entry(s, old, type);
            }
            start = cend;
        }
        qcow2_cache_put(&s->l2_cache, l2);
    }
    return 0;
}

int qcow2_discard_range_locked(Qcow2State *s, uint64_t offset, uint64_t end,
                               bool full, Qcow2DiscardType type)
{
    return zero_or_discard_locked(s, offset, end, false, true, full, type);
}

/* Write zeroes through the normal path for a partial piece. */
static int zero_piece(Qcow2State *s, uint64_t offset, uint64_t bytes)
{
    g_autofree uint8_t *zero = g_try_malloc0(bytes);
    bool already;
    int ret;

    if (!zero) {
        return -ENOMEM;
    }
    g_mutex_lock(&s->lock);
    ret = reads_as_zero(s, offset, bytes, &already);
    g_mutex_unlock(&s->lock);
    if (ret < 0 || already) {
        return ret;
    }
    return qcow2_pwrite(s->bs, offset, bytes, zero, 0);
}

/* Zero [a, b) (subcluster aligned) through the zero flags. */
static int zero_clusters(Qcow2State *s, uint64_t a, uint64_t b, uint32_t flags,
                         bool one_cluster)
{
    uint64_t ca = a & ~(s->cluster_size - 1);
    uint64_t cb = qcow2_align_up(b, s->cluster_size);
    int ret;

    g_mutex_lock(&s->lock);
    if (s->incompat & QCOW2_INCOMPAT_CORRUPT) {
        g_mutex_unlock(&s->lock);
        return -EIO;
    }
    while (in_flight_overlaps(s, ca, cb)) {
        g_cond_wait(&s->alloc_cond, &s->lock);
    }
    if (one_cluster && (a != ca || b != cb)) {
        void *l2;
        bool compressed = false;
        ret = get_l2(s, a, false, &l2);
        if (ret == 0 && l2) {
            uint64_t i = (ca / s->cluster_size) & (s->l2_entries - 1);
            compressed = qcow2_l2e_get(s, l2, i) & QCOW2_OFLAG_COMPRESSED;
            qcow2_cache_put(&s->l2_cache, l2);
        }
        if (ret < 0 || compressed) {
            g_mutex_unlock(&s->lock);
            return ret < 0 ? ret : zero_piece(s, a, b - a);
        }
    }
    ret = zero_or_discard_locked(s, a, b, true, flags & BLOCK_REQ_MAY_UNMAP,
                                 false, QCOW2_DISCARD_REQUEST);
    g_mutex_unlock(&s->lock);
    return ret;
}

int qcow2_pwrite_zeroes(BlockNode *bs, int64_t offset, int64_t bytes,
                        uint32_t flags)
{
    Qcow2State *s = bs->opaque;
    uint64_t scs = s->subcluster_size;
    uint64_t end = offset + bytes;
    uint64_t a = qcow2_align_up(offset, scs);
    uint64_t b = end & ~(scs - 1);
    int ret;

    if (s->has_data_file && s->data_file_raw) {
        return -ENOTSUP;    /* the raw data file must hold the zeroes */
    }
    ret = qcow2_bitmaps_before_write(s);
    if (ret < 0) {
        return ret;
    }
    if (end == s->size) {
        b = qcow2_align_up(end, scs);  /* the image's last partial cluster */
    }
    if (s->version < 3 && !s->extended_l2) {
        /* No zero flag: skip what already reads as zero, write the rest. */
        if (flags & BLOCK_REQ_NO_FALLBACK) {
            bool already;
            g_mutex_lock(&s->lock);
            ret = reads_as_zero(s, offset, bytes, &already);
            g_mutex_unlock(&s->lock);
            return ret < 0 ? ret : already ? 0 : -ENOTSUP;
        }
        for (uint64_t pos = offset; pos < end;) {
            uint64_t n = MIN(end - pos, 1u << 20);
            ret = zero_piece(s, pos, n);
            if (ret < 0) {
                return ret;
            }
            pos += n;
        }
        return 0;
    }
    if (a >= b) {
        return zero_piece(s, offset, bytes);
    }
    if ((uint64_t)offset < a) {
        ret = zero_piece(s, offset, a - offset);
        if (ret < 0) {
            return ret;
        }
    }
    if (s->extended_l2) {
        /* Per cluster: part of a compressed cluster needs a real write. */
        for (uint64_t pos = a; pos < b;) {
            uint64_t cend = MIN(b, (pos & ~(s->cluster_size - 1)) +
                                   s->cluster_size);
            ret = zero_clusters(s, pos, cend, flags, true);
            if (ret < 0) {
                return ret;
            }
            pos = cend;
        }
    } else {
        ret = zero_clusters(s, a, b, flags, false);
        if (ret < 0) {
            return ret;
        }
    }
    if (b < end) {
        ret = zero_piece(s, b, end - b);
    }
    return ret;
}

int qcow2_pdiscard(BlockNode *bs, int64_t offset, int64_t bytes)
{
    Qcow2State *s = bs->opaque;
    uint64_t cs = s->cluster_size;
    uint64_t end = offset + bytes;
    uint64_t a = qcow2_align_up(offset, cs);
    uint64_t b = end & ~(cs - 1);
    int ret;

    if (end == s->size) {
        b = qcow2_align_up(end, cs);
    }
    if (a >= b) {
        return 0;       /* discard is advisory: partial clusters stay */
    }
    ret = qcow2_bitmaps_before_write(s);
    if (ret < 0) {
        return ret;
    }
    g_mutex_lock(&s->lock);
    if (s->incompat & QCOW2_INCOMPAT_CORRUPT) {
        g_mutex_unlock(&s->lock);
        return -EIO;
    }
    while (in_flight_overlaps(s, a, b)) {
        g_cond_wait(&s->alloc_cond, &s->lock);
    }
    ret = zero_or_discard_locked(s, a, b, false, true, false,
                                 QCOW2_DISCARD_REQUEST);
    g_mutex_unlock(&s->lock);
    return ret;
}

/* -- block status -------------------------------------------------------- */

static int status_of(Qcow2State *s, Qcow2Map *m)
{
    switch (m->type) {
    case QCOW2_CL_UNALLOCATED:
        /* As QEMU: a subcluster not yet written in an allocated cluster
         * still has its host offset (qemu-img map prints it). */
        return m->unalloc_host ? BLOCK_STATUS_OFFSET_VALID : 0;
    case QCOW2_CL_ZERO_PLAIN:
        return BLOCK_STATUS_ZERO | BLOCK_STATUS_ALLOCATED;
    case QCOW2_CL_ZERO_ALLOC:
        return BLOCK_STATUS_ZERO | BLOCK_STATUS_ALLOCATED |
               BLOCK_STATUS_OFFSET_VALID;
    case QCOW2_CL_NORMAL:
        return BLOCK_STATUS_DATA | BLOCK_STATUS_ALLOCATED |
               BLOCK_STATUS_OFFSET_VALID;
    default:
        return BLOCK_STATUS_DATA | BLOCK_STATUS_ALLOCATED |
               BLOCK_STATUS_COMPRESSED;
    }
}

int qcow2_block_status(BlockNode *bs, int64_t offset, int64_t bytes,
                       int64_t *pnum, int64_t *map, BlockNode **file)
{
    Qcow2State *s = bs->opaque;
    Qcow2Map m = { 0 };
    uint64_t total = 0, host0 = 0;
    int first = -1;
    int ret;

    g_mutex_lock(&s->lock);
    while (bytes > 0) {
        int st;
        ret = map_range(s, offset, bytes, &m);
        if (ret < 0) {
            g_mutex_unlock(&s->lock);
            return ret;
        }
        st = status_of(s, &m);
        if (first < 0) {
            first = st;
            host0 = m.host;
        } else if (st != first || (st & BLOCK_STATUS_COMPRESSED) ||
                   ((st & BLOCK_STATUS_OFFSET_VALID) &&
                    m.host != host0 + total)) {
            break;
        }
        total += m.bytes;
        offset += m.bytes;
        bytes -= m.bytes;
        if (st & BLOCK_STATUS_COMPRESSED) {
            break;
        }
    }
    g_mutex_unlock(&s->lock);
    *pnum = total;
    if (first & BLOCK_STATUS_OFFSET_VALID) {
        *map = host0;
        *file = qcow2_data_node(s);
    }
    return first;
}

/* -- preallocation ------------------------------------------------------- */

/*
 * Locked.  Give every unallocated cluster of [offset, end) a host cluster
 * (preallocation=metadata and up), contiguously.  *host_end: end of the
 * last host cluster used.
 */
int qcow2_preallocate_locked(Qcow2State *s, uint64_t offset, uint64_t end,
                             uint64_t *host_end)
{
    uint64_t cs = s->cluster_size;
    int ret;

    offset &= ~(cs - 1);
    *host_end = 0;
    while (offset < end) {
        uint64_t l2end = MIN(end, (offset / l2_cover(s) + 1) * l2_cover(s));
        uint64_t n = qcow2_align_up(l2end - offset, cs) / cs;
        int64_t host;
        void *l2;

        ret = get_l2(s, offset, true, &l2);
        if (ret < 0) {
            return ret;
        }
        qcow2_cache_put(&s->l2_cache, l2);
        host = s->has_data_file ? (int64_t)offset : qcow2_alloc_clusters(s, n);
        if (host < 0) {
            return (int)host;
        }
        ret = get_l2(s, offset, true, &l2);
        if (ret < 0) {
            return ret;
        }
        for (uint64_t k = 0; k < n; k++) {
            uint64_t i = (offset / cs + k) & (s->l2_entries - 1);
            uint64_t old = qcow2_l2e_get(s, l2, i);
            if (host_set(s, old) || (old & QCOW2_OFLAG_COMPRESSED)) {
                /* Already allocated: the spare host cluster is freed. */
                if (!s->has_data_file) {
                    qcow2_free_deferred(s, host + k * cs, 1,
                                        QCOW2_DISCARD_OTHER);
                }
                continue;
            }
            qcow2_l2e_set(s, l2, i, (host + k * cs) | QCOW2_OFLAG_COPIED,
                          s->extended_l2 ? 0xffffffffull : 0);
        }
        qcow2_cache_mark_dirty(&s->l2_cache, l2);
        qcow2_cache_put(&s->l2_cache, l2);
        *host_end = MAX(*host_end, host + n * cs);
        offset = l2end;
    }
    return 0;
}
