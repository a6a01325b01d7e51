/*
 * Errors: the GError domain every control path reports into, and helpers
 * that add errno text.  Data paths return 0 or -errno instead (STYLE.md 3).
 */
#ifndef FERRY_COMMON_ERROR_H
#define FERRY_COMMON_ERROR_H

#include <glib.h>

#define FERRY_ERROR (ferry_error_quark())
GQuark ferry_error_quark(void);

/* The code says what kind of failure it was; QMP maps these to classes. */
typedef enum {
    FERRY_ERROR_FAILED,       /* anything else (QMP GenericError) */
    FERRY_ERROR_INVALID,      /* bad argument or option */
    FERRY_ERROR_NOT_FOUND,    /* no such node, file, snapshot, bitmap */
    FERRY_ERROR_LOCKED,       /* another user holds a conflicting lock */
    FERRY_ERROR_PERMISSION,   /* a permission the user did not declare */
    FERRY_ERROR_CORRUPT,      /* on-disk structure is inconsistent */
    FERRY_ERROR_UNSUPPORTED,  /* valid, but ferry cannot do it (yet) */
    FERRY_ERROR_IO,           /* a read or write failed */
    FERRY_ERROR_NO_SPACE,     /* ENOSPC */
} FerryErrorCode;

/* Like g_set_error(), with ": <strerror(errnum)>" appended. errnum >= 0. */
void ferry_error_setg_errno(GError **errp, int errnum, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);

/* The FerryErrorCode that fits an errno value. */
FerryErrorCode ferry_error_code_from_errno(int errnum);

#define ferry_error_setg(errp, ...) \
    g_set_error((errp), FERRY_ERROR, FERRY_ERROR_FAILED, __VA_ARGS__)
#define ferry_error_set(errp, code, ...) \
    g_set_error((errp), FERRY_ERROR, (code), __VA_ARGS__)

#endif
