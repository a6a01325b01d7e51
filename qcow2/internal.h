/*
 * qcow2 driver internals shared by the files of qcow2/: the on-disk
 * constants (spec: /work/shared/specs/qcow2.txt), the node state, and the
 * order in which metadata reaches the file.
 */
#ifndef FERRY_QCOW2_INTERNAL_H
#define FERRY_QCOW2_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include <glib.h>

#include "blockdev/driver.h"

/*
 * Metadata write ordering (enforced where named):
 *
 *  1. Guest data reaches the file before the L2 entry that points at it is
 *     changed (cluster.c: write_alloc_run() writes data, then updates L2
 *     under the lock).
 *  2. A refcount raised for a cluster is written (and a barrier issued)
 *     before any L2 table, L1 entry or header field that refers to that
 *     cluster is written (cache.c: qcow2_cache_write_all() on the L2 cache
 *     writes the refcount cache and flushes the file first).
 *  3. A new L2 table is written to the file before the L1 entry that points
 *     at it (cluster.c: l2_allocate()), with a barrier in between.
 *  4. A refcount is lowered only after every reference to the cluster is
 *     gone on disk: frees are queued (qcow2_free_deferred()) and applied by
 *     qcow2_apply_deferred_frees() after the L2 cache has been written and
 *     flushed.  Until then the cluster stays in use and cannot be reused.
 *  5. A new refcount table or L1 table is written in full, then flushed,
 *     before the header switches to it; the old one is freed by rule 4.
 *  6. Lazy refcounts: the dirty bit is set and flushed before the first
 *     L2 change; rule 2 is then relaxed (refcounts are rebuilt on open).
 *  7. An image with the corrupt bit is never written; once metadata is
 *     found inconsistent, the bit is set and every later write fails.
 *  8. Internal snapshots (snapshot.c).  Create: the refcount of every L2
 *     table and cluster the active L1 reaches is raised, written and
 *     flushed; then COPIED is cleared in those L2 tables and in the active
 *     L1 (flushed); then the snapshot's L1 copy is written; then a new
 *     snapshot table (flushed) and one header write of nb_snapshots and
 *     snapshots_offset together (flushed); the old table is freed last.
 *     Revert: the snapshot's clusters gain a reference (flushed) before its
 *     L1 is written over the active L1 (flushed); only then do the old
 *     active clusters lose theirs.  Delete: the table without the entry
 *     switches first; its clusters lose their references after.  COPIED is
 *     set again only from refcounts already on disk (the L2 cache writes the
 *     refcount cache and a barrier first; L1 writes do the same).
 *  9. Persistent bitmaps (bitmap.c).  Before the first write to a node whose
 *     bitmaps were loaded, their directory entries get IN_USE in place,
 *     bracketed by clearing the autoclear bitmaps bit and setting it again
 *     (each flushed).  Storing writes data clusters and bitmap tables, then
 *     a new directory, flushed, then the header that points at it; the old
 *     clusters are freed after.
 * 10. Changing the refcount width (amend) writes the new refcount table and
 *     blocks past the end of the image and flushes them; one header write
 *     switches refcount_order, the table offset and its size together.
 * 11. A cluster being written in place is in the in-flight list for the
 *     time of the data write, so a discard or zero write of it waits: its
 *     host cluster cannot be freed (and reused) under the late write.
 *
 * A crash therefore may leak clusters but never leaves an entry pointing
 * at a cluster whose refcount is zero or at unwritten data.
 */

#define QCOW2_MAGIC                 0x514649fbu   /* "QFI\xfb" */
#define QCOW2_MAX_CLUSTER_BITS      21
#define QCOW2_MIN_CLUSTER_BITS      9
#define QCOW2_MAX_L1_BYTES          (32 * 1024 * 1024)
#define QCOW2_MAX_REFTABLE_BYTES    (8 * 1024 * 1024)
#define QCOW2_DEFAULT_L2_CACHE_MAX  (32 * 1024 * 1024)

