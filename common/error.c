/*
 * The ferry GError domain and errno helpers.
 */
#include "config.h"

#include <errno.h>
#include <string.h>

#include "common/error.h"

G_DEFINE_QUARK(ferry-error-quark, ferry_error)

FerryErrorCode ferry_error_code_from_errno(int errnum)
{
    switch (errnum) {
    case ENOENT:
        return FERRY_ERROR_NOT_FOUND;
    case EINVAL:
    case ERANGE:
        return FERRY_ERROR_INVALID;
    case EAGAIN:
    case EBUSY:
        return FERRY_ERROR_LOCKED;
    case EPERM:
    case EACCES:
    case EROFS:
        return FERRY_ERROR_PERMISSION;
    case ENOTSUP:
        return FERRY_ERROR_UNSUPPORTED;
    case ENOSPC:
    case EDQUOT:
        return FERRY_ERROR_NO_SPACE;
    case EIO:
        return FERRY_ERROR_IO;
    case EUCLEAN:
        return FERRY_ERROR_CORRUPT;
    default:
        return FERRY_ERROR_FAILED;
    }
}

void ferry_error_setg_errno(GError **errp, int errnum, const char *fmt, ...)
{
    va_list ap;
    g_autofree char *msg = NULL;

    if (!errp) {
        return;
    }
    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error(errp, FERRY_ERROR, ferry_error_code_from_errno(errnum),
                "%s: %s", msg, g_strerror(errnum));
}
