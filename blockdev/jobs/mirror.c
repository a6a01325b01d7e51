/*
 * Mirror (blockdev-mirror, drive-mirror) and active commit: copy a node
 * that stays in use to a target, then on job-complete move the source's
 * users onto the target.  An anonymous dirty bitmap on the source, marked
 * by the graph on every write, says what still differs; the job copies
 * dirty extents with several requests in flight until none is left
 * (ready), keeps copying new writes, and on complete holds the source's
 * users, copies the rest and pivots (block_node_replace).
 * specs/qmp-block-jobs.md 3, "drive-mirror / blockdev-mirror".
 *
 * Invariants:
 *  1. A bit is cleared before its bytes are read from the source; a guest
 *     write that lands after the read sets it again (the graph marks after
 *     the write), so no write is missed.
 *  2. Two copies of overlapping bytes are never in flight together, so an
 *     older copy cannot land on the target after a newer one.
 *  3. From the final pass to prepare/abort, the source's users are held
 *     (quiesced): nothing writes the source between the last copy and the
 *     pivot.
 *
 * copy-mode=write-blocking: a write hook on the source registers each
 * guest write as an op over its bytes (so invariant 2 holds against the
 * background copies), and once the source has the data writes the same
 * bytes to the target before the guest's write completes; the granules
 * it wholly covers are then clean.  Zeroes and discards, and writes the
 * target refused, stay dirty for the background copy (a refused one also
 * goes to the error policy as a target error).  The guest's write itself
 * never fails for the target's sake, as in QEMU.
 *
 * Write-behind: the target is flushed before ready anyway, and a flush of
 * everything copied so far costs as long as the disk takes to write it
 * (0.75 s of a 1.6 s mirror of 1 GiB to a qemu-nbd qcow2 target).  So
 * every MIRROR_FLUSH_BEHIND bytes copied, one flush of the target starts
 * beside the copies (never two at once): the disk writes while the job
 * copies, and the flush at ready finds little left.  A failed flush may
 * have lost any write since the last good one (the kernel reports a
 * writeback error once), so it re-marks the whole image dirty and goes to
 * the error policy as a target error.
 */
#include "config.h"

#include <errno.h>
#include <string.h>

#include "blockdev/driver.h"
#include "blockdev/jobs/internal.h"
#include "common/error.h"

#define MIRROR_MAX_CHUNK_BYTES   (1 << 20)
#define MIRROR_DEFAULT_BUF_BYTES (16 << 20)
/*
 * Threads copying at most: one per chunk the buffer holds, as QEMU keeps
 * buf-size / chunk copies in flight (16 by default), plus one for the
 * write-behind flush.  Eight (the old figure) left half the buffer idle:
 * a 1 GiB mirror to a qemu-nbd target took 1.55 s with 8, 1.37 s with 16.
 */
#define MIRROR_MAX_WORKERS       64
#define MIRROR_FLUSH_BEHIND      (INT64_C(32) << 20)

typedef struct MirrorOp MirrorOp;

typedef struct MirrorJob {
    BlockJob job;
    JobNode source;              /* read; shares everything */
    JobNode target;              /* write (write-unchanged for commit) */
    BlockNode *base;             /* active commit: copy only above base */
    bool is_commit;
    BlockSyncMode sync;
    BlockDirtyBitmap *dirty;     /* anonymous, on source */
    int64_t buf_size;            /* bytes in flight at most */
    int64_t chunk;               /* bytes per copy, multiple of granularity */
    GThreadPool *pool;
    GMutex lock;                 /* guards the fields below */
    GCond cond;
    GList *inflight;             /* MirrorOp* */
    int64_t inflight_bytes;
    int64_t unflushed;           /* bytes copied since the last flush began */
    bool flushing;               /* a write-behind flush is running */
    int op_error;                /* first error of a finished op, or 0 */
    bool op_error_read;
    GPtrArray *held;             /* users quiesced for the pivot (inv. 3) */
    BlockWriteHook hook;         /* copy-mode=write-blocking */
    bool hooked;
} MirrorJob;

