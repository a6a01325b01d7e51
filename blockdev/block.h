/*
 * The block graph: nodes, the edges between them (children), and the
 * synchronous, thread-safe request API every user of a disk goes through.
 * Users outside blockdev/ normally hold a BlockBackend (blockdev/backend.h)
 * rather than a raw node, so their permissions are checked.
 *
 * Graph picture for "ferry img info top.qcow2" where top has a backing file:
 *
 *     BlockBackend --> [qcow2 top] --file-->    [file top.qcow2]
 *                           |
 *                        backing --> [qcow2 base] --file--> [file base.qcow2]
 */
#ifndef FERRY_BLOCKDEV_BLOCK_H
#define FERRY_BLOCKDEV_BLOCK_H

#include <stdbool.h>
#include <stdint.h>

#include <glib.h>
#include <jansson.h>

typedef struct BlockNode BlockNode;
typedef struct BlockChild BlockChild;
typedef struct BlockDriver BlockDriver;
typedef struct BlockDirtyBitmap BlockDirtyBitmap;

/* Open flags (BlockNode.open_flags). */
#define BLOCK_O_RDWR         (1u << 0)  /* open for writing */
#define BLOCK_O_NOCACHE      (1u << 1)  /* O_DIRECT on file nodes */
#define BLOCK_O_NO_BACKING   (1u << 2)  /* do not open the backing chain */
#define BLOCK_O_FORCE_SHARE  (1u << 3)  /* -U: take no locks, share all */
#define BLOCK_O_CHECK        (1u << 4)  /* opened by check: tolerate damage */
#define BLOCK_O_UNMAP        (1u << 5)  /* discard=unmap: pass discards down */
#define BLOCK_O_PROBED       (1u << 6)  /* format was guessed, not given */
#define BLOCK_O_NO_FLUSH     (1u << 7)  /* cache=unsafe: flush is a no-op */
#define BLOCK_O_NO_LOCK      (1u << 8)  /* locking=off on file nodes */
#define BLOCK_O_NO_BITMAPS   (1u << 9)  /* do not load persistent bitmaps */
#define BLOCK_O_NO_IO        (1u << 10) /* metadata only (info): no data I/O */

/*
 * Permissions, with QEMU's bit values: the file driver turns them into OFD
 * locks at the same byte offsets, so ferry and QEMU see each other's use.
 */
#define BLOCK_PERM_CONSISTENT_READ  (1u << 0)
#define BLOCK_PERM_WRITE            (1u << 1)
#define BLOCK_PERM_WRITE_UNCHANGED  (1u << 2)
#define BLOCK_PERM_RESIZE           (1u << 3)
#define BLOCK_PERM_ALL              0xfu
#define BLOCK_PERM_COUNT            4

/* Request flags for the data path. */
#define BLOCK_REQ_FUA               (1u << 0)  /* durable on return */
#define BLOCK_REQ_MAY_UNMAP         (1u << 1)  /* zeroes may become holes */
#define BLOCK_REQ_NO_FALLBACK       (1u << 2)  /* fast zero or -ENOTSUP */
#define BLOCK_REQ_WRITE_COMPRESSED  (1u << 3)  /* qcow2 -c: whole clusters */
#define BLOCK_REQ_NO_BITMAPS        (1u << 4)  /* do not mark dirty bitmaps */
#define BLOCK_REQ_JOB               (1u << 5)  /* a job's own: skips write_hook */

/* Block status flags (return value of block_node_block_status()). */
#define BLOCK_STATUS_DATA          (1u << 0)  /* reads come from this range */
#define BLOCK_STATUS_ZERO          (1u << 1)  /* reads return zeroes */
#define BLOCK_STATUS_OFFSET_VALID  (1u << 2)  /* *map is a host offset */
#define BLOCK_STATUS_ALLOCATED     (1u << 3)  /* decided by this layer */
#define BLOCK_STATUS_RAW           (1u << 4)  /* ask *file at *map (filters) */
#define BLOCK_STATUS_COMPRESSED    (1u << 5)  /* qcow2 compressed cluster */
#define BLOCK_STATUS_EOF           (1u << 6)  /* range reaches end of node */