/* Header extension types. */
#define QCOW2_EXT_END               0x00000000u
#define QCOW2_EXT_BACKING_FORMAT    0xe2792acau
#define QCOW2_EXT_FEATURE_TABLE     0x6803f857u
#define QCOW2_EXT_BITMAPS           0x23852875u
#define QCOW2_EXT_CRYPTO            0x0537be77u
#define QCOW2_EXT_DATA_FILE         0x44415441u

/* Feature bits. */
#define QCOW2_INCOMPAT_DIRTY        (1ull << 0)
#define QCOW2_INCOMPAT_CORRUPT      (1ull << 1)
#define QCOW2_INCOMPAT_DATA_FILE    (1ull << 2)
#define QCOW2_INCOMPAT_COMPRESSION  (1ull << 3)
#define QCOW2_INCOMPAT_EXTL2        (1ull << 4)
#define QCOW2_INCOMPAT_KNOWN        0x1full
#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ull << 0)
#define QCOW2_AUTOCLEAR_BITMAPS     (1ull << 0)
#define QCOW2_AUTOCLEAR_DATA_RAW    (1ull << 1)
#define QCOW2_AUTOCLEAR_KNOWN       0x3ull

#define QCOW2_COMPRESS_ZLIB         0
#define QCOW2_COMPRESS_ZSTD         1

/* L1 / L2 entry bits. */
#define QCOW2_OFLAG_COPIED          (1ull << 63)
#define QCOW2_OFLAG_COMPRESSED      (1ull << 62)
#define QCOW2_OFLAG_ZERO            (1ull << 0)
#define QCOW2_L1E_OFFSET_MASK       0x00fffffffffffe00ull
#define QCOW2_L2E_OFFSET_MASK       0x00fffffffffffe00ull
#define QCOW2_L1E_RESERVED          0x7f000000000001ffull
#define QCOW2_L2E_STD_RESERVED      0x3f000000000001feull

/* Header field offsets (bytes). */
#define QCOW2_HDR_SIZE_OFF          24
#define QCOW2_HDR_L1_SIZE_OFF       36
#define QCOW2_HDR_REFTABLE_OFF      48
#define QCOW2_HDR_INCOMPAT_OFF      72
#define QCOW2_HDR_AUTOCLEAR_OFF     88
#define QCOW2_HDR_V2_LEN            72
#define QCOW2_HDR_V3_LEN            104
#define QCOW2_HDR_V3_CREATE_LEN     112

/* What one guest cluster (or subcluster) is, from its L2 entry. */
typedef enum {
    QCOW2_CL_UNALLOCATED,   /* reads from backing or as zeroes */
    QCOW2_CL_ZERO_PLAIN,    /* zero flag, no host cluster */
    QCOW2_CL_ZERO_ALLOC,    /* zero flag with a preallocated host cluster */
    QCOW2_CL_NORMAL,        /* data at a host cluster */
    QCOW2_CL_COMPRESSED,    /* compressed data at a byte offset */
} Qcow2ClusterType;

/* A cluster-sized table cache (cache.c). */
typedef struct Qcow2CacheEntry {
    uint64_t offset;        /* host offset of the table; 0: slot empty */
    void *table;            /* cluster_size bytes, on-disk (big-endian) */
    uint64_t lru;           /* s->cache tick of the last use */
    int pinned;             /* >0: may not be evicted */
    bool dirty;
} Qcow2CacheEntry;

typedef struct Qcow2State Qcow2State;

typedef struct Qcow2Cache {
    Qcow2State *s;
    const char *what;       /* "L2", "refcount" for messages */
    Qcow2CacheEntry *entries;
    uint8_t *mem;           /* size tables of cluster_size bytes */
    int size;               /* slots */
    uint64_t tick;
    GHashTable *index;      /* offset -> slot+1 */
    bool is_l2;
} Qcow2Cache;

/* A cluster range some writer is allocating (guest side). */
typedef struct Qcow2InFlight {
    uint64_t start;         /* guest bytes, cluster aligned */
    uint64_t end;
} Qcow2InFlight;

/* A refcount decrement waiting for rule 4. */
typedef struct Qcow2DeferredFree {
    uint64_t offset;        /* host bytes, cluster aligned */
    uint64_t clusters;
    int type;               /* Qcow2DiscardType */
} Qcow2DeferredFree;

