/*
 * The block job framework: registry, QEMU's state machine and verb table,
 * the worker thread, pause points, speed limit, error policies, events.
 * Job drivers (blockdev/jobs/) supply run/complete/prepare/abort/clean.
 * Follows qapi/job.json and job.c's tables (specs/qmp-block-jobs.md 2).
 *
 * Threads: verbs and finalisation run on the main loop thread; run() on
 * the job's own thread.  Every status change happens under the jobs lock
 * and emits JOB_STATUS_CHANGE there, so events come out in the order the
 * states were taken.
 *
 * States (what holds in each) and the function that enters it:
 *   created   job exists, run() not started          block_job_create
 *   running   run() working                          block_job_start, resume
 *   paused    run() parked at a pause point          block_job_pause_point
 *   ready     run() converged, may be completed      block_job_transition_to_ready
 *   standby   paused while ready                     block_job_pause_point
 *   waiting   run() returned 0 (one-job transaction) job_completed
 *   pending   graph changes not yet applied          job_completed
 *   aborting  failed or cancelled; undoing           job_completed, do_finalize
 *   concluded result kept until dismissed            conclude
 *   null      being freed (emitted, never queried)   dismiss
 */
#include "config.h"

#include <errno.h>
#include <string.h>

#include "blockdev/job.h"
#include "common/error.h"
#include "common/log.h"

static GMutex jobs_mutex;
static GPtrArray *jobs;                 /* BlockJob*, creation order; lock */
static BlockJobEventSink event_sink;

/* Allowed transitions, [from][to] (qapi/job.json's table). */
static const bool transition_ok[JOB_STATUS__MAX][JOB_STATUS__MAX] = {
    [JOB_STATUS_UNDEFINED] = { [JOB_STATUS_CREATED] = true },
    [JOB_STATUS_CREATED] = { [JOB_STATUS_RUNNING] = true,
                             [JOB_STATUS_ABORTING] = true,
                             [JOB_STATUS_NULL] = true },
    [JOB_STATUS_RUNNING] = { [JOB_STATUS_PAUSED] = true,
                             [JOB_STATUS_READY] = true,
                             [JOB_STATUS_WAITING] = true,
                             [JOB_STATUS_ABORTING] = true },
    [JOB_STATUS_PAUSED] = { [JOB_STATUS_RUNNING] = true },
    [JOB_STATUS_READY] = { [JOB_STATUS_STANDBY] = true,
                           [JOB_STATUS_WAITING] = true,
                           [JOB_STATUS_ABORTING] = true },
    [JOB_STATUS_STANDBY] = { [JOB_STATUS_READY] = true },
    [JOB_STATUS_WAITING] = { [JOB_STATUS_PENDING] = true,
                             [JOB_STATUS_ABORTING] = true },
    [JOB_STATUS_PENDING] = { [JOB_STATUS_ABORTING] = true,
                             [JOB_STATUS_CONCLUDED] = true },
    [JOB_STATUS_ABORTING] = { [JOB_STATUS_ABORTING] = true,
                              [JOB_STATUS_CONCLUDED] = true },
    [JOB_STATUS_CONCLUDED] = { [JOB_STATUS_NULL] = true },
};

#define S(x) (1u << JOB_STATUS_##x)
/* States in which each verb is accepted. */
static const uint32_t verb_ok[JOB_VERB__MAX] = {
    [JOB_VERB_CANCEL] = S(CREATED) | S(RUNNING) | S(PAUSED) | S(READY) |
                        S(STANDBY) | S(WAITING) | S(PENDING),
    [JOB_VERB_PAUSE] = S(CREATED) | S(RUNNING) | S(PAUSED) | S(READY) |
                       S(STANDBY),
    [JOB_VERB_RESUME] = S(CREATED) | S(RUNNING) | S(PAUSED) | S(READY) |
                        S(STANDBY),
    [JOB_VERB_SET_SPEED] = S(CREATED) | S(RUNNING) | S(PAUSED) | S(READY) |
                           S(STANDBY),
    [JOB_VERB_COMPLETE] = S(READY) | S(STANDBY),
    [JOB_VERB_FINALIZE] = S(PENDING),
    [JOB_VERB_DISMISS] = S(CONCLUDED),
    [JOB_VERB_CHANGE] = S(CREATED) | S(RUNNING) | S(PAUSED) | S(READY) |
                        S(STANDBY),
};
#undef S

