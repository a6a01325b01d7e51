/*
 * Parsing `--drive NODE-SPEC[,options]`: the node spec is anything
 * block_node_open() takes (a filename, key=value node options, json:{…},
 * nbd://…); the drive's own options come last and are peeled off from the
 * end, so a spec with commas of its own still reads as one.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "vmm/machine.h"

static const char *const drive_keys[] = {
    "read-only", "num-queues", "queue-size", "serial", "id", "cache",
    "format", "if", NULL,
};

static bool is_drive_key(const char *tok)
{
    for (int i = 0; drive_keys[i]; i++) {
        size_t n = strlen(drive_keys[i]);
        if (!strncmp(tok, drive_keys[i], n) && tok[n] == '=') {
            return true;
        }
    }
    return false;
}

static bool parse_bool(const char *v, bool *out)
{
    if (!strcmp(v, "on") || !strcmp(v, "true") || !strcmp(v, "yes")) {
        *out = true;
    } else if (!strcmp(v, "off") || !strcmp(v, "false") || !strcmp(v, "no")) {
        *out = false;
    } else {
        return false;
    }
    return true;
}

static bool apply_drive_opt(VmmDriveConf *d, const char *tok, GError **errp)
{
    const char *v = strchr(tok, '=') + 1;
    char *end;
    long n;

    if (g_str_has_prefix(tok, "read-only=")) {
        if (!parse_bool(v, &d->read_only)) {
            goto bad;
        }
    } else if (g_str_has_prefix(tok, "num-queues=") ||
               g_str_has_prefix(tok, "queue-size=")) {
        n = strtol(v, &end, 10);
        if (*end || n < 1 || n > 32768) {
            goto bad;
        }
        if (tok[0] == 'n') {
            d->num_queues = (int)n;
        } else {
            d->queue_size = (int)n;
        }
    } else if (g_str_has_prefix(tok, "serial=")) {
        d->serial = g_strdup(v);
    } else if (g_str_has_prefix(tok, "id=")) {
        d->id = g_strdup(v);
    } else if (g_str_has_prefix(tok, "format=")) {
        d->format = g_strdup(v);
    } else if (g_str_has_prefix(tok, "if=")) {
        if (strcmp(v, "virtio")) {
            goto bad;
        }
    } else if (g_str_has_prefix(tok, "cache=")) {
        if (!strcmp(v, "unsafe")) {
            d->cache_unsafe = true;
        } else if (!strcmp(v, "none") || !strcmp(v, "directsync")) {
            d->direct = true;
        } else if (strcmp(v, "writeback")) {
            goto bad;
        }
    }
    return true;

bad:
    ferry_error_set(errp, FERRY_ERROR_INVALID, "--drive: bad option '%s'", tok);
    return false;
}

void vmm_drive_conf_free(VmmDriveConf *d)
{
    if (d) {
        g_free(d->spec);
        g_free(d->format);
        g_free(d->id);
        g_free(d->serial);
        g_free(d);
    }
}

VmmDriveConf *vmm_parse_drive(const char *arg, GError **errp)
{
    VmmDriveConf *d = g_new0(VmmDriveConf, 1);
    g_autofree char *spec = NULL;
    g_autofree char *tail = NULL;
    g_auto(GStrv) toks = NULL;
    int ntok, first_opt;

    if (g_str_has_prefix(arg, "json:")) {
        const char *close = strrchr(arg, '}');
        if (!close) {
            ferry_error_set(errp, FERRY_ERROR_INVALID,
                            "--drive: json: spec without a closing brace");
            vmm_drive_conf_free(d);
            return NULL;
        }
        spec = g_strndup(arg, close + 1 - arg);
        tail = g_strdup(close[1] == ',' ? close + 2 : close + 1);
        toks = g_strsplit(tail, ",", -1);
        for (int i = 0; toks[i]; i++) {
            if (*toks[i] && (!is_drive_key(toks[i]) ||
                             !apply_drive_opt(d, toks[i], errp))) {
                if (errp && !*errp) {
                    ferry_error_set(errp, FERRY_ERROR_INVALID,
                                    "--drive: unknown option '%s'", toks[i]);
                }
                vmm_drive_conf_free(d);
                return NULL;
            }
        }
        d->spec = g_steal_pointer(&spec);
        return d;
    }
    toks = g_strsplit(arg, ",", -1);
    ntok = g_strv_length(toks);
    first_opt = ntok;
    while (first_opt > 1 && is_drive_key(toks[first_opt - 1])) {
        first_opt--;
    }
    for (int i = first_opt; i < ntok; i++) {
        if (!apply_drive_opt(d, toks[i], errp)) {
            vmm_drive_conf_free(d);
            return NULL;
        }
    }
    {
        char *saved = toks[first_opt];
        toks[first_opt] = NULL;
        spec = g_strjoinv(",", toks);
        toks[first_opt] = saved;
    }
    /* QEMU's -drive file=PATH spelling, when file= is all the spec says */
    if (g_str_has_prefix(spec, "file=") && !strchr(spec, ',')) {
        d->spec = g_strdup(spec + 5);
    } else {
        d->spec = g_steal_pointer(&spec);
    }
    if (!*d->spec) {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "--drive: empty node spec");
        vmm_drive_conf_free(d);
        return NULL;
    }
    return d;
}
