/*
 * The contract between the block graph and a driver: one const BlockDriver
 * table per driver, listed in blockdev/drivers.c.
 *
 * Concurrency: the request callbacks (pread … block_status) are called from
 * any thread, concurrently, with no graph lock held.  A driver guards its
 * metadata with its own lock and never holds it across data I/O.  The
 * control callbacks (open, close, truncate, snapshot_*, check, amend,
 * reopen) are called with the node drained: no request is in flight.
 *
 * What the graph checks before calling a request callback (drivers may
 * assert these): offset >= 0, bytes >= 0, offset + bytes does not overflow,
 * bytes <= BLOCK_MAX_REQUEST, the node was opened with BLOCK_O_RDWR for
 * writes, and offset/bytes/buffer are aligned to request_alignment.
 * Reads and writes past the end of a protocol node are allowed (files
 * grow); BlockBackend stops guests and tools at the node's length.
 */
#ifndef FERRY_BLOCKDEV_DRIVER_H
#define FERRY_BLOCKDEV_DRIVER_H

#include "blockdev/block.h"

/* Largest single request the graph passes down; callers split larger. */
#define BLOCK_MAX_REQUEST (INT64_C(1) << 30)

typedef enum {
    BLOCK_DRIVER_PROTOCOL,   /* talks to storage: file, nbd, null-co */
    BLOCK_DRIVER_FORMAT,     /* interprets a child: raw, qcow2 */
    BLOCK_DRIVER_FILTER,     /* passes through to one child */
} BlockDriverKind;

/* Capability flags (BlockDriver.caps). */
#define BLOCK_CAP_BACKING       (1u << 0)  /* can have a backing file */
#define BLOCK_CAP_SNAPSHOTS     (1u << 1)  /* internal snapshots */
#define BLOCK_CAP_BITMAPS       (1u << 2)  /* persistent dirty bitmaps */
#define BLOCK_CAP_COMPRESSED    (1u << 3)  /* BLOCK_REQ_WRITE_COMPRESSED */
#define BLOCK_CAP_ZERO_INIT     (1u << 4)  /* a new image reads as zeroes */
#define BLOCK_CAP_FUA           (1u << 5)  /* honours BLOCK_REQ_FUA itself */
#define BLOCK_CAP_STABLE_MAP    (1u << 6)  /* mapped offsets never move while open */

/* A creation option, for validation and for "-o help". */
typedef enum {
    BLOCK_OPT_STRING,
    BLOCK_OPT_SIZE,
    BLOCK_OPT_BOOL,
    BLOCK_OPT_NUMBER,
} BlockOptType;

typedef struct BlockCreateOpt {
    const char *name;
    BlockOptType type;
    const char *help;
} BlockCreateOpt;

/* What "info" shows beyond the generic fields. */
typedef struct BlockImageInfo {
    int64_t cluster_size;        /* 0 if the format has none */
    bool dirty_flag;             /* image marked dirty (lazy refcounts) */
    bool encrypted;
    json_t *format_specific;     /* {"type": "qcow2", "data": {…}}, owned */
} BlockImageInfo;

/* Results of check, with qemu-img check's names. */
typedef struct BlockCheckResult {
    int64_t corruptions;
    int64_t leaks;
    int64_t check_errors;
    int64_t corruptions_fixed;
    int64_t leaks_fixed;
    int64_t image_end_offset;    /* bytes; 0 if unknown */
    int64_t total_clusters;
    int64_t allocated_clusters;
    int64_t fragmented_clusters;
    int64_t compressed_clusters;
    bool has_clusters;           /* the four cluster counts are meaningful */
} BlockCheckResult;

#define BLOCK_FIX_LEAKS   (1u << 0)
#define BLOCK_FIX_ERRORS  (1u << 1)

typedef struct BlockSnapshotInfo {
    char *id;                    /* "1", "2", … */
    char *name;
    uint64_t vm_state_size;      /* bytes */
    uint32_t date_sec;
    uint32_t date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t icount;             /* UINT64_MAX if not recorded */
    uint64_t disk_size;          /* virtual size when taken, bytes */
} BlockSnapshotInfo;

void block_snapshot_info_clear(BlockSnapshotInfo *sn);

/* qemu-img measure's answer. */
typedef struct BlockMeasureInfo {
    uint64_t required;           /* bytes for the data as it is */
    uint64_t fully_allocated;    /* bytes with every cluster allocated */
    uint64_t bitmaps;            /* bytes for persistent bitmaps; 0 if none */
    bool has_bitmaps;
} BlockMeasureInfo;

struct BlockDriver {
    const char *name;                 /* "qcow2", "file", … */
    BlockDriverKind kind;
    uint32_t caps;                    /* BLOCK_CAP_* */
    size_t state_size;                /* zeroed, freed by the graph */
    const char *const *open_opts;     /* runtime options it accepts; NULL-end */
    const BlockCreateOpt *create_opts;/* creation options; {NULL}-terminated */
    const char *const *protocols;     /* URI prefixes it owns ("nbd://") */

    /*
     * Format probing: a score 0..100 for the first bytes of a file
     * (buf has at least 512 bytes, zero-padded).  Formats only.
     */
    int (*probe)(const uint8_t *buf, size_t len, const char *filename);

    /*
     * Open: options are the node's options (driver, node-name and flags
     * already consumed by the graph).  Formats open their children with
     * block_node_open_child().  Return false with errp set.
     */
    bool (*open)(BlockNode *bs, json_t *options, GError **errp);
    /* Release everything open acquired (children are detached by graph). */
    void (*close)(BlockNode *bs);