typedef enum {
    QCOW2_DISCARD_NEVER,
    QCOW2_DISCARD_ALWAYS,
    QCOW2_DISCARD_REQUEST,
    QCOW2_DISCARD_SNAPSHOT,
    QCOW2_DISCARD_OTHER,
    QCOW2_DISCARD_MAX,
} Qcow2DiscardType;

/* One unknown (or bitmaps) header extension we keep verbatim. */
typedef struct Qcow2UnknownExt {
    uint32_t type;
    uint32_t len;
    uint8_t *data;
} Qcow2UnknownExt;

/* Snapshot table limits, as QEMU (spec: "Snapshots"). */
#define QCOW2_MAX_SNAPSHOTS         65536
#define QCOW2_MAX_SNAPSHOTS_BYTES   (1024 * QCOW2_MAX_SNAPSHOTS)
#define QCOW2_MAX_SNAPSHOT_EXTRA    1024
#define QCOW2_SNAPSHOT_EXTRA_KNOWN  24      /* vm state, disk size, icount */

/* One internal snapshot, from the snapshot table (snapshot.c). */
typedef struct Qcow2Snapshot {
    uint64_t l1_offset;         /* host bytes */
    uint32_t l1_size;           /* entries */
    char *id;
    char *name;
    uint32_t date_sec;
    uint32_t date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t vm_state_size;     /* bytes */
    uint64_t disk_size;         /* virtual bytes when it was taken */
    uint64_t icount;            /* UINT64_MAX: not recorded */
    uint32_t extra_size;        /* extra data bytes in the table entry */
    uint8_t *unknown_extra;     /* extra_size - 24 bytes kept verbatim */
} Qcow2Snapshot;

/* Bitmaps extension limits, as QEMU (spec: "Bitmaps extension"). */
#define QCOW2_MAX_BITMAPS           65535
#define QCOW2_MAX_BITMAP_DIR_BYTES  (1024 * QCOW2_MAX_BITMAPS)
#define QCOW2_BME_MAX_TABLE_SIZE    0x8000000u
#define QCOW2_BME_MAX_PHYS_SIZE     0x20000000u
#define QCOW2_BME_MIN_GRAN_BITS     9
#define QCOW2_BME_MAX_GRAN_BITS     31
#define QCOW2_BME_MAX_NAME          1023
#define QCOW2_BME_FLAG_IN_USE       (1u << 0)
#define QCOW2_BME_FLAG_AUTO         (1u << 1)
#define QCOW2_BME_FLAG_EXTRA_COMPAT (1u << 2)
#define QCOW2_BME_TYPE_DIRTY        1
#define QCOW2_BME_ENTRY_RESERVED    0xff000000000001feull
#define QCOW2_BME_ENTRY_OFFSET_MASK 0x00fffffffffffe00ull
#define QCOW2_BME_ENTRY_ALL_ONES    1ull

/* One persistent bitmap as its directory entry says (bitmap.c). */
typedef struct Qcow2Bitmap {
    char *name;
    uint64_t table_offset;      /* host bytes */
    uint32_t table_size;        /* entries */
    uint32_t flags;             /* QCOW2_BME_FLAG_* as on disk */
    uint32_t granularity_bits;
    uint64_t digest;            /* of the bits as last read or written */
    bool has_digest;
} Qcow2Bitmap;

struct Qcow2State {
    GMutex lock;                /* guards everything below marked (lock) */
    GCond alloc_cond;           /* in-flight allocation finished */
    BlockNode *bs;

