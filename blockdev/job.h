/*
 * Block jobs: long operations on the graph (stream, commit, mirror,
 * backup) that run on a worker thread while the disk stays in use, with
 * QEMU's job state machine, verbs, events, speed limit, progress and error
 * policies (specs/qmp-block-jobs.md 2 and 3).  The control side (create,
 * verbs, finalize) runs on the main loop thread; a job's run() runs on its
 * own thread and polls block_job_pause_point() between chunks.
 */
#ifndef FERRY_BLOCKDEV_JOB_H
#define FERRY_BLOCKDEV_JOB_H

#include <stdbool.h>
#include <stdint.h>

#include <glib.h>
#include <jansson.h>

#include "blockdev/block.h"

typedef enum {
    BLOCK_JOB_TYPE_COMMIT,
    BLOCK_JOB_TYPE_STREAM,
    BLOCK_JOB_TYPE_MIRROR,
    BLOCK_JOB_TYPE_BACKUP,
} BlockJobType;

/* JobStatus, in QEMU's order and spelling (block_job_status_name). */
typedef enum {
    JOB_STATUS_UNDEFINED,
    JOB_STATUS_CREATED,
    JOB_STATUS_RUNNING,
    JOB_STATUS_PAUSED,
    JOB_STATUS_READY,
    JOB_STATUS_STANDBY,
    JOB_STATUS_WAITING,
    JOB_STATUS_PENDING,
    JOB_STATUS_ABORTING,
    JOB_STATUS_CONCLUDED,
    JOB_STATUS_NULL,
    JOB_STATUS__MAX,
} BlockJobStatus;

typedef enum {
    JOB_VERB_CANCEL,
    JOB_VERB_PAUSE,
    JOB_VERB_RESUME,
    JOB_VERB_SET_SPEED,
    JOB_VERB_COMPLETE,
    JOB_VERB_FINALIZE,
    JOB_VERB_DISMISS,
    JOB_VERB_CHANGE,
    JOB_VERB__MAX,
} BlockJobVerb;

/* BlockdevOnError */
typedef enum {
    BLOCK_ERROR_REPORT,
    BLOCK_ERROR_IGNORE,
    BLOCK_ERROR_ENOSPC,
    BLOCK_ERROR_STOP,
    BLOCK_ERROR_AUTO,
} BlockErrorPolicy;

/* What a job does about one failed request (block_job_error_action). */
typedef enum {
    BLOCK_ERROR_ACTION_REPORT,   /* fail the job with the error */
    BLOCK_ERROR_ACTION_IGNORE,   /* go on; the job retries the range */
    BLOCK_ERROR_ACTION_STOP,     /* paused until resumed; then retry */
} BlockErrorAction;

typedef struct BlockJob BlockJob;

typedef struct BlockJobDriver {
    BlockJobType type;
    size_t instance_size;           /* >= sizeof(BlockJob); zeroed */
    /*
     * Worker thread: do the work, calling block_job_pause_point() between
     * chunks and returning early (any value) once block_job_is_cancelled().
     * Returns 0 or -errno.
     */
    int (*run)(BlockJob *job);
    /* Main thread, job ready: ask run() to converge and return (optional). */
    void (*complete)(BlockJob *job);
    /* Main thread, run() succeeded: apply graph changes (optional). */
    bool (*prepare)(BlockJob *job, GError **errp);
    /* Main thread, run() failed, was cancelled, or prepare failed. */
    void (*abort)(BlockJob *job);
    /* Main thread, last: release what the job holds (optional). */
    void (*clean)(BlockJob *job);
    /* Extra members for query-block-jobs (optional). */
    void (*query)(BlockJob *job, json_t *info);
} BlockJobDriver;