struct MirrorOp {
    MirrorJob *m;
    int64_t off;
    int64_t len;
    bool flush;                  /* a write-behind flush, not a copy */
};

/* Lock held: keep the first error for the job thread's error policy. */
static void note_error_locked(MirrorJob *m, int ret, bool is_read)
{
    if (!m->op_error) {
        m->op_error = ret;
        m->op_error_read = is_read;
    }
}

static void op_done(MirrorJob *m, MirrorOp *op, int ret, bool failed_read)
{
    MirrorOp *flush = NULL;

    g_mutex_lock(&m->lock);
    m->inflight = g_list_remove(m->inflight, op);
    m->inflight_bytes -= op->len;
    if (ret == 0) {
        m->unflushed += op->len;
        if (m->unflushed >= MIRROR_FLUSH_BEHIND && !m->flushing) {
            m->unflushed = 0;
            m->flushing = true;
            flush = g_new0(MirrorOp, 1);
            flush->m = m;
            flush->flush = true;
        }
    }
    if (ret < 0) {
        block_dirty_bitmap_set(m->dirty, op->off, op->len);
        note_error_locked(m, ret, failed_read);
    }
    g_cond_broadcast(&m->cond);
    g_mutex_unlock(&m->lock);
    if (ret == 0) {
        block_job_progress_add(&m->job, op->len);
    }
    g_free(op);
    if (flush) {
        g_thread_pool_push(m->pool, flush, NULL);
    }
}

static void flush_behind(MirrorJob *m, MirrorOp *op)
{
    int ret = block_node_flush(m->target.bs);

    g_mutex_lock(&m->lock);
    m->flushing = false;
    if (ret < 0) {
        int64_t len = block_node_getlength(m->source.bs);
        if (len > 0) {
            block_dirty_bitmap_set(m->dirty, 0, len);
        }
        note_error_locked(m, ret, false);
    }
    g_cond_broadcast(&m->cond);
    g_mutex_unlock(&m->lock);
    g_free(op);
}

static int copy(MirrorJob *m, int64_t off, int64_t len, void *buf,
                bool *failed_read)
{
    uint32_t wflags = m->is_commit ? BLOCK_REQ_JOB : 0;

    return job_copy_range(m->source.bs, m->is_commit ? m->base : NULL,
                          m->target.bs, off, len, buf, wflags, failed_read);
}

static void worker(gpointer data, gpointer user_data)
{
    MirrorOp *op = data;
    MirrorJob *m = op->m;
    void *buf;
    bool failed_read = false;
    int ret;

    if (op->flush) {
        flush_behind(m, op);
        return;
    }
    buf = g_try_malloc(op->len);
    ret = buf ? copy(m, op->off, op->len, buf, &failed_read) : -ENOMEM;

    g_free(buf);
    op_done(m, op, ret, failed_read);
}

static bool overlaps_inflight_locked(MirrorJob *m, int64_t off, int64_t len)
{
    for (GList *l = m->inflight; l; l = l->next) {
        MirrorOp *op = l->data;
        if (op->off < off + len && off < op->off + op->len) {
            return true;
        }
    }
    return false;
}

static void wait_all_locked(MirrorJob *m)
{
    while (m->inflight || m->flushing) {
        g_cond_wait(&m->cond, &m->lock);
    }
}

/* -- copy-mode=write-blocking ---------------------------------------------- */

static int active_begin(BlockWriteHook *h, BlockNode *bs, int64_t offset,
                        int64_t bytes, void **token)
{
    MirrorJob *m = (MirrorJob *)((char *)h - offsetof(MirrorJob, hook));
    MirrorOp *op = g_new0(MirrorOp, 1);

    op->m = m;
    op->off = offset;
    op->len = bytes;
    g_mutex_lock(&m->lock);
    while (overlaps_inflight_locked(m, offset, bytes)) {     /* inv. 2 */
        g_cond_wait(&m->cond, &m->lock);
    }
    m->inflight = g_list_prepend(m->inflight, op);
    g_mutex_unlock(&m->lock);
    *token = op;
    return 0;
}

