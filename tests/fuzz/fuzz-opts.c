/*
 * libFuzzer harness: node specs as a user or a QMP client types them
 * (json:{…}, key=value,… with ",," escapes and dotted keys).
 */
#include "config.h"

#include <stdint.h>
#include <string.h>

#include <glib.h>

#include "blockdev/block.h"
#include "common/opts.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    g_autofree char *s = g_strndup((const char *)data, size);
    GError *err = NULL;
    json_t *o;

    o = block_spec_to_opts(s, false, &err);
    g_clear_error(&err);
    json_decref(o);
    o = ferry_opts_parse(s, "filename", &err);
    g_clear_error(&err);
    if (o) {
        bool b;
        uint64_t n;
        ferry_opt_bool(o, "read-only", false, &b, &err);
        g_clear_error(&err);
        ferry_opt_size(o, "size", 0, &n, &err);
        g_clear_error(&err);
        json_decref(o);
    }
    return 0;
}