static const char *const verb_names[JOB_VERB__MAX] = {
    "cancel", "pause", "resume", "set-speed", "complete", "finalize",
    "dismiss", "change",
};

const char *block_job_status_name(BlockJobStatus st)
{
    static const char *const names[JOB_STATUS__MAX] = {
        "undefined", "created", "running", "paused", "ready", "standby",
        "waiting", "pending", "aborting", "concluded", "null",
    };
    return names[st];
}

const char *block_job_type_name(BlockJobType type)
{
    static const char *const names[] = { "commit", "stream", "mirror",
                                         "backup" };
    return names[type];
}

bool block_job_parse_on_error(const char *s, BlockErrorPolicy *out,
                              GError **errp)
{
    static const char *const names[] = { "report", "ignore", "enospc", "stop",
                                         "auto" };

    for (int i = 0; i < 5; i++) {
        if (!g_strcmp0(s, names[i])) {
            *out = (BlockErrorPolicy)i;
            return true;
        }
    }
    ferry_error_set(errp, FERRY_ERROR_INVALID,
                    "Parameter 'on-error' does not accept value '%s'",
                    s ? s : "");
    return false;
}

void block_job_set_event_sink(BlockJobEventSink sink)
{
    event_sink = sink;
}

static void emit(const char *name, json_t *data)
{
    if (event_sink) {
        event_sink(name, data);
    } else {
        json_decref(data);
    }
}

void block_job_lock(void)
{
    g_mutex_lock(&jobs_mutex);
}

void block_job_unlock(void)
{
    g_mutex_unlock(&jobs_mutex);
}

/* Jobs lock held. */
static void transition_locked(BlockJob *job, BlockJobStatus to)
{
    g_assert(transition_ok[job->status][to]);
    FERRY_TRACE_POINT(BLOCKDEV, "job id=%s %s -> %s", job->id,
                      block_job_status_name(job->status),
                      block_job_status_name(to));
    job->status = to;
    emit("JOB_STATUS_CHANGE", json_pack("{s:s,s:s}", "status",
                                        block_job_status_name(to), "id",
                                        job->id));
}

static bool verb_check_locked(BlockJob *job, BlockJobVerb verb, GError **errp)
{
    if (verb_ok[verb] & (1u << job->status)) {
        return true;
    }
    ferry_error_setg(errp, "Job '%s' in state '%s' cannot accept command verb "
                     "'%s'", job->id, block_job_status_name(job->status),
                     verb_names[verb]);
    return false;
}

/* BLOCK_JOB_COMPLETED/CANCELLED/READY data: type, device, len, offset, speed */
static json_t *event_data_locked(BlockJob *job)
{
    return json_pack("{s:s,s:s,s:I,s:I,s:I}", "type",
                     block_job_type_name(job->drv->type), "device", job->id,
                     "len", (json_int_t)__atomic_load_n(&job->progress_total,
                                                        __ATOMIC_RELAXED),
                     "offset", (json_int_t)__atomic_load_n(
                         &job->progress_current, __ATOMIC_RELAXED),
                     "speed", (json_int_t)job->speed);
}

/* -- registry --------------------------------------------------------------- */

static bool valid_id(const char *id)
{
    if (!g_ascii_isalpha(id[0])) {
        return false;
    }
    for (const char *p = id; *p; p++) {
        if (!g_ascii_isalnum(*p) && *p != '-' && *p != '_' && *p != '.') {
            return false;
        }
    }
    return strlen(id) < 128;
}

BlockJob *block_job_find(const char *id)
{
    BlockJob *found = NULL;

    block_job_lock();
    for (guint i = 0; jobs && i < jobs->len && !found; i++) {
        BlockJob *j = jobs->pdata[i];
        if (!g_strcmp0(j->id, id)) {
            found = j;
        }
    }
    block_job_unlock();
    return found;
}

GPtrArray *block_job_list(void)
{
    GPtrArray *list = g_ptr_array_new();

    block_job_lock();
    for (guint i = 0; jobs && i < jobs->len; i++) {
        g_ptr_array_add(list, jobs->pdata[i]);
    }
    block_job_unlock();
    return list;
}

