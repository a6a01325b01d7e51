/*
 * Size parsing and human-readable formatting.
 */
#include "config.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/units.h"

static int suffix_shift(char c)
{
    switch (g_ascii_toupper(c)) {
    case 'B': return 0;
    case 'K': return 10;
    case 'M': return 20;
    case 'G': return 30;
    case 'T': return 40;
    case 'P': return 50;
    case 'E': return 60;
    default: return -1;
    }
}

bool ferry_parse_size(const char *str, const char *what, uint64_t *out,
                      GError **errp)
{
    const char *p = str;
    char *end;
    uint64_t whole;
    double frac = 0;
    int shift = 0;

    if (!str || !g_ascii_isdigit(*p)) {
        goto bad;
    }
    errno = 0;
    whole = g_ascii_strtoull(p, &end, 10);
    if (errno) {
        goto too_big;
    }
    if (*end == '.') {
        char *fend;
        frac = g_ascii_strtod(end, &fend);
        if (fend == end + 1) {
            goto bad;
        }
        end = fend;
    }
    if (*end) {
        shift = suffix_shift(*end);
        if (shift < 0) {
            goto bad;
        }
        end++;
        /* Accept "KiB", "kB" and "MB" spellings as binary multiples too. */
        if (*end == 'i' && shift) {
            end++;
        }
        if ((*end == 'B' || *end == 'b') && shift) {
            end++;
        }
        if (*end) {
            goto bad;
        }
    }
    if (frac && !shift) {
        goto bad;          /* "1.5" bytes is not a size */
    }
    if (shift && whole > (UINT64_C(0x7fffffffffffffff) >> shift)) {
        goto too_big;
    }
    whole <<= shift;
    if (frac) {
        double extra = frac * (double)(UINT64_C(1) << shift);
        if ((double)whole + extra > 9.2e18) {
            goto too_big;
        }
        whole += (uint64_t)extra;
    }
    if (whole > INT64_MAX) {
        goto too_big;
    }
    *out = whole;
    return true;

bad:
    ferry_error_set(errp, FERRY_ERROR_INVALID,
                    "invalid %s '%s': expected a number with an optional "
                    "suffix k, M, G, T, P or E", what, str ? str : "");
    return false;
too_big:
    ferry_error_set(errp, FERRY_ERROR_INVALID,
                    "%s '%s' is too large (at most 8 EiB - 1)", what, str);
    return false;
}

bool ferry_parse_uint(const char *str, const char *what, uint64_t *out,
                      GError **errp)
{
    char *end;
    uint64_t v;

    errno = 0;
    if (!str || !g_ascii_isdigit(*str)) {
        goto bad;
    }
    v = g_ascii_strtoull(str, &end, 10);
    if (errno || *end || v > INT64_MAX) {
        goto bad;
    }
    *out = v;
    return true;
bad:
    ferry_error_set(errp, FERRY_ERROR_INVALID,
                    "invalid %s '%s': expected a non-negative integer", what,
                    str ? str : "");
    return false;
}

char *ferry_size_to_str(uint64_t bytes)
{
    static const char *const unit[] = { "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei" };
    int exp;
    int i;

    /*
     * Pick the unit whose value is below 1000 (not 1024), so 1000 KiB
     * prints as "0.977 MiB" and never as a four-digit number.
     */
    frexp((double)bytes / (1000.0 / 1024.0), &exp);
    i = exp > 0 ? (exp - 1) / 10 : 0;
    if (i >= (int)G_N_ELEMENTS(unit)) {
        i = G_N_ELEMENTS(unit) - 1;
    }
    return g_strdup_printf("%0.3g %sB", (double)bytes / (double)(UINT64_C(1) << (i * 10)),
                           unit[i]);
}