    /* header, read at open (changed only under lock / drained) */
    uint32_t version;           /* 2 or 3 */
    uint32_t cluster_bits;
    uint64_t cluster_size;      /* bytes */
    uint32_t l2_bits;           /* log2 of entries per L2 table */
    uint64_t l2_entries;        /* entries per L2 table */
    uint32_t l2_entry_bytes;    /* 8, or 16 with extended L2 */
    uint32_t subcluster_bits;   /* 0 or 5 */
    uint64_t subcluster_size;   /* bytes; == cluster_size without extl2 */
    uint32_t subclusters;       /* per cluster: 1 or 32 */
    uint64_t size;              /* virtual bytes (lock) */
    uint32_t crypt_method;
    uint32_t l1_size;           /* entries (lock) */
    uint64_t l1_offset;         /* host bytes (lock) */
    uint64_t *l1;               /* host-endian copy of the L1 table (lock) */
    uint64_t reftable_offset;   /* host bytes (lock) */
    uint32_t reftable_clusters; /* (lock) */
    uint64_t reftable_size;     /* entries (lock) */
    uint64_t *reftable;         /* host-endian copy (lock) */
    uint32_t nb_snapshots;      /* (drained) */
    uint64_t snapshots_offset;  /* host bytes (drained) */
    uint64_t snapshots_size;    /* bytes of the table (drained) */
    Qcow2Snapshot *snapshots;   /* nb_snapshots entries (drained) */
    uint64_t incompat;          /* (lock) */
    uint64_t compat;
    uint64_t autoclear;
    uint32_t refcount_order;
    uint32_t refcount_bits;
    uint64_t refcount_max;
    uint32_t rb_bits;           /* log2 of refcounts per refcount block */
    uint32_t header_length;
    uint32_t compression_type;
    bool extended_l2;
    bool data_file_raw;
    char *data_file_name;       /* from the header extension, or NULL */
    char *backing_name;
    char *backing_fmt;
    GPtrArray *unknown_exts;    /* Qcow2UnknownExt*: kept across rewrites */
    char *feature_names[3][64]; /* from the feature table ext, or NULL */
    bool has_bitmaps_ext;       /* a valid bitmaps extension is in use */
    uint64_t bitmap_dir_offset; /* host bytes (lock) */
    uint64_t bitmap_dir_size;   /* bytes (lock) */
    uint32_t nb_bitmaps;        /* (lock) */
    GPtrArray *bitmaps;         /* Qcow2Bitmap*: the directory on disk (lock) */
    bool bitmaps_loaded;        /* the node's bitmaps came from the image */
    bool bitmaps_need_mark;     /* set IN_USE on disk before a write (lock) */

    /* run time */
    bool writable;
    bool lazy_refcounts;
    bool discard_passthrough[QCOW2_DISCARD_MAX];
    bool has_data_file;         /* data clusters live in bs->data_file */
    uint64_t file_end;          /* bytes in the image file we know of (lock) */
    uint64_t free_cluster_index;/* allocation search hint (lock) */
    uint64_t free_byte_offset;  /* compressed packing; 0: none (lock) */
    Qcow2Cache l2_cache;        /* (lock) */
    Qcow2Cache rb_cache;        /* (lock) */
    bool rb_unflushed;          /* refcounts written, no barrier yet (lock) */
    GArray *in_flight;          /* Qcow2InFlight (lock) */
    GArray *deferred;           /* Qcow2DeferredFree (lock) */
    uint64_t deferred_clusters; /* total in deferred (lock) */
    /* overlap check (cluster.c): metadata cluster offsets, sorted (lock) */
    uint64_t *meta;
    size_t nb_meta;
    bool meta_stale;            /* rebuild before the next check (lock) */
    uint64_t *inactive_l2;      /* L2 tables of snapshots only (lock) */
    size_t nb_inactive_l2;
    bool inactive_l2_stale;
    /* Unit tests only: called at named points of the data path, unlocked
     * ("in-place-write": before an in-place data write).  NULL in use. */
    void (*test_hook)(Qcow2State *s, const char *event);
};

static inline uint64_t qcow2_align_up(uint64_t x, uint64_t a)
{
    return (x + a - 1) & ~(a - 1);
}

static inline BlockNode *qcow2_data_node(Qcow2State *s)
{
    return s->has_data_file ? s->bs->data_file->node : s->bs->file->node;
}

/* Does an L2 entry name a host cluster?  Offset 0 is valid in a data file. */
static inline bool qcow2_l2e_has_host(Qcow2State *s, uint64_t entry)
{
    return (entry & QCOW2_L2E_OFFSET_MASK) ||
           (s->has_data_file && (entry & QCOW2_OFLAG_COPIED));
}