struct BlockJob {
    const BlockJobDriver *drv;
    char *id;
    /* control state: guarded by the jobs lock (block_job_lock) */
    BlockJobStatus status;
    int pause_count;             /* >0: run() parks at its next pause point */
    bool user_paused;            /* paused by job-pause (or error stop) */
    bool parked;                 /* run() is waiting in a pause point */
    bool cancelled;
    bool force_cancel;           /* cancel a ready mirror without a copy */
    bool complete_requested;
    bool finished;               /* run() returned */
    bool auto_finalize;
    bool auto_dismiss;
    int64_t speed;               /* bytes/s; 0: unlimited */
    int ret;                     /* run()'s result, then the final result */
    char *error;                 /* the error text when ret < 0 */
    int io_status;               /* 0 ok, 1 failed, 2 nospace */
    BlockErrorPolicy on_source_error;
    BlockErrorPolicy on_target_error;
    /* progress: atomic; "len"/"offset" in query-block-jobs */
    int64_t progress_current;
    int64_t progress_total;
    /* rate limit: the job thread only */
    int64_t slice_start_ns;
    int64_t slice_bytes;
    GCond cond;                  /* wakes run() (resume, cancel, speed) */
    GThread *thread;
    BlockJobStatus last_visible; /* for ready/standby bookkeeping */
};

/* -- the registry and the control side (main thread) ---------------------- */

/* The jobs lock: guards every job's control state. */
void block_job_lock(void);
void block_job_unlock(void);

/*
 * Create a job (status created) with a unique id; does not start it.
 * auto_finalize/auto_dismiss as QMP's.  Returns NULL with errp set.
 */
BlockJob *block_job_create(const BlockJobDriver *drv, const char *id,
                           int64_t speed, bool auto_finalize,
                           bool auto_dismiss, GError **errp);
/* Start run() on a worker thread: created -> running. */
void block_job_start(BlockJob *job);
/* Undo a created job that never started (creation failed later). */
void block_job_early_fail(BlockJob *job);

BlockJob *block_job_find(const char *id);
/* Every job, in creation order; the list is g_ptr_array_unref'ed by caller. */
GPtrArray *block_job_list(void);

/* Verbs: check the state table, then act.  False with errp set. */
bool block_job_user_pause(BlockJob *job, GError **errp);
bool block_job_user_resume(BlockJob *job, GError **errp);
/* force: for a ready mirror, abandon instead of completing without pivot. */
bool block_job_user_cancel(BlockJob *job, bool force, GError **errp);
bool block_job_user_complete(BlockJob *job, GError **errp);
bool block_job_finalize(BlockJob *job, GError **errp);
bool block_job_dismiss(BlockJob *job, GError **errp);
bool block_job_set_speed(BlockJob *job, int64_t speed, GError **errp);

/* Cancel every job and wait for them (daemon shutdown). */
void block_job_cancel_all_sync(void);
/* Run the default main context until the job has concluded (tests). */
void block_job_wait_concluded(BlockJob *job);

/* -- for job drivers (worker thread) --------------------------------------- */

bool block_job_is_cancelled(BlockJob *job);
/* Park here while paused; returns with the job running (or cancelled). */
void block_job_pause_point(BlockJob *job);
/* Account `bytes` against the speed limit, sleeping as needed. */
void block_job_ratelimit(BlockJob *job, int64_t bytes);
/* Sleep up to ns, woken early by cancel, pause, complete, speed change. */
void block_job_sleep_ns(BlockJob *job, int64_t ns);
/* running -> ready, emitting BLOCK_JOB_READY. */
void block_job_transition_to_ready(BlockJob *job);
bool block_job_is_ready(BlockJob *job);
bool block_job_complete_requested(BlockJob *job);
void block_job_progress_set_total(BlockJob *job, int64_t total);
void block_job_progress_add(BlockJob *job, int64_t done);
void block_job_progress_add_total(BlockJob *job, int64_t more);

/*
 * A request of the job failed with ret (< 0): decide by the job's policy
 * for that side, emit BLOCK_JOB_ERROR, and for STOP park until resumed.
 */
BlockErrorAction block_job_error_action(BlockJob *job, bool is_read,
                                        bool on_source, int ret);

/* -- names and events ------------------------------------------------------ */

const char *block_job_type_name(BlockJobType type);
const char *block_job_status_name(BlockJobStatus st);
bool block_job_parse_on_error(const char *s, BlockErrorPolicy *out,
                              GError **errp);

/*
 * Where events go: the QMP layer installs qmp_event_emit; data is stolen.
 * Callable from any thread.  NULL drops events (tools, tests).
 */
typedef void (*BlockJobEventSink)(const char *name, json_t *data);
void block_job_set_event_sink(BlockJobEventSink sink);

/* QMP's JobInfo and BlockJobInfo for a job. */
json_t *block_job_info(BlockJob *job);
json_t *block_job_block_info(BlockJob *job);

#endif
