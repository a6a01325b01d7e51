/*
 * key=value option strings and json: specs to nested JSON objects, and the
 * typed getters drivers and commands read them with.
 */
#include "config.h"

#include <string.h>

#include "common/error.h"
#include "common/opts.h"
#include "common/units.h"

/* Read up to an unescaped delimiter; ",," is a comma.  Returns the token. */
static char *read_token(const char **pp, const char *delims)
{
    GString *s = g_string_new(NULL);
    const char *p = *pp;

    while (*p) {
        if (*p == ',' && p[1] == ',') {
            g_string_append_c(s, ',');
            p += 2;
            continue;
        }
        if (strchr(delims, *p)) {
            break;
        }
        g_string_append_c(s, *p++);
    }
    *pp = p;
    return g_string_free(s, FALSE);
}

/* Store value at a dotted path, creating intermediate objects. */
static bool set_path(json_t *root, const char *path, json_t *value,
                     GError **errp)
{
    g_auto(GStrv) parts = g_strsplit(path, ".", -1);
    json_t *cur = root;
    guint n = g_strv_length(parts);

    for (guint i = 0; i < n; i++) {
        if (!*parts[i]) {
            ferry_error_set(errp, FERRY_ERROR_INVALID,
                            "invalid option name '%s'", path);
            json_decref(value);
            return false;
        }
        if (i == n - 1) {
            json_t *old = json_object_get(cur, parts[i]);
            if (old && json_is_object(old) != json_is_object(value)) {
                ferry_error_set(errp, FERRY_ERROR_INVALID,
                                "option '%s' is given both as a value and "
                                "as a group", path);
                json_decref(value);
                return false;
            }
            if (old && json_is_object(old)) {
                ferry_opts_merge(old, value);
                json_decref(value);
            } else {
                json_object_set_new(cur, parts[i], value);
            }
            return true;
        }
        json_t *next = json_object_get(cur, parts[i]);
        if (!next) {
            next = json_object();
            json_object_set_new(cur, parts[i], next);
        } else if (!json_is_object(next)) {
            ferry_error_set(errp, FERRY_ERROR_INVALID,
                            "option '%s' is given both as a value and as a "
                            "group", path);
            json_decref(value);
            return false;
        }
        cur = next;
    }
    return true;
}

json_t *ferry_opts_parse(const char *str, const char *implied_key,
                         GError **errp)
{
    json_t *root = json_object();
    const char *p = str;
    bool first = true;

    while (*p) {
        g_autofree char *key = read_token(&p, "=,");
        if (*p != '=') {
            if (first && implied_key) {
                if (!set_path(root, implied_key, json_string(key), errp)) {
                    goto fail;
                }
            } else {
                ferry_error_set(errp, FERRY_ERROR_INVALID,
                                "expected key=value in '%s' but found '%s'",
                                str, key);
                goto fail;
            }
        } else {
            p++;
            g_autofree char *val = read_token(&p, ",");
            if (!*key) {
                ferry_error_set(errp, FERRY_ERROR_INVALID,
                                "empty option name in '%s'", str);
                goto fail;
            }
            if (!set_path(root, key, json_string(val), errp)) {
                goto fail;
            }
        }
        first = false;
        if (*p == ',') {
            p++;
        }
    }
    return root;
fail:
    json_decref(root);
    return NULL;
}

bool ferry_opts_expand_dots(json_t *obj, GError **errp)
{
    g_autoptr(GPtrArray) dotted = g_ptr_array_new_with_free_func(g_free);
    const char *key;
    json_t *val;

    json_object_foreach(obj, key, val) {
        if (json_is_object(val) && !ferry_opts_expand_dots(val, errp)) {
            return false;
        }
        if (strchr(key, '.')) {
            g_ptr_array_add(dotted, g_strdup(key));
        }
    }
    for (guint i = 0; i < dotted->len; i++) {
        const char *k = dotted->pdata[i];
        val = json_incref(json_object_get(obj, k));
        json_object_del(obj, k);
        if (!set_path(obj, k, val, errp)) {
            return false;
        }
    }
    return true;
}

