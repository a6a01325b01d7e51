/*
 * Dirty bitmaps: one bit per `granularity` bytes of a node, set by every
 * write that goes through the graph while the bitmap is enabled.  Marking is
 * lock-free (atomic OR on words); the list of bitmaps on a node is guarded
 * by the node's bitmaps_lock.  Persistent bitmaps are loaded and stored by
 * the format driver (qcow2's bitmaps extension).
 */
#ifndef FERRY_BLOCKDEV_BITMAP_H
#define FERRY_BLOCKDEV_BITMAP_H

#include <stdbool.h>
#include <stdint.h>

#include "blockdev/block.h"

struct BlockDirtyBitmap {
    char *name;                 /* NULL: a job's anonymous bitmap */
    BlockNode *node;            /* not a reference: the node owns us */
    uint32_t granularity;       /* bytes per bit, a power of two >= 512 */
    int64_t size;               /* bytes of the node covered */
    uint64_t *bits;             /* DIV_ROUND_UP(bits, 64) words; atomic */
    uint64_t nb_bits;
    bool enabled;               /* writes mark it */
    bool persistent;            /* stored in the image at close */
    bool inconsistent;          /* loaded from an image not closed cleanly */
    bool busy;                  /* used by a job or an export */
    bool readonly;              /* stored in a read-only image */
};

/* Default granularity, as QEMU: 64 KiB (or the cluster size if larger). */
#define BLOCK_BITMAP_DEFAULT_GRANULARITY 65536u

BlockDirtyBitmap *block_dirty_bitmap_create(BlockNode *bs, const char *name,
                                            uint32_t granularity,
                                            GError **errp);
BlockDirtyBitmap *block_dirty_bitmap_find(BlockNode *bs, const char *name);
/* Remove from the node (and, if persistent, from the image) and free. */
bool block_dirty_bitmap_remove(BlockNode *bs, const char *name,
                               GError **errp);
/* Remove one bitmap from its node and free it, leaving the image alone
 * (jobs' anonymous bitmaps: created with name NULL, never stored). */
void block_dirty_bitmap_release(BlockDirtyBitmap *bm);
/* Free every bitmap of a node without touching the image (node close). */
void block_dirty_bitmaps_release(BlockNode *bs);

void block_dirty_bitmap_set(BlockDirtyBitmap *bm, int64_t offset,
                            int64_t bytes);
void block_dirty_bitmap_reset(BlockDirtyBitmap *bm, int64_t offset,
                              int64_t bytes);
void block_dirty_bitmap_clear(BlockDirtyBitmap *bm);
bool block_dirty_bitmap_get(BlockDirtyBitmap *bm, int64_t offset);
/* dst |= src; both must have the same granularity and size. */
bool block_dirty_bitmap_merge(BlockDirtyBitmap *dst, BlockDirtyBitmap *src,
                              GError **errp);
uint64_t block_dirty_bitmap_count(BlockDirtyBitmap *bm);   /* dirty bytes */
/*
 * Next dirty (want_dirty) or clean extent at or after offset: returns the
 * start, or -1 if none before end; *len gets its length (clipped to end).
 */
int64_t block_dirty_bitmap_next_extent(BlockDirtyBitmap *bm, int64_t offset,
                                       int64_t end, bool want_dirty,
                                       int64_t *len);
/* Grow or shrink with the node (block_node_truncate calls this). */
bool block_dirty_bitmap_resize(BlockDirtyBitmap *bm, int64_t size);

/* Called by the graph after every successful write-like request. */
void block_dirty_bitmaps_mark(BlockNode *bs, int64_t offset, int64_t bytes);

#endif
