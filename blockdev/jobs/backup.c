/*
 * blockdev-backup: a point-in-time copy of a node that stays in use.  A
 * "to copy" bitmap says which granules still hold their old data and must
 * reach the target; the job copies them in the background, and a write
 * hook on the source copies a granule's old data first when a guest writes
 * it (copy-before-write).  sync=bitmap/incremental start from a user bitmap,
 * which the bitmap-mode then updates.  specs/qmp-block-jobs.md 3,
 * "drive-backup / blockdev-backup".
 *
 * Invariant: a granule's bit is cleared only after its old data is on the
 * target, and only under the range lock, which the guest write to that
 * granule also holds until its own write is done.
 */
#include "config.h"

#include <errno.h>
#include <string.h>

#include "blockdev/driver.h"
#include "blockdev/jobs/internal.h"
#include "common/error.h"

typedef struct BackupJob {
    BlockJob job;
    JobNode source;
    JobNode target;
    BlockSyncMode sync;
    BlockDirtyBitmap *to_copy;   /* anonymous, disabled, on source */
    BlockDirtyBitmap *saved;     /* the user bitmap as it was (restore) */
    BlockDirtyBitmap *user;      /* the user's bitmap, busy while we run */
    BlockBitmapSyncMode bmode;
    int64_t granule;
    RangeLock ranges;
    BlockWriteHook hook;
    bool hooked;
} BackupJob;

bool block_parse_sync_mode(const char *s, BlockSyncMode *out, GError **errp)
{
    static const char *const names[] = { "top", "full", "none", "incremental",
                                         "bitmap" };

    for (int i = 0; i < 5; i++) {
        if (!g_strcmp0(s, names[i])) {
            *out = (BlockSyncMode)i;
            return true;
        }
    }
    ferry_error_setg(errp, "Parameter 'sync' does not accept value '%s'",
                     s ? s : "");
    return false;
}

bool block_parse_bitmap_sync_mode(const char *s, BlockBitmapSyncMode *out,
                                  GError **errp)
{
    static const char *const names[] = { "on-success", "never", "always" };

    for (int i = 0; i < 3; i++) {
        if (!g_strcmp0(s, names[i])) {
            *out = (BlockBitmapSyncMode)i;
            return true;
        }
    }
    ferry_error_setg(errp, "Parameter 'bitmap-mode' does not accept value "
                     "'%s'", s ? s : "");
    return false;
}

/* Range lock held: copy the granules of [start, end) still to copy. */
static int copy_granules(BackupJob *b, int64_t start, int64_t end, void *buf,
                         bool *failed_read)
{
    int64_t off = start, n;

    while ((off = block_dirty_bitmap_next_extent(b->to_copy, off, end, true,
                                                 &n)) >= 0) {
        int ret;
        n = MIN(n, (int64_t)(1 << 20));
        ret = job_copy_range(b->source.bs, NULL, b->target.bs, off, n, buf, 0,
                             failed_read);
        if (ret < 0) {
            return ret;
        }
        block_dirty_bitmap_reset(b->to_copy, off, n);
        block_job_progress_add(&b->job, n);
        off += n;
    }
    return 0;
}

static int cbw_begin(BlockWriteHook *h, BlockNode *bs, int64_t offset,
                     int64_t bytes, void **token)
{
    BackupJob *b = (BackupJob *)((char *)h - offsetof(BackupJob, hook));
    int64_t start = offset - offset % b->granule;
    int64_t end = MIN(((offset + bytes + b->granule - 1) / b->granule) *
                      b->granule, b->to_copy->size);
    JobRange *r;
    void *buf;
    bool failed_read = false;
    int ret = 0;

    r = range_lock(&b->ranges, start, MAX(end, start + 1));
    *token = r;
    if (start < end && block_dirty_bitmap_next_extent(b->to_copy, start, end,
                                                      true, &bytes) >= 0) {
        buf = g_try_malloc(1 << 20);
        ret = buf ? copy_granules(b, start, end, buf, &failed_read) : -ENOMEM;
        g_free(buf);
    }
    if (ret < 0) {
        /* on-cbw-error=break-guest-write, QEMU's default */
        range_unlock(&b->ranges, r);
        *token = NULL;
    }
    return ret;
}

static void cbw_end(BlockWriteHook *h, void *token)
{
    BackupJob *b = (BackupJob *)((char *)h - offsetof(BackupJob, hook));

    if (token) {
        range_unlock(&b->ranges, token);
    }
}

