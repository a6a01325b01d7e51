/*
 * Progress reporting for img convert/commit/rebase and friends.
 */
#include "config.h"

#include <stdio.h>

#include "common/progress.h"

struct FerryProgress {
    FerryProgressMode mode;
    char *op;
    uint64_t total;          /* bytes; atomic */
    uint64_t done;           /* bytes; atomic */
    gint64 start_us;         /* monotonic */
    gint64 last_print_us;    /* monotonic; guarded by lock */
    double last_percent;     /* guarded by lock */
    GMutex lock;             /* serialises printing only */
};

bool ferry_progress_parse_mode(const char *s, FerryProgressMode *mode)
{
    if (!g_strcmp0(s, "human")) {
        *mode = FERRY_PROGRESS_HUMAN;
    } else if (!g_strcmp0(s, "json")) {
        *mode = FERRY_PROGRESS_JSON;
    } else if (!g_strcmp0(s, "none")) {
        *mode = FERRY_PROGRESS_NONE;
    } else {
        return false;
    }
    return true;
}

static void print_locked(FerryProgress *p, bool final, bool complete)
{
    uint64_t done = __atomic_load_n(&p->done, __ATOMIC_RELAXED);
    uint64_t total = p->total;
    double percent = total ? 100.0 * (double)done / (double)total : 100.0;
    gint64 now = g_get_monotonic_time();
    double secs = (double)(now - p->start_us) / 1e6;

    if (final && complete) {
        percent = 100.0;
        done = total;
    }
    if (percent > 100.0) {
        percent = 100.0;
    }
    if (p->mode == FERRY_PROGRESS_HUMAN) {
        printf("    (%3.2f/100%%)\r", percent);
        if (final) {
            printf("\n");
        }
        fflush(stdout);
    } else if (p->mode == FERRY_PROGRESS_JSON) {
        fprintf(stderr,
                "{\"operation\": \"%s\", \"done\": %" G_GUINT64_FORMAT
                ", \"total\": %" G_GUINT64_FORMAT ", \"percent\": %.2f"
                ", \"rate\": %.0f, \"elapsed\": %.3f, \"final\": %s}\n",
                p->op, done, total, percent,
                secs > 0 ? (double)done / secs : 0.0, secs,
                final ? "true" : "false");
        fflush(stderr);
    }
    p->last_print_us = now;
    p->last_percent = percent;
}

FerryProgress *ferry_progress_new(FerryProgressMode mode, const char *op,
                                  uint64_t total_bytes)
{
    FerryProgress *p = g_new0(FerryProgress, 1);

    p->mode = mode;
    p->op = g_strdup(op);
    p->total = total_bytes;
    p->start_us = g_get_monotonic_time();
    g_mutex_init(&p->lock);
    if (mode != FERRY_PROGRESS_NONE) {
        g_mutex_lock(&p->lock);
        print_locked(p, false, false);
        g_mutex_unlock(&p->lock);
    }
    return p;
}

void ferry_progress_set_total(FerryProgress *p, uint64_t total_bytes)
{
    if (p) {
        p->total = total_bytes;
    }
}

void ferry_progress_add(FerryProgress *p, uint64_t bytes)
{
    gint64 now;

    if (!p) {
        return;
    }
    __atomic_add_fetch(&p->done, bytes, __ATOMIC_RELAXED);
    if (p->mode == FERRY_PROGRESS_NONE) {
        return;
    }
    now = g_get_monotonic_time();
    if (now - p->last_print_us < 100000 || !g_mutex_trylock(&p->lock)) {
        return;
    }
    if (now - p->last_print_us >= 100000) {
        print_locked(p, false, false);
    }
    g_mutex_unlock(&p->lock);
}

static void progress_end(FerryProgress *p, bool complete)
{
    if (!p) {
        return;
    }
    if (p->mode != FERRY_PROGRESS_NONE) {
        g_mutex_lock(&p->lock);
        print_locked(p, true, complete);
        g_mutex_unlock(&p->lock);
    }
    g_mutex_clear(&p->lock);
    g_free(p->op);
    g_free(p);
}

void ferry_progress_finish(FerryProgress *p)
{
    progress_end(p, true);
}

void ferry_progress_abort(FerryProgress *p)
{
    progress_end(p, false);
}