BlockJob *block_job_create(const BlockJobDriver *drv, const char *id,
                           int64_t speed, bool auto_finalize,
                           bool auto_dismiss, GError **errp)
{
    BlockJob *job;

    if (!id || !valid_id(id)) {
        ferry_error_setg(errp, "Invalid job ID '%s'", id ? id : "");
        return NULL;
    }
    if (block_job_find(id)) {
        ferry_error_setg(errp, "Job ID '%s' already in use", id);
        return NULL;
    }
    if (speed < 0) {
        ferry_error_setg(errp, "Parameter 'speed' expects a non-negative "
                         "value");
        return NULL;
    }
    g_assert(drv->instance_size >= sizeof(BlockJob));
    job = g_malloc0(drv->instance_size);
    job->drv = drv;
    job->id = g_strdup(id);
    job->speed = speed;
    job->auto_finalize = auto_finalize;
    job->auto_dismiss = auto_dismiss;
    g_cond_init(&job->cond);
    block_job_lock();
    if (!jobs) {
        jobs = g_ptr_array_new();
    }
    g_ptr_array_add(jobs, job);
    transition_locked(job, JOB_STATUS_CREATED);
    block_job_unlock();
    return job;
}

static void job_free(BlockJob *job)
{
    if (job->thread) {
        g_thread_join(job->thread);
    }
    g_cond_clear(&job->cond);
    g_free(job->error);
    g_free(job->id);
    g_free(job);
}

/* Jobs lock held: concluded -> null, out of the registry. */
static void dismiss_locked(BlockJob *job)
{
    transition_locked(job, JOB_STATUS_NULL);
    g_ptr_array_remove(jobs, job);
}

void block_job_early_fail(BlockJob *job)
{
    block_job_lock();
    g_assert(job->status == JOB_STATUS_CREATED);
    dismiss_locked(job);
    block_job_unlock();
    job_free(job);
}

/* -- completion (main thread) ------------------------------------------------ */

static void set_error_locked(BlockJob *job, int ret, const char *msg)
{
    job->ret = ret;
    if (!job->error) {
        job->error = g_strdup(msg ? msg : g_strerror(-ret));
    }
}

/* Aborting -> concluded; events as QEMU: CANCELLED or COMPLETED+error. */
static void abort_and_conclude(BlockJob *job)
{
    bool cancelled;

    if (job->drv->abort) {
        job->drv->abort(job);
    }
    block_job_lock();
    cancelled = job->cancelled && job->ret == -ECANCELED;
    if (cancelled) {
        emit("BLOCK_JOB_CANCELLED", event_data_locked(job));
    } else {
        json_t *d = event_data_locked(job);
        json_object_set_new(d, "error", json_string(job->error));
        emit("BLOCK_JOB_COMPLETED", d);
    }
    transition_locked(job, JOB_STATUS_CONCLUDED);
    block_job_unlock();
}

/* Apply graph changes and conclude; the job is pending. */
static void do_finalize(BlockJob *job)
{
    GError *err = NULL;
    bool ok = !job->drv->prepare || job->drv->prepare(job, &err);

    if (ok) {
        block_job_lock();
        emit("BLOCK_JOB_COMPLETED", event_data_locked(job));
        transition_locked(job, JOB_STATUS_CONCLUDED);
        block_job_unlock();
    } else {
        block_job_lock();
        set_error_locked(job, -EIO, err->message);
        transition_locked(job, JOB_STATUS_ABORTING);
        block_job_unlock();
        g_error_free(err);
        abort_and_conclude(job);
    }
}

/* After concluded: release resources, and dismiss if auto_dismiss. */
static void after_conclude(BlockJob *job)
{
    bool free_it = false;

    if (job->drv->clean) {
        job->drv->clean(job);
    }
    block_job_lock();
    if (job->auto_dismiss) {
        dismiss_locked(job);
        free_it = true;
    }
    block_job_unlock();
    if (free_it) {
        job_free(job);
    }
}

static gboolean job_completed(gpointer opaque)
{
    BlockJob *job = opaque;
    bool ok;

    if (job->thread) {
        g_thread_join(job->thread);
        job->thread = NULL;
    }
    block_job_lock();
    if (job->cancelled && job->force_cancel && job->ret == 0) {
        job->ret = -ECANCELED;
    }
    if (job->ret < 0) {
        set_error_locked(job, job->ret, job->ret == -ECANCELED
                         ? "Operation canceled" : NULL);
    }
    ok = job->ret == 0;
    if (ok) {
        transition_locked(job, JOB_STATUS_WAITING);
        transition_locked(job, JOB_STATUS_PENDING);
        if (!job->auto_finalize) {
            emit("BLOCK_JOB_PENDING", json_pack("{s:s,s:s}", "type",
                 block_job_type_name(job->drv->type), "id", job->id));
            block_job_unlock();
            return G_SOURCE_REMOVE;
        }
    } else {
        transition_locked(job, JOB_STATUS_ABORTING);
    }
    block_job_unlock();
    if (ok) {
        do_finalize(job);
    } else {
        abort_and_conclude(job);
    }
    after_conclude(job);
    return G_SOURCE_REMOVE;
}

