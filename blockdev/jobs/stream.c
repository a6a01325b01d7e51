/*
 * block-stream: copy what the backing chain above `base` provides into the
 * top image, then point the top image at base (or at nothing).  The top
 * stays in use: a write hook makes guest writes and the job's copy of the
 * same bytes take turns, so a copy never overwrites newer guest data.
 * specs/qmp-block-jobs.md 3, "block-stream".
 */
#include "config.h"

#include <errno.h>
#include <string.h>

#include "blockdev/driver.h"
#include "blockdev/jobs/internal.h"
#include "common/error.h"

#define STREAM_CHUNK_BYTES (1 << 20)
/* The job's own writes (past the hook), and unchanged data marks no bitmap. */
#define STREAM_WFLAGS (BLOCK_REQ_JOB | BLOCK_REQ_NO_BITMAPS)

typedef struct StreamJob {
    BlockJob job;
    JobNode top;                 /* WRITE_UNCHANGED: content stays the same */
    BlockNode *base;             /* a reference, or NULL */
    char *backing_file;          /* written into top's header */
    RangeLock ranges;
    BlockWriteHook hook;
    bool hooked;
} StreamJob;

static int stream_hook_begin(BlockWriteHook *h, BlockNode *bs, int64_t offset,
                             int64_t bytes, void **token)
{
    StreamJob *s = (StreamJob *)((char *)h - offsetof(StreamJob, hook));

    *token = range_lock(&s->ranges, offset, offset + bytes);
    return 0;
}

static void stream_hook_end(BlockWriteHook *h, void *token)
{
    StreamJob *s = (StreamJob *)((char *)h - offsetof(StreamJob, hook));

    range_unlock(&s->ranges, token);
}

/* Copy [off, off+n) up if top does not have it and the chain above base does. */
static int stream_chunk(StreamJob *s, int64_t off, int64_t n, void *buf,
                        int64_t *done)
{
    BlockNode *top = s->top.bs;
    BlockNode *backing = block_node_backing(top);
    JobRange *r;
    int64_t pnum;
    int st, ret = 0;

    st = block_node_block_status(top, off, n, &pnum, NULL, NULL);
    if (st < 0) {
        return st;
    }
    *done = pnum;
    if ((st & BLOCK_STATUS_ALLOCATED) || !backing || backing == s->base) {
        return 0;
    }
    r = range_lock(&s->ranges, off, off + pnum);
    /* a guest write may have allocated it meanwhile: ask again */
    st = block_node_block_status(top, off, pnum, &pnum, NULL, NULL);
    if (st >= 0 && !(st & BLOCK_STATUS_ALLOCATED)) {
        int64_t above;
        int bst = block_node_block_status_above(backing, s->base, off, pnum,
                                                &above, NULL, NULL, NULL);
        *done = pnum = above > 0 ? above : pnum;
        if (bst >= 0 && (bst & BLOCK_STATUS_ALLOCATED)) {
            if (bst & BLOCK_STATUS_ZERO) {
                ret = block_node_pwrite_zeroes(top, off, pnum, STREAM_WFLAGS);
            } else {
                ret = block_node_pread(top, off, pnum, buf, 0);
                if (ret == 0) {
                    ret = block_node_pwrite(top, off, pnum, buf, STREAM_WFLAGS);
                }
            }
        } else if (bst < 0) {
            ret = bst;
        }
    } else if (st >= 0) {
        *done = pnum;
    } else {
        ret = st;
    }
    range_unlock(&s->ranges, r);
    return ret;
}

static int stream_run(BlockJob *job)
{
    StreamJob *s = (StreamJob *)job;
    int64_t len = block_node_getlength(s->top.bs), off = 0;
    g_autofree void *buf = g_try_malloc(STREAM_CHUNK_BYTES);

    if (len < 0) {
        return (int)len;
    }
    if (!buf) {
        return -ENOMEM;
    }
    block_job_progress_set_total(job, len);
    while (off < len) {
        int64_t done = 0;
        int ret;
        block_job_pause_point(job);
        if (block_job_is_cancelled(job)) {
            return -ECANCELED;
        }
        ret = stream_chunk(s, off, MIN(STREAM_CHUNK_BYTES, len - off), buf,
                           &done);
        if (ret < 0) {
            BlockErrorAction a = block_job_error_action(job, false, true, ret);
            if (a == BLOCK_ERROR_ACTION_REPORT) {
                return ret;
            }
            continue;     /* ignore or stop: retry the chunk */
        }
        off += done;
        block_job_progress_add(job, done);
        block_job_ratelimit(job, done);
    }
    return 0;
}

static bool stream_prepare(BlockJob *job, GError **errp)
{
    StreamJob *s = (StreamJob *)job;
    BlockNode *top = s->top.bs;
    const char *fmt = s->base ? block_node_format(s->base) : NULL;

    if (top->drv->change_backing_file &&
        !top->drv->change_backing_file(top, s->backing_file, fmt, errp)) {
        return false;
    }
    g_free(top->backing_file);
    g_free(top->backing_format);
    top->backing_file = g_strdup(s->backing_file);
    top->backing_format = g_strdup(fmt);
    return block_node_set_backing(top, s->base, errp);
}

static void stream_clean(BlockJob *job)
{
    StreamJob *s = (StreamJob *)job;

    if (s->hooked) {
        block_node_set_write_hook(s->top.bs, NULL);
    }
    range_lock_destroy(&s->ranges);
    job_node_detach(&s->top);
    if (s->base) {
        block_node_unref(s->base);
    }
    g_free(s->backing_file);
}

static const BlockJobDriver stream_job_driver = {
    .type = BLOCK_JOB_TYPE_STREAM,
    .instance_size = sizeof(StreamJob),
    .run = stream_run,
    .prepare = stream_prepare,
    .clean = stream_clean,
};

BlockJob *block_stream_start(const BlockJobCommon *c, BlockNode *top,
                             BlockNode *base, const char *backing_file,
                             GError **errp)
{
    StreamJob *s;
    BlockJob *job;
    bool in_chain = !base;

    for (BlockNode *n = block_node_backing(top); n && !in_chain;
         n = block_node_backing(n)) {
        in_chain = n == base;
    }
    if (!in_chain || base == top) {
        ferry_error_setg(errp, "Node '%s' is not a backing image of '%s'",
                         base->node_name, top->node_name);
        return NULL;
    }
    if (!(top->open_flags & BLOCK_O_RDWR)) {
        ferry_error_setg(errp, "Block node '%s' is read-only",
                         top->node_name);
        return NULL;
    }
    if (!job_write_hook_free(top, errp)) {
        return NULL;
    }
    job = block_job_create(&stream_job_driver, c->job_id, c->speed,
                           c->auto_finalize, c->auto_dismiss, errp);
    if (!job) {
        return NULL;
    }
    s = (StreamJob *)job;
    job->on_source_error = job->on_target_error = c->on_source_error;
    if (!job_node_attach(&s->top, top, c->job_id, "stream top",
                         BLOCK_PERM_CONSISTENT_READ | BLOCK_PERM_WRITE_UNCHANGED,
                         BLOCK_PERM_ALL, errp)) {
        block_job_early_fail(job);
        return NULL;
    }
    if (base) {
        block_node_ref(base);
        s->base = base;
    }
    s->backing_file = g_strdup(backing_file ? backing_file
                               : base ? base->filename : NULL);
    range_lock_init(&s->ranges);
    s->hook.begin = stream_hook_begin;
    s->hook.end = stream_hook_end;
    block_node_set_write_hook(top, &s->hook);
    s->hooked = true;
    block_job_start(job);
    return job;
}