static void active_written(BlockWriteHook *h, void *token, const void *buf,
                           int ret)
{
    MirrorJob *m = (MirrorJob *)((char *)h - offsetof(MirrorJob, hook));
    MirrorOp *op = token;

    if (ret < 0) {
        return;                 /* the source refused: nothing changed */
    }
    ret = block_node_pwrite(m->target.bs, op->off, op->len, buf, 0);
    g_mutex_lock(&m->lock);
    if (ret == 0) {
        /* only granules the write covers whole: the rest holds old bytes */
        block_dirty_bitmap_reset(m->dirty, op->off, op->len);
    } else {
        note_error_locked(m, ret, false);
    }
    g_mutex_unlock(&m->lock);
}

static void unhook(MirrorJob *m)
{
    if (m->hooked) {
        block_node_set_write_hook(m->source.bs, NULL);
        m->hooked = false;
    }
}

static void active_end(BlockWriteHook *h, void *token)
{
    MirrorJob *m = (MirrorJob *)((char *)h - offsetof(MirrorJob, hook));
    MirrorOp *op = token;

    g_mutex_lock(&m->lock);
    m->inflight = g_list_remove(m->inflight, op);
    g_cond_broadcast(&m->cond);
    g_mutex_unlock(&m->lock);
    g_free(op);
}

/* Mark what the sync mode copies initially; returns the bytes marked. */
static int mirror_dirty_init(MirrorJob *m, int64_t len)
{
    BlockNode *src = m->source.bs;
    int64_t off = 0;

    if (m->sync == BLOCK_SYNC_NONE) {
        return 0;
    }
    while (off < len) {
        int64_t n;
        int st;
        if (block_job_is_cancelled(&m->job)) {
            return -ECANCELED;
        }
        if (m->is_commit) {
            st = block_node_block_status_above(src, m->base, off, len - off,
                                               &n, NULL, NULL, NULL);
        } else if (m->sync == BLOCK_SYNC_TOP) {
            st = block_node_block_status(src, off, len - off, &n, NULL, NULL);
        } else {
            st = block_node_block_status_above(src, NULL, off, len - off, &n,
                                               NULL, NULL, NULL);
        }
        if (st < 0) {
            return st;
        }
        if (n <= 0) {
            break;
        }
        if (m->is_commit || m->sync == BLOCK_SYNC_TOP) {
            if (st & BLOCK_STATUS_ALLOCATED) {
                block_dirty_bitmap_set(m->dirty, off, n);
            }
        } else if (!(st & BLOCK_STATUS_ZERO) ||
                   !job_reads_zero(m->target.bs, off, n)) {
            block_dirty_bitmap_set(m->dirty, off, n);
        }
        off += n;
    }
    return 0;
}

/* The next dirty extent at or after *cursor (wrapping), clipped to chunk. */
static bool next_extent(MirrorJob *m, int64_t len, int64_t *cursor,
                        int64_t *off, int64_t *n)
{
    int64_t start = block_dirty_bitmap_next_extent(m->dirty, *cursor, len,
                                                   true, n);
    if (start < 0 && *cursor > 0) {
        start = block_dirty_bitmap_next_extent(m->dirty, 0, len, true, n);
    }
    if (start < 0) {
        return false;
    }
    *n = MIN(*n, m->chunk);
    *off = start;
    *cursor = start + *n;
    return true;
}

/* Worker side errors, handled on the job thread by the error policy. */
static int take_op_error(MirrorJob *m)
{
    int ret;
    bool is_read;

    g_mutex_lock(&m->lock);
    ret = m->op_error;
    is_read = m->op_error_read;
    m->op_error = 0;
    g_mutex_unlock(&m->lock);
    if (ret == 0) {
        return 0;
    }
    if (block_job_error_action(&m->job, is_read, is_read, ret) ==
        BLOCK_ERROR_ACTION_REPORT) {
        return ret;
    }
    return 0;
}

