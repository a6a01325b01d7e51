/*
 * Private to the job drivers in blockdev/jobs/: the helpers they share
 * (range locks, holding a node with declared permissions, copying a range
 * with zero detection) and each driver's constructor.
 */
#ifndef FERRY_BLOCKDEV_JOBS_INTERNAL_H
#define FERRY_BLOCKDEV_JOBS_INTERNAL_H

#include "blockdev/bitmap.h"
#include "blockdev/block.h"
#include "blockdev/job.h"
#include "blockdev/jobs.h"

/* -- util.c ----------------------------------------------------------------- */

/*
 * A set of locked byte ranges: lock waits until no locked range overlaps.
 * Guest writes and a job's copies of the same bytes take turns through it.
 */
typedef struct RangeLock {
    GMutex lock;
    GCond cond;
    GList *held;                 /* JobRange*; lock */
} RangeLock;

typedef struct JobRange {
    int64_t start;
    int64_t end;                 /* exclusive */
} JobRange;

void range_lock_init(RangeLock *rl);
void range_lock_destroy(RangeLock *rl);
JobRange *range_lock(RangeLock *rl, int64_t start, int64_t end);
void range_unlock(RangeLock *rl, JobRange *r);

/* A job's hold on a node: permissions declared as a user of it. */
typedef struct JobNode {
    BlockNode *bs;               /* a reference while attached */
    BlockUser user;
    bool attached;
} JobNode;

bool job_node_attach(JobNode *jn, BlockNode *bs, const char *job_id,
                     const char *role, uint32_t perm, uint32_t shared,
                     GError **errp);
void job_node_detach(JobNode *jn);
/*
 * False, with the error, if bs already carries a job's write hook (a
 * node has one: backup's copy-before-write, stream's serialisation,
 * mirror's write-blocking copy).
 */
bool job_write_hook_free(BlockNode *bs, GError **errp);

/*
 * Copy [off, off+len) from src to dst through buf (>= len bytes): ranges
 * that read as zeroes become zero writes, or nothing where dst already
 * reads as zeroes.  base limits the source chain (NULL: whole chain).
 * Returns 0, or -errno with *failed_read telling which side failed.
 */
int job_copy_range(BlockNode *src, BlockNode *base, BlockNode *dst,
                   int64_t off, int64_t len, void *buf, uint32_t wflags,
                   bool *failed_read);
/* True if [off, off+len) of bs reads as zeroes (by block status). */
bool job_reads_zero(BlockNode *bs, int64_t off, int64_t len);

/* The node whose backing child is bs, or NULL. */
BlockNode *job_find_overlay(BlockNode *bs);

/* -- mirror.c --------------------------------------------------------------- */

/* Active commit: a mirror of top into base, ready, then pivot to base. */
BlockJob *block_commit_active_start(const BlockJobCommon *c, BlockNode *top,
                                    BlockNode *base, GError **errp);

#endif