json_t *ferry_opts_parse_json(const char *text, GError **errp)
{
    json_error_t jerr;
    json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);

    if (!root) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "json: spec is not valid JSON: %s at column %d",
                        jerr.text, jerr.column);
        return NULL;
    }
    if (!json_is_object(root)) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "json: spec must be a JSON object");
        json_decref(root);
        return NULL;
    }
    if (!ferry_opts_expand_dots(root, errp)) {
        json_decref(root);
        return NULL;
    }
    return root;
}

void ferry_opts_merge(json_t *dst, json_t *src)
{
    const char *key;
    json_t *val;

    json_object_foreach(src, key, val) {
        json_t *old = json_object_get(dst, key);
        if (old && json_is_object(old) && json_is_object(val)) {
            ferry_opts_merge(old, val);
        } else {
            json_object_set(dst, key, val);
        }
    }
}

const char *ferry_opt_str(json_t *obj, const char *key)
{
    json_t *v = obj ? json_object_get(obj, key) : NULL;
    return json_is_string(v) ? json_string_value(v) : NULL;
}

char *ferry_opt_to_string(json_t *val)
{
    if (json_is_string(val)) {
        return g_strdup(json_string_value(val));
    }
    char *s = json_dumps(val, JSON_ENCODE_ANY | JSON_COMPACT);
    char *r = g_strdup(s ? s : "?");
    free(s);
    return r;
}

bool ferry_opt_bool(json_t *obj, const char *key, bool def, bool *out,
                    GError **errp)
{
    json_t *v = obj ? json_object_get(obj, key) : NULL;
    const char *s;

    if (!v || json_is_null(v)) {
        *out = def;
        return true;
    }
    if (json_is_boolean(v)) {
        *out = json_is_true(v);
        return true;
    }
    s = json_is_string(v) ? json_string_value(v) : "";
    if (!strcmp(s, "on") || !strcmp(s, "true") || !strcmp(s, "yes")) {
        *out = true;
        return true;
    }
    if (!strcmp(s, "off") || !strcmp(s, "false") || !strcmp(s, "no")) {
        *out = false;
        return true;
    }
    g_autofree char *txt = ferry_opt_to_string(v);
    ferry_error_set(errp, FERRY_ERROR_INVALID,
                    "parameter '%s' expects 'on' or 'off', not '%s'", key, txt);
    return false;
}

static bool opt_number(json_t *obj, const char *key, uint64_t def,
                       uint64_t *out, bool allow_suffix, GError **errp)
{
    json_t *v = obj ? json_object_get(obj, key) : NULL;

    if (!v || json_is_null(v)) {
        *out = def;
        return true;
    }
    if (json_is_integer(v)) {
        if (json_integer_value(v) < 0) {
            ferry_error_set(errp, FERRY_ERROR_INVALID,
                            "parameter '%s' must not be negative", key);
            return false;
        }
        *out = json_integer_value(v);
        return true;
    }
    if (json_is_string(v)) {
        return allow_suffix
            ? ferry_parse_size(json_string_value(v), key, out, errp)
            : ferry_parse_uint(json_string_value(v), key, out, errp);
    }
    ferry_error_set(errp, FERRY_ERROR_INVALID,
                    "parameter '%s' expects a number", key);
    return false;
}

bool ferry_opt_size(json_t *obj, const char *key, uint64_t def,
                    uint64_t *out, GError **errp)
{
    return opt_number(obj, key, def, out, true, errp);
}

bool ferry_opt_uint(json_t *obj, const char *key, uint64_t def,
                    uint64_t *out, GError **errp)
{
    return opt_number(obj, key, def, out, false, errp);
}

bool ferry_opts_check_known(json_t *obj, const char *const *known,
                            const char *ctx, GError **errp)
{
    const char *key;
    json_t *val;

    json_object_foreach(obj, key, val) {
        bool ok = false;
        for (const char *const *k = known; k && *k; k++) {
            if (!strcmp(*k, key)) {
                ok = true;
                break;
            }
        }
        if (!ok) {
            ferry_error_set(errp, FERRY_ERROR_INVALID,
                            "%s does not support the option '%s'", ctx, key);
            return false;
        }
    }
    return true;
}