/* Hand [off, off+n) to a worker once buffer space and invariant 2 allow. */
static void submit_copy(MirrorJob *m, int64_t off, int64_t n)
{
    MirrorOp *op = g_new0(MirrorOp, 1);
    int64_t inflight;

    op->m = m;
    op->off = off;
    op->len = n;
    g_mutex_lock(&m->lock);
    while (m->inflight && (m->inflight_bytes + n > m->buf_size ||
                           overlaps_inflight_locked(m, off, n))) {
        g_cond_wait(&m->cond, &m->lock);
    }
    /* invariant 1: clear before the copy reads */
    block_dirty_bitmap_reset(m->dirty, off, n);
    m->inflight = g_list_prepend(m->inflight, op);
    m->inflight_bytes += n;
    inflight = m->inflight_bytes;
    g_mutex_unlock(&m->lock);
    g_thread_pool_push(m->pool, op, NULL);
    block_job_progress_set_total(&m->job,
                                 __atomic_load_n(&m->job.progress_current,
                                                 __ATOMIC_RELAXED) +
                                 inflight +
                                 (int64_t)block_dirty_bitmap_count(m->dirty));
}

/* With the users held: copy whatever is still dirty, synchronously. */
static int final_pass(MirrorJob *m, int64_t len)
{
    void *buf = g_try_malloc(m->chunk);
    int64_t off, n, cursor = 0;
    int ret = 0;

    if (!buf) {
        return -ENOMEM;
    }
    while (ret == 0 && next_extent(m, len, &cursor, &off, &n)) {
        bool failed_read = false;
        block_dirty_bitmap_reset(m->dirty, off, n);
        ret = copy(m, off, n, buf, &failed_read);
        if (ret < 0) {
            block_dirty_bitmap_set(m->dirty, off, n);
        } else {
            block_job_progress_add(&m->job, n);
        }
    }
    g_free(buf);
    return ret < 0 ? ret : block_node_flush(m->target.bs);
}

static int mirror_run(BlockJob *job)
{
    MirrorJob *m = (MirrorJob *)job;
    int64_t len = block_node_getlength(m->source.bs), cursor = 0;
    int ret;

    if (len < 0) {
        return (int)len;
    }
    ret = mirror_dirty_init(m, len);
    if (ret < 0) {
        return ret;
    }
    block_job_progress_set_total(job, block_dirty_bitmap_count(m->dirty));
    for (;;) {
        int64_t off, n;
        block_job_pause_point(job);
        if (block_job_is_cancelled(job)) {
            ret = -ECANCELED;
            break;
        }
        if ((ret = take_op_error(m)) < 0) {
            break;
        }
        if (next_extent(m, len, &cursor, &off, &n)) {
            submit_copy(m, off, n);
            block_job_ratelimit(job, n);
            continue;
        }
        g_mutex_lock(&m->lock);
        wait_all_locked(m);
        g_mutex_unlock(&m->lock);
        if ((ret = take_op_error(m)) < 0) {
            break;
        }
        if (block_dirty_bitmap_count(m->dirty)) {
            continue;
        }
        if (!block_job_is_ready(job)) {
            if ((ret = block_node_flush(m->target.bs)) < 0) {
                if (block_job_error_action(job, false, false, ret) ==
                    BLOCK_ERROR_ACTION_REPORT) {
                    break;
                }
                continue;
            }
            block_job_progress_set_total(job, job->progress_current);
            block_job_transition_to_ready(job);
        }
        if (block_job_complete_requested(job)) {
            m->held = block_node_quiesce_users(m->source.bs, &m->source.user);
            ret = final_pass(m, len);
            break;
        }
        block_job_sleep_ns(job, 10 * 1000 * 1000);
    }
    g_mutex_lock(&m->lock);
    wait_all_locked(m);
    g_mutex_unlock(&m->lock);
    return ret;
}

static void mirror_complete(BlockJob *job)
{
    /* run() sees complete_requested at its next idle check */
}