typedef enum {
    BLOCK_CHILD_FILE,       /* protocol under a format: "file" */
    BLOCK_CHILD_BACKING,    /* copy-on-write base: "backing" */
    BLOCK_CHILD_DATA_FILE,  /* qcow2 external data: "data-file" */
    BLOCK_CHILD_FILTERED,   /* the child of a filter driver: "file" */
} BlockChildRole;

typedef enum {
    BLOCK_PREALLOC_OFF,
    BLOCK_PREALLOC_METADATA,
    BLOCK_PREALLOC_FALLOC,
    BLOCK_PREALLOC_FULL,
} BlockPrealloc;

/* A user of a node: a parent's child edge or a BlockBackend. */
typedef struct BlockUser BlockUser;
struct BlockUser {
    char *what;                 /* "node 'top' (as its file)"; owned */
    uint32_t perm;
    uint32_t shared;
    /*
     * For block_node_replace(): where the user holds its node (NULL: it
     * cannot be moved), and how to hold and release its new requests
     * (begin waits for those in flight).  Child edges drain the parent;
     * backends count their own requests.
     */
    BlockNode **slot;
    void (*quiesce)(BlockUser *u, bool begin);
};

/*
 * A job's hook around write-like requests to a node (backup's
 * copy-before-write, stream's serialisation against guest writes).  begin
 * runs inside the request before the driver sees it and may fail it; end
 * runs after, with begin's token.  Requests flagged BLOCK_REQ_JOB skip it.
 */
typedef struct BlockWriteHook BlockWriteHook;
struct BlockWriteHook {
    int (*begin)(BlockWriteHook *h, BlockNode *bs, int64_t offset,
                 int64_t bytes, void **token);
    /*
     * Optional: a pwrite's data, after the driver wrote it (ret: its
     * result) and dirty bitmaps were marked, before end.  Not called for
     * zeroes or discard.  Mirror's write-blocking mode copies it here.
     */
    void (*written)(BlockWriteHook *h, void *token, const void *buf,
                    int ret);
    void (*end)(BlockWriteHook *h, void *token);
};

struct BlockChild {
    char *name;                 /* "file", "backing", "data-file" */
    BlockChildRole role;
    BlockNode *parent;
    BlockNode *node;            /* holds one reference */
    BlockUser user;             /* this edge as a user of node: perm, shared */
};

struct BlockNode {
    char *node_name;            /* unique; "#block<N>" when not given */
    const BlockDriver *drv;
    void *opaque;               /* drv->state_size bytes, zeroed */
    char *filename;             /* what the user named, or the file's path */
    json_t *options;            /* options the node was opened with; owned */
    uint32_t open_flags;        /* BLOCK_O_*; changes only on reopen */
    uint32_t request_alignment; /* bytes; 1, or the O_DIRECT block size */
    uint32_t perm;              /* union of what its users hold */
    uint32_t shared;            /* intersection of what its users share */

    BlockChild *file;           /* NULL for protocol drivers */
    BlockChild *backing;        /* NULL if none (or not opened) */
    BlockChild *data_file;      /* qcow2 external data file */
    char *backing_file;         /* as the image header names it, or NULL */
    char *backing_format;       /* as the image header names it, or NULL */

    /* graph bookkeeping: guarded by the graph lock (block_graph_lock()) */
    int refcnt;
    GPtrArray *users;           /* BlockUser*: parents and backends */

    /* quiescing (drain): see block_node_drain_begin() */
    int in_flight;              /* atomic: requests inside the driver */
    int quiesce_counter;        /* atomic: >0 blocks new requests */
    GMutex drain_lock;
    GCond drain_cond;
    GMutex rmw_lock;            /* serialises unaligned (bounced) writes */

    /* dirty bitmaps: guarded by bitmaps_lock */
    GMutex bitmaps_lock;
    GList *bitmaps;             /* BlockDirtyBitmap* */

    /* at most one; changed only while drained (block_node_set_write_hook) */
    BlockWriteHook *write_hook;
};

/* -- opening and the graph ------------------------------------------------ */

/*
 * Open a node from a spec as the user typed it: a filename (format probed
 * unless fmt is given), "nbd://…" and other URIs, "json:{…}", or
 * "driver=qcow2,file.filename=…" options.  extra (may be NULL) is merged
 * over the spec's options.  perm/shared: what the caller will do.
 */
