/*
 * Progress of long operations: qemu-img's "(42.00/100%)" line on a terminal
 * with -p, or one JSON object per line with --progress=json so tools parse
 * numbers instead of scraping text.  Updates are thread-safe and cheap; the
 * output is throttled to about ten lines a second.
 */
#ifndef FERRY_COMMON_PROGRESS_H
#define FERRY_COMMON_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>

#include <glib.h>

typedef enum {
    FERRY_PROGRESS_NONE,
    FERRY_PROGRESS_HUMAN,   /* -p */
    FERRY_PROGRESS_JSON,    /* --progress=json */
} FerryProgressMode;

typedef struct FerryProgress FerryProgress;

/* Parse the argument of --progress (human|json|none); false if unknown. */
bool ferry_progress_parse_mode(const char *s, FerryProgressMode *mode);

/* Output goes to stdout for HUMAN (as qemu-img) and stderr for JSON. */
FerryProgress *ferry_progress_new(FerryProgressMode mode, const char *op,
                                  uint64_t total_bytes);
void ferry_progress_set_total(FerryProgress *p, uint64_t total_bytes);
void ferry_progress_add(FerryProgress *p, uint64_t bytes);   /* thread-safe */
/* Print the final 100% line (if any) and free. NULL is fine. */
void ferry_progress_finish(FerryProgress *p);
/*
 * The operation stopped early (error, or compare found a difference): end
 * the line where it stands, without claiming 100%, and free.  NULL is fine.
 */
void ferry_progress_abort(FerryProgress *p);

#endif
