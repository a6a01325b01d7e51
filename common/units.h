/*
 * Sizes as people type them ("64k", "1.5G", "+10G") and as qemu-img prints
 * them ("1 GiB", "196 KiB"), so scripts that parse either carry over.
 */
#ifndef FERRY_COMMON_UNITS_H
#define FERRY_COMMON_UNITS_H

#include <stdbool.h>
#include <stdint.h>

#include <glib.h>

/*
 * Parse a size: digits with an optional fraction and a binary suffix
 * (B, K, M, G, T, P, E; either case; no suffix means bytes).  The result
 * must fit in int64_t.  Returns false and sets errp naming `what`.
 */
bool ferry_parse_size(const char *str, const char *what, uint64_t *out,
                      GError **errp);

/* "1 GiB", "512 B", "1.5 MiB": three significant digits, as qemu-img. */
char *ferry_size_to_str(uint64_t bytes);

/* Parse a non-negative decimal integer that fits in int64_t (no suffix). */
bool ferry_parse_uint(const char *str, const char *what, uint64_t *out,
                      GError **errp);

#endif