static gpointer job_thread(gpointer opaque)
{
    BlockJob *job = opaque;
    int ret = job->drv->run(job);

    block_job_lock();
    job->ret = ret;
    job->finished = true;
    block_job_unlock();
    g_idle_add(job_completed, job);
    return NULL;
}

void block_job_start(BlockJob *job)
{
    block_job_lock();
    transition_locked(job, JOB_STATUS_RUNNING);
    block_job_unlock();
    job->thread = g_thread_new(job->id, job_thread, job);
}

/* -- verbs (main thread) ---------------------------------------------------- */

bool block_job_user_pause(BlockJob *job, GError **errp)
{
    bool ok;

    block_job_lock();
    ok = verb_check_locked(job, JOB_VERB_PAUSE, errp);
    if (ok && job->user_paused) {
        ferry_error_setg(errp, "The block job is already paused");
        ok = false;
    }
    if (ok) {
        job->user_paused = true;
        job->pause_count++;
        g_cond_broadcast(&job->cond);
    }
    block_job_unlock();
    return ok;
}

bool block_job_user_resume(BlockJob *job, GError **errp)
{
    bool ok;

    block_job_lock();
    ok = verb_check_locked(job, JOB_VERB_RESUME, errp);
    if (ok && !job->user_paused) {
        ferry_error_setg(errp, "Can't resume a job that was not paused");
        ok = false;
    }
    if (ok) {
        job->user_paused = false;
        job->pause_count--;
        job->io_status = 0;
        g_cond_broadcast(&job->cond);
    }
    block_job_unlock();
    return ok;
}

bool block_job_user_cancel(BlockJob *job, bool force, GError **errp)
{
    bool pending;

    block_job_lock();
    if (!verb_check_locked(job, JOB_VERB_CANCEL, errp)) {
        block_job_unlock();
        return false;
    }
    if (!force && (job->status == JOB_STATUS_READY ||
                   job->status == JOB_STATUS_STANDBY) &&
        job->drv->type == BLOCK_JOB_TYPE_MIRROR) {
        /* A ready mirror cancelled softly ends with a point-in-time copy. */
        job->force_cancel = false;
        job->complete_requested = true;
        job->cancelled = true;
    } else {
        job->cancelled = true;
        job->force_cancel = true;
    }
    if (job->user_paused) {
        job->user_paused = false;
        job->pause_count--;
    }
    g_cond_broadcast(&job->cond);
    pending = job->status == JOB_STATUS_PENDING;
    if (pending) {
        set_error_locked(job, -ECANCELED, "Operation canceled");
        transition_locked(job, JOB_STATUS_ABORTING);
    }
    block_job_unlock();
    if (pending) {
        abort_and_conclude(job);
        after_conclude(job);
    }
    return true;
}

bool block_job_user_complete(BlockJob *job, GError **errp)
{
    block_job_lock();
    if (!verb_check_locked(job, JOB_VERB_COMPLETE, errp)) {
        block_job_unlock();
        return false;
    }
    if (job->cancelled || !job->drv->complete) {
        ferry_error_setg(errp, "The active block job '%s' cannot be completed",
                         job->id);
        block_job_unlock();
        return false;
    }
    job->complete_requested = true;
    g_cond_broadcast(&job->cond);
    block_job_unlock();
    job->drv->complete(job);
    return true;
}

bool block_job_finalize(BlockJob *job, GError **errp)
{
    block_job_lock();
    if (!verb_check_locked(job, JOB_VERB_FINALIZE, errp)) {
        block_job_unlock();
        return false;
    }
    block_job_unlock();
    do_finalize(job);
    after_conclude(job);
    return true;
}

bool block_job_dismiss(BlockJob *job, GError **errp)
{
    block_job_lock();
    if (!verb_check_locked(job, JOB_VERB_DISMISS, errp)) {
        block_job_unlock();
        return false;
    }
    dismiss_locked(job);
    block_job_unlock();
    job_free(job);
    return true;
}