/* qcow2.c */
const char *qcow2_fname(Qcow2State *s);     /* for messages */
int qcow2_barrier(Qcow2State *s);
int qcow2_write_header_field(Qcow2State *s, uint64_t off, const void *buf,
                             size_t len);
int qcow2_mark_dirty_locked(Qcow2State *s);
int qcow2_mark_corrupt_locked(Qcow2State *s, const char *fmt, ...)
    G_GNUC_PRINTF(2, 3);
bool qcow2_update_header(Qcow2State *s, GError **errp);
int qcow2_flush_locked(Qcow2State *s);
bool qcow2_serialize_header(Qcow2State *s, uint8_t *buf, size_t cap);

/* cache.c */
void qcow2_cache_init(Qcow2Cache *c, Qcow2State *s, const char *what,
                      int slots, bool is_l2);
void qcow2_cache_destroy(Qcow2Cache *c);
/* Load (or find) the table at offset; NULL with *ret on error. Pins it. */
void *qcow2_cache_get(Qcow2Cache *c, uint64_t offset, int *ret);
/* A fresh zeroed table for offset (not read from disk). Pins it. */
void *qcow2_cache_get_empty(Qcow2Cache *c, uint64_t offset, int *ret);
void qcow2_cache_put(Qcow2Cache *c, void *table);
void qcow2_cache_mark_dirty(Qcow2Cache *c, void *table);
int qcow2_cache_write_all(Qcow2Cache *c);
void qcow2_cache_discard(Qcow2Cache *c, uint64_t offset);
void qcow2_cache_drop_all(Qcow2Cache *c);
bool qcow2_cache_is_dirty(Qcow2Cache *c);

/* refcount.c */
uint64_t qcow2_rc_get_entry(const void *block, uint32_t order, uint64_t i);
void qcow2_rc_set_entry(void *block, uint32_t order, uint64_t i, uint64_t v);
int qcow2_get_refcount(Qcow2State *s, uint64_t cluster_index, uint64_t *rc);
int qcow2_update_refcount(Qcow2State *s, uint64_t offset, uint64_t bytes,
                          int64_t delta);
int64_t qcow2_alloc_clusters(Qcow2State *s, uint64_t n);
int64_t qcow2_alloc_bytes(Qcow2State *s, uint64_t bytes);
void qcow2_free_deferred(Qcow2State *s, uint64_t offset, uint64_t clusters,
                         Qcow2DiscardType type);
int qcow2_apply_deferred_frees(Qcow2State *s);
int qcow2_free_clusters_now(Qcow2State *s, uint64_t offset, uint64_t clusters,
                            Qcow2DiscardType type);
int qcow2_write_reftable_entry(Qcow2State *s, uint64_t idx);
bool qcow2_rebuild_refcounts(Qcow2State *s, uint64_t *computed,
                             uint64_t nb_clusters, GError **errp);
bool qcow2_change_refcount_order(Qcow2State *s, uint32_t order, GError **errp);

/* cluster.c */
Qcow2ClusterType qcow2_l2e_type(Qcow2State *s, uint64_t entry, uint64_t bitmap,
                                uint32_t sc);
uint64_t qcow2_l2e_get(Qcow2State *s, const void *l2, uint64_t i);
uint64_t qcow2_l2e_bitmap(Qcow2State *s, const void *l2, uint64_t i);
void qcow2_l2e_set(Qcow2State *s, void *l2, uint64_t i, uint64_t entry,
                   uint64_t bitmap);
int qcow2_pread(BlockNode *bs, int64_t offset, int64_t bytes, void *buf,
                uint32_t flags);
int qcow2_pwrite(BlockNode *bs, int64_t offset, int64_t bytes,
                 const void *buf, uint32_t flags);
int qcow2_pwrite_zeroes(BlockNode *bs, int64_t offset, int64_t bytes,
                        uint32_t flags);