BlockNode *block_node_open(const char *spec, const char *fmt, json_t *extra,
                           uint32_t flags, uint32_t perm, uint32_t shared,
                           GError **errp);

/* Open from an options object ({"driver": …, …}); borrows opts. */
BlockNode *block_node_open_opts(json_t *opts, uint32_t flags, uint32_t perm,
                                uint32_t shared, GError **errp);

/* Turn a spec string into options; is_image_opts forces key=value form. */
json_t *block_spec_to_opts(const char *spec, bool is_image_opts, GError **errp);

/*
 * For drivers: open (or reference, if the option is a node name) the child
 * named `name` from options[name].  `def_filename` is used when the option
 * is absent (a format driver's file child inherits "filename").
 * Returns NULL with errp set, or NULL without errp if the option is absent
 * and there is no default.
 */
BlockChild *block_node_open_child(BlockNode *parent, json_t *options,
                                  const char *name, BlockChildRole role,
                                  const char *def_filename,
                                  const char *def_format, GError **errp);

/* Attach an open node as child (takes a reference), checking permissions. */
BlockChild *block_node_attach_child(BlockNode *parent, BlockNode *child,
                                    const char *name, BlockChildRole role,
                                    GError **errp);
void block_node_detach_child(BlockNode *parent, BlockChild *c);

/* Replace the backing child (NULL: none). Used by rebase and commit. */
bool block_node_set_backing(BlockNode *bs, BlockNode *backing, GError **errp);

/*
 * What a node needs on a child of `role` when its own users hold
 * perm/shared (QEMU's rules): a format reads its file consistently, writes
 * and resizes it when writable, and never lets others write or resize it;
 * a backing file is only read; a filter passes its users' needs through.
 */
void block_default_child_perm(BlockNode *bs, BlockChildRole role,
                              uint32_t perm, uint32_t shared,
                              uint32_t *nperm, uint32_t *nshared);
void block_filter_child_perm(BlockNode *bs, BlockChildRole role,
                             uint32_t perm, uint32_t shared,
                             uint32_t *nperm, uint32_t *nshared);

void block_node_ref(BlockNode *bs);
void block_node_unref(BlockNode *bs);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(BlockNode, block_node_unref)

/* Add/remove a user; adding fails with FERRY_ERROR_LOCKED on conflict. */
bool block_node_add_user(BlockNode *bs, BlockUser *user, GError **errp);
void block_node_remove_user(BlockNode *bs, BlockUser *user);
/* Change a user's permissions in place (re-checked; file locks updated). */
bool block_node_update_user(BlockNode *bs, BlockUser *user, uint32_t perm,
                            uint32_t shared, GError **errp);

BlockNode *block_node_find(const char *node_name);
/* All named nodes, for QMP query-named-block-nodes; caller unrefs each. */
GPtrArray *block_node_list(void);

/*
 * Move the users of `from` (parents' edges and backends) over to `to`, as
 * mirror and active commit do when they complete; `skip` (may be NULL)
 * stays, and so do edges whose parent is `to` itself.  The caller has
 * quiesced from's users (block_node_quiesce_users), so no request is in
 * flight through a slot that changes.  Permissions are checked on `to`
 * first; on failure nothing moved.
 */
bool block_node_replace(BlockNode *from, BlockNode *to, BlockUser *skip,
                        GError **errp);
/*
 * Hold new requests from every user of bs but skip, waiting for those in
 * flight; returns the users held, for block_users_unquiesce() (which they
 * need even after block_node_replace moved them).
 */
GPtrArray *block_node_quiesce_users(BlockNode *bs, BlockUser *skip);
void block_users_unquiesce(GPtrArray *held);
/* Install (hook) or remove (NULL) the write hook; drains bs around it. */
void block_node_set_write_hook(BlockNode *bs, BlockWriteHook *hook);

/* Reopen read-write or read-only (commit needs its base writable). */
bool block_node_reopen(BlockNode *bs, uint32_t new_flags, GError **errp);
/*
 * For one-pass readers (img convert): every read-only file under bs whose
 * data is mostly not in the page cache switches to O_DIRECT, so a cold
 * image is read once by DMA instead of into the cache and copied out.
 * Returns how many nodes switched.  Nothing changes for warm files, written
 * nodes, or where O_DIRECT is not supported.
 */
