/*
 * Log levels and trace categories; everything goes to stderr, one line per
 * message, prefixed by the program name so it reads like qemu-img's errors.
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>

#include "common/log.h"

uint32_t ferry_trace_mask;
FerryLogLevel ferry_log_level = FERRY_LOG_WARNING;
static const char *log_progname = "ferry";

static const struct {
    const char *name;
    uint32_t bit;
} trace_names[] = {
    { "blockdev", FERRY_TRACE_BLOCKDEV },
    { "qcow2", FERRY_TRACE_QCOW2 },
    { "nbd", FERRY_TRACE_NBD },
    { "qmp", FERRY_TRACE_QMP },
    { "migrate", FERRY_TRACE_MIGRATE },
    { "img", FERRY_TRACE_IMG },
    { "vmm", FERRY_TRACE_VMM },
    { "devices", FERRY_TRACE_DEVICES },
    { "cpu", FERRY_TRACE_CPU },
};

void ferry_log_init(const char *progname)
{
    const char *trace = g_getenv("FERRY_TRACE");
    const char *level = g_getenv("FERRY_LOG");

    if (progname) {
        log_progname = progname;
    }
    if (trace) {
        g_auto(GStrv) words = g_strsplit(trace, ",", -1);
        for (char **w = words; *w; w++) {
            for (size_t i = 0; i < G_N_ELEMENTS(trace_names); i++) {
                if (!strcmp(*w, trace_names[i].name) || !strcmp(*w, "all")) {
                    ferry_trace_mask |= trace_names[i].bit;
                }
            }
        }
    }
    if (level) {
        if (!strcmp(level, "error")) {
            ferry_log_level = FERRY_LOG_ERROR;
        } else if (!strcmp(level, "info")) {
            ferry_log_level = FERRY_LOG_INFO;
        } else if (!strcmp(level, "debug")) {
            ferry_log_level = FERRY_LOG_DEBUG;
        }
    }
}

void ferry_log(FerryLogLevel level, const char *fmt, ...)
{
    static const char *const prefix[] = { "", "warning: ", "info: ", "debug: " };
    g_autofree char *msg = NULL;
    va_list ap;

    if (level > ferry_log_level) {
        return;
    }
    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    /* One fprintf per line so lines from threads do not interleave. */
    fprintf(stderr, "%s: %s%s\n", log_progname, prefix[level], msg);
}

void ferry_trace_emit(const char *category, const char *fmt, ...)
{
    g_autofree char *msg = NULL;
    g_autofree char *cat = g_ascii_strdown(category, -1);
    struct timeval tv;
    va_list ap;

    gettimeofday(&tv, NULL);
    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    fprintf(stderr, "%ld.%06ld trace %s %s\n", (long)tv.tv_sec,
            (long)tv.tv_usec, cat, msg);
}
