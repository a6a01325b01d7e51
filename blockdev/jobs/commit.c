/*
 * block-commit: merge the images from top down to (not including) base
 * into base.  Intermediate commit (top has an overlay) copies while the
 * images above keep working, then points the overlay at base.  Active
 * commit (top is the active layer) is a mirror into base (mirror.c).
 * specs/qmp-block-jobs.md 3, "block-commit".
 */
#include "config.h"

#include <errno.h>
#include <string.h>

#include "blockdev/driver.h"
#include "blockdev/jobs/internal.h"
#include "common/error.h"

#define COMMIT_CHUNK_BYTES (1 << 20)

typedef struct CommitJob {
    BlockJob job;
    JobNode top;                 /* read */
    JobNode base;                /* write-unchanged: the overlay sees no change */
    BlockNode *overlay;          /* a reference: its backing becomes base */
    char *backing_file;
    bool base_was_ro;
} CommitJob;

static int commit_run(BlockJob *job)
{
    CommitJob *s = (CommitJob *)job;
    BlockNode *top = s->top.bs, *base = s->base.bs;
    int64_t len = block_node_getlength(top), off = 0;
    g_autofree void *buf = g_try_malloc(COMMIT_CHUNK_BYTES);

    if (len < 0) {
        return (int)len;
    }
    if (!buf) {
        return -ENOMEM;
    }
    block_job_progress_set_total(job, len);
    while (off < len) {
        int64_t n;
        int st, ret = 0;
        bool failed_read = false;
        block_job_pause_point(job);
        if (block_job_is_cancelled(job)) {
            return -ECANCELED;
        }
        st = block_node_block_status_above(top, base, off,
                                           MIN(COMMIT_CHUNK_BYTES, len - off),
                                           &n, NULL, NULL, NULL);
        if (st < 0) {
            ret = st;
            failed_read = true;
        } else if (st & BLOCK_STATUS_ALLOCATED) {
            ret = job_copy_range(top, base, base, off, n, buf, BLOCK_REQ_JOB,
                                 &failed_read);
        }
        if (ret < 0) {
            if (block_job_error_action(job, failed_read, true, ret) ==
                BLOCK_ERROR_ACTION_REPORT) {
                return ret;
            }
            continue;
        }
        off += n;
        block_job_progress_add(job, n);
        block_job_ratelimit(job, n);
    }
    return block_node_flush(base);
}

static bool commit_prepare(BlockJob *job, GError **errp)
{
    CommitJob *s = (CommitJob *)job;
    BlockNode *ov = s->overlay, *base = s->base.bs;
    const char *fmt = block_node_format(base);

    if (ov->drv->change_backing_file &&
        !ov->drv->change_backing_file(ov, s->backing_file, fmt, errp)) {
        return false;
    }
    g_free(ov->backing_file);
    g_free(ov->backing_format);
    ov->backing_file = g_strdup(s->backing_file);
    ov->backing_format = g_strdup(fmt);
    return block_node_set_backing(ov, base, errp);
}

static void commit_clean(BlockJob *job)
{
    CommitJob *s = (CommitJob *)job;
    BlockNode *base = s->base.bs;

    if (base && s->base_was_ro) {
        block_node_ref(base);
        job_node_detach(&s->base);
        block_node_reopen(base, base->open_flags & ~BLOCK_O_RDWR, NULL);
        block_node_unref(base);
    }
    job_node_detach(&s->base);
    job_node_detach(&s->top);
    block_node_unref(s->overlay);
    g_free(s->backing_file);
}

static const BlockJobDriver commit_job_driver = {
    .type = BLOCK_JOB_TYPE_COMMIT,
    .instance_size = sizeof(CommitJob),
    .run = commit_run,
    .prepare = commit_prepare,
    .clean = commit_clean,
};

BlockJob *block_commit_start(const BlockJobCommon *c, BlockNode *top,
                             BlockNode *base, const char *backing_file,
                             GError **errp)
{
    BlockNode *overlay;
    bool in_chain = false, was_ro;
    int64_t tlen, blen;
    CommitJob *s;
    BlockJob *job;

    if (top == base) {
        ferry_error_setg(errp, "cannot commit an image into itself");
        return NULL;
    }
    for (BlockNode *n = block_node_backing(top); n && !in_chain;
         n = block_node_backing(n)) {
        in_chain = n == base;
    }
    if (!in_chain) {
        ferry_error_setg(errp, "Base '%s' not found in the backing chain of "
                         "'%s'", base->node_name, top->node_name);
        return NULL;
    }
    tlen = block_node_getlength(top);
    blen = block_node_getlength(base);
    was_ro = !(base->open_flags & BLOCK_O_RDWR);
    if (was_ro && !block_node_reopen(base, base->open_flags | BLOCK_O_RDWR,
                                     errp)) {
        return NULL;
    }
    if (tlen > blen &&
        !block_node_truncate(base, tlen, false, BLOCK_PREALLOC_OFF, errp)) {
        return NULL;
    }
    overlay = job_find_overlay(top);
    if (!overlay) {
        return block_commit_active_start(c, top, base, errp);
    }
    job = block_job_create(&commit_job_driver, c->job_id, c->speed,
                           c->auto_finalize, c->auto_dismiss, errp);
    if (!job) {
        return NULL;
    }
    s = (CommitJob *)job;
    job->on_source_error = job->on_target_error = c->on_source_error;
    if (!job_node_attach(&s->top, top, c->job_id, "commit top",
                         BLOCK_PERM_CONSISTENT_READ, BLOCK_PERM_ALL, errp) ||
        !job_node_attach(&s->base, base, c->job_id, "commit base",
                         BLOCK_PERM_WRITE_UNCHANGED, BLOCK_PERM_ALL, errp)) {
        job_node_detach(&s->top);
        block_job_early_fail(job);
        return NULL;
    }
    block_node_ref(overlay);
    s->overlay = overlay;
    s->base_was_ro = was_ro;
    s->backing_file = g_strdup(backing_file ? backing_file : base->filename);
    block_job_start(job);
    return job;
}
