/*
 * Starting the block jobs (blockdev/jobs/): each function checks its
 * arguments, takes what it needs on the graph, creates the job and starts
 * it.  Main thread.  The QMP layer maps its commands onto these.
 */
#ifndef FERRY_BLOCKDEV_JOBS_H
#define FERRY_BLOCKDEV_JOBS_H

#include "blockdev/block.h"
#include "blockdev/job.h"

/* What every job-starting command has. */
typedef struct BlockJobCommon {
    const char *job_id;          /* required here; QMP defaults it */
    int64_t speed;               /* bytes/s, 0: unlimited */
    bool auto_finalize;
    bool auto_dismiss;
    BlockErrorPolicy on_source_error;   /* stream/commit: on-error */
    BlockErrorPolicy on_target_error;
} BlockJobCommon;

/* Copy the chain between base (exclusive; NULL: all) and top into top. */
BlockJob *block_stream_start(const BlockJobCommon *c, BlockNode *top,
                             BlockNode *base, const char *backing_file,
                             GError **errp);

/*
 * Merge top..base into base.  If top is the active layer (no overlay),
 * the job is a mirror into base: ready, then completed by the user.
 */
BlockJob *block_commit_start(const BlockJobCommon *c, BlockNode *top,
                             BlockNode *base, const char *backing_file,
                             GError **errp);

typedef enum {
    BLOCK_SYNC_TOP,
    BLOCK_SYNC_FULL,
    BLOCK_SYNC_NONE,
    BLOCK_SYNC_INCREMENTAL,
    BLOCK_SYNC_BITMAP,
} BlockSyncMode;

typedef enum {
    BLOCK_BITMAP_SYNC_ON_SUCCESS,
    BLOCK_BITMAP_SYNC_NEVER,
    BLOCK_BITMAP_SYNC_ALWAYS,
} BlockBitmapSyncMode;

bool block_parse_sync_mode(const char *s, BlockSyncMode *out, GError **errp);
bool block_parse_bitmap_sync_mode(const char *s, BlockBitmapSyncMode *out,
                                  GError **errp);

/*
 * Mirror source to target (sync full/top/none), then pivot on complete.
 * write_blocking: copy-mode=write-blocking, each write to source reaches
 * target before it completes.
 */
BlockJob *block_mirror_start(const BlockJobCommon *c, BlockNode *source,
                             BlockNode *target, BlockSyncMode sync,
                             uint32_t granularity, int64_t buf_size,
                             bool write_blocking, GError **errp);

/* Point-in-time copy of source into target. bitmap: a bitmap of source. */
BlockJob *block_backup_start(const BlockJobCommon *c, BlockNode *source,
                             BlockNode *target, BlockSyncMode sync,
                             const char *bitmap, BlockBitmapSyncMode bmode,
                             GError **errp);

#endif