bool block_job_set_speed(BlockJob *job, int64_t speed, GError **errp)
{
    bool ok;

    if (speed < 0) {
        ferry_error_setg(errp, "Parameter 'speed' expects a non-negative value");
        return false;
    }
    block_job_lock();
    ok = verb_check_locked(job, JOB_VERB_SET_SPEED, errp);
    if (ok) {
        job->speed = speed;
        job->slice_bytes = 0;
        g_cond_broadcast(&job->cond);
    }
    block_job_unlock();
    return ok;
}

void block_job_wait_concluded(BlockJob *job)
{
    for (;;) {
        BlockJobStatus st;
        block_job_lock();
        st = job->status;
        block_job_unlock();
        if (st == JOB_STATUS_CONCLUDED || st == JOB_STATUS_PENDING) {
            return;
        }
        g_main_context_iteration(NULL, TRUE);
    }
}

void block_job_cancel_all_sync(void)
{
    g_autoptr(GPtrArray) list = block_job_list();

    for (guint i = 0; i < list->len; i++) {
        BlockJob *job = list->pdata[i];
        block_job_user_cancel(job, true, NULL);
        job->auto_dismiss = true;
    }
    for (;;) {
        g_autoptr(GPtrArray) left = block_job_list();
        bool busy = false;
        for (guint i = 0; i < left->len; i++) {
            BlockJob *job = left->pdata[i];
            if (job->status == JOB_STATUS_CONCLUDED) {
                block_job_dismiss(job, NULL);
            } else {
                busy = true;
            }
        }
        if (!busy) {
            return;
        }
        g_main_context_iteration(NULL, TRUE);
    }
}

/* -- for job drivers (worker thread) ---------------------------------------- */

bool block_job_is_cancelled(BlockJob *job)
{
    bool c;

    block_job_lock();
    c = job->cancelled && job->force_cancel;
    block_job_unlock();
    return c;
}

bool block_job_complete_requested(BlockJob *job)
{
    bool c;

    block_job_lock();
    c = job->complete_requested;
    block_job_unlock();
    return c;
}

bool block_job_is_ready(BlockJob *job)
{
    bool r;

    block_job_lock();
    r = job->status == JOB_STATUS_READY || job->status == JOB_STATUS_STANDBY;
    block_job_unlock();
    return r;
}

void block_job_pause_point(BlockJob *job)
{
    block_job_lock();
    while (job->pause_count > 0 && !(job->cancelled && job->force_cancel)) {
        if (job->status == JOB_STATUS_RUNNING) {
            transition_locked(job, JOB_STATUS_PAUSED);
        } else if (job->status == JOB_STATUS_READY) {
            transition_locked(job, JOB_STATUS_STANDBY);
        }
        job->parked = true;
        g_cond_wait(&job->cond, &jobs_mutex);
    }
    job->parked = false;
    if (job->status == JOB_STATUS_PAUSED) {
        transition_locked(job, JOB_STATUS_RUNNING);
    } else if (job->status == JOB_STATUS_STANDBY) {
        transition_locked(job, JOB_STATUS_READY);
    }
    block_job_unlock();
}

void block_job_sleep_ns(BlockJob *job, int64_t ns)
{
    gint64 until = g_get_monotonic_time() + ns / 1000;

    block_job_lock();
    if (!job->cancelled && !job->pause_count && !job->complete_requested) {
        /* one wait: a wake-up (speed change too) ends the nap early */
        g_cond_wait_until(&job->cond, &jobs_mutex, until);
    }
    block_job_unlock();
}

void block_job_ratelimit(BlockJob *job, int64_t bytes)
{
    int64_t speed, now, need_ns, elapsed;

    block_job_lock();
    speed = job->speed;
    block_job_unlock();
    if (speed <= 0) {
        return;
    }
    now = g_get_monotonic_time() * 1000;
    if (job->slice_start_ns == 0 || now - job->slice_start_ns > 1000000000 ||
        job->slice_bytes == 0) {
        job->slice_start_ns = now;
        job->slice_bytes = 0;
    }
    job->slice_bytes += bytes;
    need_ns = (int64_t)((double)job->slice_bytes * 1e9 / (double)speed);
    elapsed = now - job->slice_start_ns;
    while (need_ns > elapsed && !block_job_is_cancelled(job)) {
        block_job_sleep_ns(job, need_ns - elapsed);
        block_job_pause_point(job);
        block_job_lock();
        if (job->speed != speed) {       /* changed: start a new slice */
            job->slice_bytes = 0;
            block_job_unlock();
            return;
        }
        block_job_unlock();
        elapsed = g_get_monotonic_time() * 1000 - job->slice_start_ns;
    }
}