static int backup_run(BlockJob *job)
{
    BackupJob *b = (BackupJob *)job;
    int64_t len = b->to_copy->size, off = 0;
    g_autofree void *buf = g_try_malloc(1 << 20);

    if (!buf) {
        return -ENOMEM;
    }
    if (b->sync == BLOCK_SYNC_NONE) {
        /* fleecing: copy-before-write only, until cancelled */
        while (!block_job_is_cancelled(job)) {
            block_job_pause_point(job);
            block_job_sleep_ns(job, 100 * 1000 * 1000);
        }
        return -ECANCELED;
    }
    for (;;) {
        int64_t n, end;
        JobRange *r;
        bool failed_read = false;
        int ret;
        block_job_pause_point(job);
        if (block_job_is_cancelled(job)) {
            return -ECANCELED;
        }
        off = block_dirty_bitmap_next_extent(b->to_copy, off, len, true, &n);
        if (off < 0) {
            break;
        }
        end = off + MIN(n, (int64_t)(1 << 20));
        r = range_lock(&b->ranges, off, end);
        ret = copy_granules(b, off, end, buf, &failed_read);
        range_unlock(&b->ranges, r);
        if (ret < 0) {
            if (block_job_error_action(job, failed_read, failed_read, ret) ==
                BLOCK_ERROR_ACTION_REPORT) {
                return ret;
            }
            continue;
        }
        block_job_ratelimit(job, end - off);
        off = end;
    }
    return block_node_flush(b->target.bs);
}

/* Update the user's bitmap for the outcome (bitmap-mode). */
static void bitmap_outcome(BackupJob *b, bool success)
{
    if (!b->user) {
        return;
    }
    if (!success || b->bmode == BLOCK_BITMAP_SYNC_NEVER) {
        if (b->bmode == BLOCK_BITMAP_SYNC_ALWAYS) {
            /* what was copied counts as synced; the rest stays dirty */
            block_dirty_bitmap_merge(b->user, b->to_copy, NULL);
        } else {
            block_dirty_bitmap_merge(b->user, b->saved, NULL);
        }
    }
    /* success with on-success/always: user holds only writes since start */
}

static bool backup_prepare(BlockJob *job, GError **errp)
{
    bitmap_outcome((BackupJob *)job, true);
    return true;
}

static void backup_abort(BlockJob *job)
{
    bitmap_outcome((BackupJob *)job, false);
}

static void backup_clean(BlockJob *job)
{
    BackupJob *b = (BackupJob *)job;

    if (b->hooked) {
        block_node_set_write_hook(b->source.bs, NULL);
    }
    if (b->user) {
        b->user->busy = false;
    }
    if (b->saved) {
        block_dirty_bitmap_release(b->saved);
    }
    if (b->to_copy) {
        block_dirty_bitmap_release(b->to_copy);
    }
    range_lock_destroy(&b->ranges);
    job_node_detach(&b->target);
    job_node_detach(&b->source);
}

static const BlockJobDriver backup_job_driver = {
    .type = BLOCK_JOB_TYPE_BACKUP,
    .instance_size = sizeof(BackupJob),
    .run = backup_run,
    .prepare = backup_prepare,
    .abort = backup_abort,
    .clean = backup_clean,
};

/* Mark the granules the sync mode copies; false with errp on failure. */
static bool init_to_copy(BackupJob *b, BlockNode *src, GError **errp)
{
    int64_t len = b->to_copy->size, off = 0;

    if (b->sync == BLOCK_SYNC_NONE || b->sync == BLOCK_SYNC_FULL) {
        block_dirty_bitmap_set(b->to_copy, 0, len);
    } else if (b->sync == BLOCK_SYNC_TOP) {
        while (off < len) {
            int64_t n;
            int st = block_node_block_status(src, off, len - off, &n, NULL,
                                             NULL);
            if (st < 0 || n <= 0) {
                ferry_error_setg_errno(errp, st < 0 ? -st : EIO,
                                       "cannot read the allocation of '%s'",
                                       src->node_name);
                return false;
            }
            if (st & BLOCK_STATUS_ALLOCATED) {
                block_dirty_bitmap_set(b->to_copy, off, n);
            }
            off += n;
        }
    } else {
        block_dirty_bitmap_merge(b->to_copy, b->user, NULL);
    }
    if (b->user && b->sync != BLOCK_SYNC_BITMAP &&
        b->sync != BLOCK_SYNC_INCREMENTAL) {
        /* full/top with a bitmap: the bitmap restarts from this point */
        block_dirty_bitmap_merge(b->saved, b->user, NULL);
        block_dirty_bitmap_clear(b->user);
    } else if (b->user) {
        block_dirty_bitmap_merge(b->saved, b->user, NULL);
        block_dirty_bitmap_clear(b->user);
    }
    return true;
}