    /*
     * Create an image at filename with options (JSON object; "size" is
     * always present, in bytes).  Formats create their protocol file with
     * block_create_file() first.
     */
    bool (*create)(const char *filename, json_t *opts, GError **errp);

    /* -- data path (see the header comment for the checks already made) -- */
    int (*pread)(BlockNode *bs, int64_t offset, int64_t bytes, void *buf,
                 uint32_t flags);
    int (*pwrite)(BlockNode *bs, int64_t offset, int64_t bytes,
                  const void *buf, uint32_t flags);
    /* Optional: NULL means the graph writes a zeroed buffer. */
    int (*pwrite_zeroes)(BlockNode *bs, int64_t offset, int64_t bytes,
                         uint32_t flags);
    /* Optional: NULL means discard is ignored (success). */
    int (*pdiscard)(BlockNode *bs, int64_t offset, int64_t bytes);
    /*
     * Optional: write back the driver's caches and make them durable; the
     * graph then flushes the node's file and data-file children.
     */
    int (*flush)(BlockNode *bs);
    /*
     * Optional: status of this layer only (flags as block_node_block_status).
     * NULL: protocols report DATA|ALLOCATED, formats pass through to file.
     */
    int (*block_status)(BlockNode *bs, int64_t offset, int64_t bytes,
                        int64_t *pnum, int64_t *map, BlockNode **file);

    int64_t (*getlength)(BlockNode *bs);
    /* Optional: host bytes used; NULL means the sum over the children. */
    int64_t (*allocated_size)(BlockNode *bs);

    /* -- control path: node drained -- */
    bool (*truncate)(BlockNode *bs, int64_t size, bool exact,
                     BlockPrealloc prealloc, GError **errp);
    /* Apply new flags (RDWR <-> read-only); children are reopened first. */
    bool (*reopen)(BlockNode *bs, uint32_t new_flags, GError **errp);
    /*
     * Optional: a one-pass reader is about to read this read-only node
     * once; bypass the page cache if the data is not in it.  True if the
     * node now reads uncached.  Node drained.
     */
    bool (*read_uncached_if_cold)(BlockNode *bs);
    /*
     * Optional, protocols: a descriptor whose bytes at the mapped offsets
     * are the node's, readable through the page cache (splice), or -1.
     */
    int (*host_fd)(BlockNode *bs);
    /*
     * What this node needs on a child when its users hold perm/shared.
     * NULL: block_default_child_perm().  Raw points at the filter rule.
     */
    void (*child_perm)(BlockNode *bs, BlockChildRole role, uint32_t perm,
                       uint32_t shared, uint32_t *nperm, uint32_t *nshared);
    /* Permissions changed (file: update the OFD locks). */
    bool (*set_perm)(BlockNode *bs, uint32_t perm, uint32_t shared,
                     GError **errp);

    bool (*get_info)(BlockNode *bs, BlockImageInfo *info, GError **errp);
    /* Returns false only if the check could not run at all. */
    bool (*check)(BlockNode *bs, BlockCheckResult *res, uint32_t fix,
                  GError **errp);
    bool (*amend)(BlockNode *bs, json_t *opts, bool force, GError **errp);
    bool (*measure)(json_t *opts, BlockNode *in, uint64_t size,
                    BlockMeasureInfo *out, GError **errp);
    /* Rewrite the backing file name in the image header (rebase, commit). */
    bool (*change_backing_file)(BlockNode *bs, const char *backing_file,
                                const char *backing_fmt, GError **errp);
    /*
     * Optional: make every cluster unallocated so reads fall through to the
     * backing file (qemu-img commit empties the overlay with it).
     */
    bool (*make_empty)(BlockNode *bs, GError **errp);

    bool (*snapshot_create)(BlockNode *bs, BlockSnapshotInfo *sn,
                            GError **errp);
    bool (*snapshot_goto)(BlockNode *bs, const char *id_or_name,
                          GError **errp);
    bool (*snapshot_delete)(BlockNode *bs, const char *id, const char *name,
                            GError **errp);
    /* Returns the count (>= 0) and a g_new array in *list, or -1 on error. */
    int (*snapshot_list)(BlockNode *bs, BlockSnapshotInfo **list,
                         GError **errp);

    /*
     * Persistent dirty bitmaps: the driver loads them into the node's
     * bitmap list at open (block_dirty_bitmap_create()), and stores the
     * persistent ones at close or on bitmaps_store.
     */
    bool (*bitmaps_store)(BlockNode *bs, GError **errp);
    bool (*bitmap_can_store)(BlockNode *bs, const char *name,
                             uint32_t granularity, GError **errp);
    bool (*bitmap_remove_persistent)(BlockNode *bs, const char *name,
                                     GError **errp);
};

/* blockdev/drivers.c */
const BlockDriver *block_driver_find(const char *name);
const BlockDriver *block_driver_for_filename(const char *filename);
/* Probe the format of a protocol node: raw when nothing else matches;
 * NULL with errp set for formats ferry recognises but cannot open. */
const BlockDriver *block_driver_probe(BlockNode *file, GError **errp);
extern const BlockDriver *const block_drivers[];

/* Create the protocol-level file (or export) for filename; opts: size,
 * preallocation (and protocol-specific ones). */
bool block_create_file(const char *filename, json_t *opts, GError **errp);
/* Create an image of format fmt ("raw", "qcow2") at filename. */
bool block_create(const char *fmt, const char *filename, json_t *opts,
                  GError **errp);

/* Generic helpers drivers can point at. */
int block_generic_pread_zero_after(BlockNode *bs, int64_t offset, int64_t bytes,
                                   void *buf);

#endif