void block_job_transition_to_ready(BlockJob *job)
{
    block_job_lock();
    if (job->status == JOB_STATUS_RUNNING) {
        transition_locked(job, JOB_STATUS_READY);
        emit("BLOCK_JOB_READY", event_data_locked(job));
    }
    block_job_unlock();
}

void block_job_progress_set_total(BlockJob *job, int64_t total)
{
    __atomic_store_n(&job->progress_total, total, __ATOMIC_RELAXED);
}

void block_job_progress_add(BlockJob *job, int64_t done)
{
    __atomic_add_fetch(&job->progress_current, done, __ATOMIC_RELAXED);
}

void block_job_progress_add_total(BlockJob *job, int64_t more)
{
    __atomic_add_fetch(&job->progress_total, more, __ATOMIC_RELAXED);
}

BlockErrorAction block_job_error_action(BlockJob *job, bool is_read,
                                        bool on_source, int ret)
{
    BlockErrorPolicy pol = on_source ? job->on_source_error
                                     : job->on_target_error;
    BlockErrorAction action;
    static const char *const names[] = { "report", "ignore", "stop" };

    switch (pol) {
    case BLOCK_ERROR_IGNORE:
        action = BLOCK_ERROR_ACTION_IGNORE;
        break;
    case BLOCK_ERROR_ENOSPC:
        action = ret == -ENOSPC ? BLOCK_ERROR_ACTION_STOP
                                : BLOCK_ERROR_ACTION_REPORT;
        break;
    case BLOCK_ERROR_STOP:
        action = BLOCK_ERROR_ACTION_STOP;
        break;
    default:
        action = BLOCK_ERROR_ACTION_REPORT;
        break;
    }
    block_job_lock();
    emit("BLOCK_JOB_ERROR", json_pack("{s:s,s:s,s:s}", "device", job->id,
                                      "operation", is_read ? "read" : "write",
                                      "action", names[action]));
    if (action == BLOCK_ERROR_ACTION_STOP) {
        job->io_status = ret == -ENOSPC ? 2 : 1;
        if (!job->user_paused) {
            job->user_paused = true;
            job->pause_count++;
        }
    }
    block_job_unlock();
    if (action == BLOCK_ERROR_ACTION_STOP) {
        block_job_pause_point(job);
    } else if (action == BLOCK_ERROR_ACTION_IGNORE) {
        /* the caller retries: do not spin on a persistent error */
        block_job_sleep_ns(job, 50 * 1000 * 1000);
    }
    return action;
}

/* -- query ------------------------------------------------------------------- */

json_t *block_job_info(BlockJob *job)
{
    json_t *o;

    block_job_lock();
    o = json_pack("{s:s,s:s,s:s,s:I,s:I}", "id", job->id, "type",
                  block_job_type_name(job->drv->type), "status",
                  block_job_status_name(job->status), "current-progress",
                  (json_int_t)job->progress_current, "total-progress",
                  (json_int_t)job->progress_total);
    if (job->error && job->status == JOB_STATUS_CONCLUDED) {
        json_object_set_new(o, "error", json_string(job->error));
    }
    block_job_unlock();
    return o;
}

json_t *block_job_block_info(BlockJob *job)
{
    static const char *const io_status[] = { "ok", "failed", "nospace" };
    json_t *o;
    bool ready, busy;

    block_job_lock();
    ready = job->status == JOB_STATUS_READY || job->status == JOB_STATUS_STANDBY;
    busy = !job->parked && (job->status == JOB_STATUS_RUNNING ||
                            job->status == JOB_STATUS_READY);
    o = json_pack("{s:b,s:s,s:s,s:b,s:b,s:I,s:s,s:b,s:I,s:b,s:I,s:s}",
                  "auto-finalize", job->auto_finalize, "io-status",
                  io_status[job->io_status], "device", job->id,
                  "auto-dismiss", job->auto_dismiss, "busy", busy,
                  "len", (json_int_t)job->progress_total,
                  "status", block_job_status_name(job->status),
                  "paused", job->pause_count > 0,
                  "offset", (json_int_t)job->progress_current,
                  "ready", ready, "speed", (json_int_t)job->speed,
                  "type", block_job_type_name(job->drv->type));
    if (job->error && job->status == JOB_STATUS_CONCLUDED) {
        json_object_set_new(o, "error", json_string(job->error));
    }
    block_job_unlock();
    if (job->drv->query) {
        job->drv->query(job, o);
    }
    return o;
}