BlockJob *block_backup_start(const BlockJobCommon *c, BlockNode *source,
                             BlockNode *target, BlockSyncMode sync,
                             const char *bitmap, BlockBitmapSyncMode bmode,
                             GError **errp)
{
    int64_t slen = block_node_getlength(source);
    int64_t tlen = block_node_getlength(target);
    BlockDirtyBitmap *user = NULL;
    BlockImageInfo info = { 0 };
    int64_t granule = 65536;
    BackupJob *b;
    BlockJob *job;

    if (source == target) {
        ferry_error_setg(errp, "Source and target cannot be the same");
        return NULL;
    }
    if ((sync == BLOCK_SYNC_BITMAP || sync == BLOCK_SYNC_INCREMENTAL) &&
        !bitmap) {
        ferry_error_setg(errp, "must provide a valid bitmap name for '%s' "
                         "sync mode", sync == BLOCK_SYNC_BITMAP
                         ? "bitmap" : "incremental");
        return NULL;
    }
    if (bitmap) {
        user = block_dirty_bitmap_find(source, bitmap);
        if (!user) {
            ferry_error_setg(errp, "Bitmap '%s' could not be found", bitmap);
            return NULL;
        }
        if (user->busy || user->inconsistent) {
            ferry_error_setg(errp, "Bitmap '%s' is currently in use by another "
                             "operation and cannot be used", bitmap);
            return NULL;
        }
    }
    if (slen < 0 || tlen < 0 || tlen < slen) {
        ferry_error_setg(errp, "Target is smaller than the source");
        return NULL;
    }
    if (!(target->open_flags & BLOCK_O_RDWR)) {
        ferry_error_setg(errp, "Block node '%s' is read-only",
                         target->node_name);
        return NULL;
    }
    if (!job_write_hook_free(source, errp)) {
        return NULL;
    }
    if (target->drv->get_info && target->drv->get_info(target, &info, NULL) &&
        info.cluster_size > granule) {
        granule = info.cluster_size;
    }
    json_decref(info.format_specific);
    if (user && user->granularity > granule) {
        granule = user->granularity;
    }
    job = block_job_create(&backup_job_driver, c->job_id, c->speed,
                           c->auto_finalize, c->auto_dismiss, errp);
    if (!job) {
        return NULL;
    }
    b = (BackupJob *)job;
    job->on_source_error = c->on_source_error;
    job->on_target_error = c->on_target_error;
    b->sync = sync;
    b->bmode = bmode;
    b->granule = granule;
    range_lock_init(&b->ranges);
    if (!job_node_attach(&b->source, source, c->job_id, "backup source",
                         BLOCK_PERM_CONSISTENT_READ, BLOCK_PERM_ALL, errp) ||
        !job_node_attach(&b->target, target, c->job_id, "backup target",
                         BLOCK_PERM_WRITE, BLOCK_PERM_CONSISTENT_READ |
                         BLOCK_PERM_WRITE_UNCHANGED | BLOCK_PERM_RESIZE,
                         errp)) {
        goto fail;
    }
    b->to_copy = block_dirty_bitmap_create(source, NULL, (uint32_t)granule,
                                           errp);
    if (!b->to_copy) {
        goto fail;
    }
    b->to_copy->enabled = false;
    if (user) {
        b->saved = block_dirty_bitmap_create(source, NULL, user->granularity,
                                             errp);
        if (!b->saved) {
            goto fail;
        }
        b->saved->enabled = false;
        b->user = user;
    }
    /* No write may slip between marking and hooking: hold the users. */
    {
        GPtrArray *held = block_node_quiesce_users(source, &b->source.user);
        if (!init_to_copy(b, source, errp)) {
            block_users_unquiesce(held);
            goto fail;
        }
        b->hook.begin = cbw_begin;
        b->hook.end = cbw_end;
        block_node_set_write_hook(source, &b->hook);
        b->hooked = true;
        if (user) {
            user->busy = true;
        }
        block_users_unquiesce(held);
    }
    block_job_progress_set_total(job, block_dirty_bitmap_count(b->to_copy));
    block_job_start(job);
    return job;

fail:
    if (b->saved) {
        block_dirty_bitmap_release(b->saved);
    }
    if (b->to_copy) {
        block_dirty_bitmap_release(b->to_copy);
    }
    range_lock_destroy(&b->ranges);
    job_node_detach(&b->target);
    job_node_detach(&b->source);
    block_job_early_fail(job);
    return NULL;
}