static bool mirror_prepare(BlockJob *job, GError **errp)
{
    MirrorJob *m = (MirrorJob *)job;
    BlockNode *src = m->source.bs, *dst = m->target.bs;
    bool soft_cancel, ok = true;

    unhook(m);    /* before the target leaves the job: the hook writes to it */
    block_job_lock();
    soft_cancel = job->cancelled && !job->force_cancel;
    block_job_unlock();
    if (soft_cancel) {
        return true;            /* a point-in-time copy, no pivot */
    }
    block_node_ref(dst);
    job_node_detach(&m->target);
    if (m->is_commit) {
        /*
         * The top and the images between it and base leave the graph: their
         * backing edges (read-only users of base) must not veto the move.
         */
        g_autoptr(GPtrArray) chain = g_ptr_array_new();
        for (BlockNode *n = src; n && n != dst;
             n = n->backing ? n->backing->node : NULL) {
            block_node_ref(n);
            g_ptr_array_add(chain, n);
        }
        for (guint i = 0; i < chain->len; i++) {
            BlockNode *n = chain->pdata[i];
            if (n->backing) {
                block_node_detach_child(n, n->backing);
            }
        }
        ok = block_node_replace(src, dst, &m->source.user, errp);
        for (guint i = chain->len; i-- > 0;) {
            BlockNode *n = chain->pdata[i];
            if (!ok) {
                block_node_set_backing(n, i + 1 < chain->len
                                       ? chain->pdata[i + 1] : dst, NULL);
            }
        }
        for (guint i = 0; i < chain->len; i++) {
            block_node_unref(chain->pdata[i]);
        }
    } else {
        ok = block_node_replace(src, dst, &m->source.user, errp);
    }
    block_node_unref(dst);
    return ok;
}

static void mirror_clean(BlockJob *job)
{
    MirrorJob *m = (MirrorJob *)job;

    unhook(m);
    if (m->pool) {
        g_thread_pool_free(m->pool, FALSE, TRUE);
        m->pool = NULL;
    }
    if (m->held) {
        block_users_unquiesce(m->held);
        m->held = NULL;
    }
    if (m->dirty) {
        block_dirty_bitmap_release(m->dirty);
        m->dirty = NULL;
    }
    job_node_detach(&m->target);
    job_node_detach(&m->source);
    if (m->base) {
        block_node_unref(m->base);
    }
    g_mutex_clear(&m->lock);
    g_cond_clear(&m->cond);
}

static const BlockJobDriver mirror_job_driver = {
    .type = BLOCK_JOB_TYPE_MIRROR,
    .instance_size = sizeof(MirrorJob),
    .run = mirror_run,
    .complete = mirror_complete,
    .prepare = mirror_prepare,
    .clean = mirror_clean,
    /* no "actively-synced": QEMU 7.2, whose answers ferry follows, has none */
};

static const BlockJobDriver commit_active_job_driver = {
    .type = BLOCK_JOB_TYPE_COMMIT,
    .instance_size = sizeof(MirrorJob),
    .run = mirror_run,
    .complete = mirror_complete,
    .prepare = mirror_prepare,
    .clean = mirror_clean,
};