int qcow2_pdiscard(BlockNode *bs, int64_t offset, int64_t bytes);
int qcow2_block_status(BlockNode *bs, int64_t offset, int64_t bytes,
                       int64_t *pnum, int64_t *map, BlockNode **file);
int qcow2_get_l2_for_write(Qcow2State *s, uint64_t offset, void **l2);
int qcow2_grow_l1_locked(Qcow2State *s, uint64_t min_size);
int qcow2_preallocate_locked(Qcow2State *s, uint64_t offset, uint64_t end,
                             uint64_t *host_end);
bool qcow2_is_meta_cluster(Qcow2State *s, uint64_t off);
int qcow2_discard_range_locked(Qcow2State *s, uint64_t offset, uint64_t end,
                               bool full, Qcow2DiscardType type);

/* compress.c */
/* Compress src (cluster_size) into dst; returns bytes or -errno (-ENOSPC:
 * does not fit in dst_len). */
ssize_t qcow2_compress(uint32_t type, void *dst, size_t dst_len,
                       const void *src, size_t src_len);
/* Decompress exactly dst_len bytes; 0 or -EIO. */
int qcow2_decompress(uint32_t type, void *dst, size_t dst_len,
                     const void *src, size_t src_len);
int qcow2_pwrite_compressed(BlockNode *bs, int64_t offset, int64_t bytes,
                            const void *buf);
void qcow2_compressed_location(Qcow2State *s, uint64_t entry, uint64_t *off,
                               uint64_t *len);

/* create.c */
bool qcow2_create(const char *filename, json_t *opts, GError **errp);
extern const BlockCreateOpt qcow2_create_opts[];

/* check.c */
bool qcow2_check(BlockNode *bs, BlockCheckResult *res, uint32_t fix,
                 GError **errp);
bool qcow2_check_locked(Qcow2State *s, BlockCheckResult *res, uint32_t fix,
                        GError **errp);

/* snapshot.c */
bool qcow2_read_snapshots(Qcow2State *s, uint64_t file_len, GError **errp);
void qcow2_snapshots_free(Qcow2State *s);
int qcow2_collect_inactive_l2(Qcow2State *s, GArray *out);
int qcow2_rewrite_snapshot_table(Qcow2State *s);
bool qcow2_snapshot_create(BlockNode *bs, BlockSnapshotInfo *info,
                           GError **errp);
bool qcow2_snapshot_goto(BlockNode *bs, const char *id_or_name, GError **errp);
bool qcow2_snapshot_delete(BlockNode *bs, const char *id, const char *name,
                           GError **errp);
int qcow2_snapshot_list(BlockNode *bs, BlockSnapshotInfo **list,
                        GError **errp);

/* bitmap.c */
bool qcow2_parse_bitmaps_ext(Qcow2State *s, const uint8_t *data, uint32_t len,
                             GError **errp);
bool qcow2_read_bitmap_dir(Qcow2State *s, uint64_t file_len, GError **errp);
bool qcow2_load_bitmaps(Qcow2State *s, GError **errp);
void qcow2_bitmaps_free(Qcow2State *s);
/* Invariant 9: IN_USE on disk before the first write (0 or -errno). */
int qcow2_bitmaps_before_write_locked(Qcow2State *s);
int qcow2_bitmaps_before_write(Qcow2State *s);
bool qcow2_store_bitmaps_locked(Qcow2State *s, GError **errp);
bool qcow2_bitmaps_store(BlockNode *bs, GError **errp);
bool qcow2_bitmap_can_store(BlockNode *bs, const char *name,
                            uint32_t granularity, GError **errp);
bool qcow2_bitmap_remove_persistent(BlockNode *bs, const char *name,
                                    GError **errp);
json_t *qcow2_bitmap_info(Qcow2State *s);
void qcow2_collect_bitmap_meta(Qcow2State *s, GArray *out);

/* amend.c */
bool qcow2_amend(BlockNode *bs, json_t *opts, bool force, GError **errp);

/* measure.c */
bool qcow2_measure(json_t *opts, BlockNode *in, uint64_t size,
                   BlockMeasureInfo *out, GError **errp);
bool qcow2_make_empty(BlockNode *bs, GError **errp);

#endif
