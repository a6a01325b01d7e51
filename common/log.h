/*
 * Logging with levels, and trace points by category (FERRY_TRACE=qcow2,nbd).
 * A trace point costs one load and a branch when its category is off.
 */
#ifndef FERRY_COMMON_LOG_H
#define FERRY_COMMON_LOG_H

#include <stdbool.h>
#include <stdint.h>

#include <glib.h>

typedef enum {
    FERRY_LOG_ERROR,
    FERRY_LOG_WARNING,
    FERRY_LOG_INFO,
    FERRY_LOG_DEBUG,
} FerryLogLevel;

/* Trace categories are directory names. */
typedef enum {
    FERRY_TRACE_BLOCKDEV = 1u << 0,
    FERRY_TRACE_QCOW2    = 1u << 1,
    FERRY_TRACE_NBD      = 1u << 2,
    FERRY_TRACE_QMP      = 1u << 3,
    FERRY_TRACE_MIGRATE  = 1u << 4,
    FERRY_TRACE_IMG      = 1u << 5,
    FERRY_TRACE_VMM      = 1u << 6,
    FERRY_TRACE_DEVICES  = 1u << 7,
    FERRY_TRACE_CPU      = 1u << 8,
} FerryTraceCategory;

extern uint32_t ferry_trace_mask;      /* set once at start, then read-only */
extern FerryLogLevel ferry_log_level;  /* messages above this are dropped */

/* Reads FERRY_TRACE and FERRY_LOG (error|warning|info|debug) once. */
void ferry_log_init(const char *progname);

void ferry_log(FerryLogLevel level, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
void ferry_trace_emit(const char *category, const char *fmt, ...)
    G_GNUC_PRINTF(2, 3);

#define ferry_error_report(...) ferry_log(FERRY_LOG_ERROR, __VA_ARGS__)
#define ferry_warn(...)         ferry_log(FERRY_LOG_WARNING, __VA_ARGS__)
#define ferry_info(...)         ferry_log(FERRY_LOG_INFO, __VA_ARGS__)
#define ferry_debug(...)        ferry_log(FERRY_LOG_DEBUG, __VA_ARGS__)

/* FERRY_TRACE_POINT(QCOW2, "node=%s l2-alloc off=0x%" PRIx64, name, off) */
#define FERRY_TRACE_POINT(cat, ...)                                     \
    do {                                                                \
        if (G_UNLIKELY(ferry_trace_mask & FERRY_TRACE_##cat)) {         \
            ferry_trace_emit(#cat, __VA_ARGS__);                        \
        }                                                               \
    } while (0)

#endif