static BlockJob *mirror_common(const BlockJobDriver *drv,
                               const BlockJobCommon *c, BlockNode *source,
                               BlockNode *target, BlockNode *base,
                               BlockSyncMode sync, uint32_t granularity,
                               int64_t buf_size, bool write_blocking,
                               GError **errp)
{
    int64_t slen = block_node_getlength(source);
    int64_t tlen = block_node_getlength(target);
    bool is_commit = drv == &commit_active_job_driver;
    MirrorJob *m;
    BlockJob *job;

    if (source == target) {
        ferry_error_setg(errp, "Can't mirror node into itself");
        return NULL;
    }
    if (write_blocking && !job_write_hook_free(source, errp)) {
        return NULL;
    }
    if (granularity == 0) {
        BlockImageInfo info = { 0 };
        granularity = 65536;
        if (target->drv->get_info && target->drv->get_info(target, &info, NULL) &&
            info.cluster_size >= 4096) {
            granularity = (uint32_t)info.cluster_size;
        }
        json_decref(info.format_specific);
    }
    if (granularity < 512 || granularity > (64u << 20) ||
        (granularity & (granularity - 1))) {
        ferry_error_setg(errp, "Invalid parameter 'granularity': must be a "
                         "power of 2 between 512 and 64M");
        return NULL;
    }
    if (buf_size < 0) {
        ferry_error_setg(errp, "Invalid parameter 'buf-size'");
        return NULL;
    }
    if (slen < 0 || tlen < 0) {
        ferry_error_setg(errp, "Cannot get the length of the source or target");
        return NULL;
    }
    if (!is_commit && slen != tlen) {
        ferry_error_setg(errp, "Source and target image have different sizes");
        return NULL;
    }
    if (!(target->open_flags & BLOCK_O_RDWR)) {
        ferry_error_setg(errp, "Block node '%s' is read-only",
                         target->node_name);
        return NULL;
    }
    job = block_job_create(drv, c->job_id, c->speed, c->auto_finalize,
                           c->auto_dismiss, errp);
    if (!job) {
        return NULL;
    }
    m = (MirrorJob *)job;
    g_mutex_init(&m->lock);
    g_cond_init(&m->cond);
    job->on_source_error = c->on_source_error;
    job->on_target_error = c->on_target_error;
    m->is_commit = is_commit;
    m->sync = sync;
    m->buf_size = buf_size ? buf_size : MIRROR_DEFAULT_BUF_BYTES;
    m->chunk = MAX((int64_t)granularity, MIRROR_MAX_CHUNK_BYTES);
    m->chunk -= m->chunk % granularity;
    if (!job_node_attach(&m->source, source, c->job_id, "mirror source",
                         BLOCK_PERM_CONSISTENT_READ, BLOCK_PERM_ALL, errp) ||
        !job_node_attach(&m->target, target, c->job_id, "mirror target",
                         is_commit ? BLOCK_PERM_WRITE_UNCHANGED
                                   : BLOCK_PERM_WRITE,
                         BLOCK_PERM_CONSISTENT_READ |
                         BLOCK_PERM_WRITE_UNCHANGED | BLOCK_PERM_RESIZE |
                         (is_commit ? BLOCK_PERM_WRITE : 0), errp)) {
        job_node_detach(&m->source);
        g_mutex_clear(&m->lock);
        g_cond_clear(&m->cond);
        block_job_early_fail(job);
        return NULL;
    }
    if (base) {
        block_node_ref(base);
        m->base = base;
    }
    m->dirty = block_dirty_bitmap_create(source, NULL, granularity, errp);
    if (!m->dirty) {
        job_node_detach(&m->target);
        job_node_detach(&m->source);
        if (m->base) {
            block_node_unref(m->base);
        }
        g_mutex_clear(&m->lock);
        g_cond_clear(&m->cond);
        block_job_early_fail(job);
        return NULL;
    }
    m->pool = g_thread_pool_new(worker, m,
                                (gint)CLAMP(m->buf_size / m->chunk, 1,
                                            MIRROR_MAX_WORKERS - 1) + 1,
                                FALSE, NULL);
    if (write_blocking) {
        m->hook.begin = active_begin;
        m->hook.written = active_written;
        m->hook.end = active_end;
        block_node_set_write_hook(source, &m->hook);
        m->hooked = true;
    }
    block_job_start(job);
    return job;
}

BlockJob *block_mirror_start(const BlockJobCommon *c, BlockNode *source,
                             BlockNode *target, BlockSyncMode sync,
                             uint32_t granularity, int64_t buf_size,
                             bool write_blocking, GError **errp)
{
    if (sync != BLOCK_SYNC_FULL && sync != BLOCK_SYNC_TOP &&
        sync != BLOCK_SYNC_NONE) {
        ferry_error_setg(errp, "Sync mode '%s' not supported",
                         sync == BLOCK_SYNC_BITMAP ? "bitmap" : "incremental");
        return NULL;
    }
    return mirror_common(&mirror_job_driver, c, source, target, NULL, sync,
                         granularity, buf_size, write_blocking, errp);
}

BlockJob *block_commit_active_start(const BlockJobCommon *c, BlockNode *top,
                                    BlockNode *base, GError **errp)
{
    if (!(base->open_flags & BLOCK_O_RDWR) &&
        !block_node_reopen(base, base->open_flags | BLOCK_O_RDWR, errp)) {
        return NULL;
    }
    return mirror_common(&commit_active_job_driver, c, top, base, base,
                         BLOCK_SYNC_TOP, 0, 0, false, errp);
}