int block_node_read_uncached_if_cold(BlockNode *bs);

/*
 * Zero-copy read: move [offset, offset+bytes) of bs into the pipe pipe_wr
 * as page references (splice), without copying the data.  Only where the
 * range is plain data at a fixed place in a host file (raw over file:
 * BLOCK_CAP_STABLE_MAP all the way down); prefix_len bytes of prefix (a
 * protocol header, say) go into the pipe first, copied, once the range is
 * known to qualify, so the caller can send header and data with one
 * splice.  Prefix and bytes must fit in the pipe, which should be empty.
 * Returns 0 with every byte in the pipe; -ENOTSUP where the layout does
 * not allow it (nothing was moved: use pread); other -errno with possibly
 * some bytes in the pipe, which the caller discards.
 */
int block_node_splice_read(BlockNode *bs, int64_t offset, int64_t bytes,
                           int pipe_wr, const void *prefix,
                           size_t prefix_len);

/* -- data path: 0 or -errno ----------------------------------------------- */

int block_node_pread(BlockNode *bs, int64_t offset, int64_t bytes, void *buf,
                     uint32_t flags);
int block_node_pwrite(BlockNode *bs, int64_t offset, int64_t bytes,
                      const void *buf, uint32_t flags);
int block_node_pwrite_zeroes(BlockNode *bs, int64_t offset, int64_t bytes,
                             uint32_t flags);
int block_node_pdiscard(BlockNode *bs, int64_t offset, int64_t bytes);
int block_node_flush(BlockNode *bs);
int64_t block_node_getlength(BlockNode *bs);        /* bytes or -errno */
int64_t block_node_allocated_size(BlockNode *bs);   /* host bytes or -errno */

/*
 * Status of [offset, offset+bytes) in this node alone: returns
 * BLOCK_STATUS_* flags (>= 0) and sets *pnum (> 0 unless bytes == 0) to how
 * much of the range has that status.  *map and *file, if not NULL, get the
 * host offset and node when BLOCK_STATUS_OFFSET_VALID.
 */
int block_node_block_status(BlockNode *bs, int64_t offset, int64_t bytes,
                            int64_t *pnum, int64_t *map, BlockNode **file);

/*
 * Status through the backing chain from bs down to (not including) base:
 * ALLOCATED is set if some layer above base decides the range; *depth gets
 * the layer that did (0 = bs), or the chain length when none did.
 */
int block_node_block_status_above(BlockNode *bs, BlockNode *base,
                                  int64_t offset, int64_t bytes,
                                  int64_t *pnum, int64_t *map,
                                  BlockNode **file, int *depth);

/* -- control path --------------------------------------------------------- */

bool block_node_truncate(BlockNode *bs, int64_t size, bool exact,
                         BlockPrealloc prealloc, GError **errp);

/* Wait for requests in flight and hold new ones until drain_end. */
void block_node_drain_begin(BlockNode *bs);
void block_node_drain_end(BlockNode *bs);

/* "qcow2", "raw", …; the format of a node (its driver's name). */
const char *block_node_format(BlockNode *bs);
/* The protocol node at the bottom of the file chain (for disk size). */
BlockNode *block_node_bottom(BlockNode *bs);
/* The node whose data bs presents: bs itself, or a filter's child. */
BlockNode *block_node_skip_filters(BlockNode *bs);
/* The backing node, or NULL. */
BlockNode *block_node_backing(BlockNode *bs);
/* Length of the backing chain below bs (0 when it has none). */
int block_node_chain_length(BlockNode *bs);

/*
 * A filename that reopens this node: the plain path when its options are
 * only a filename and a format, else "json:{…}".  Caller frees.
 */
char *block_node_full_filename(BlockNode *bs);

/* Resolve a backing file name relative to the overlay's directory. */
char *block_backing_path(const char *overlay_filename, const char *backing);

/* Parse "off|metadata|falloc|full". */
bool block_parse_prealloc(const char *s, BlockPrealloc *out, GError **errp);
const char *block_prealloc_name(BlockPrealloc p);

/* Global graph lock for topology changes; not held during I/O. */
void block_graph_lock(void);
void block_graph_unlock(void);

#endif
