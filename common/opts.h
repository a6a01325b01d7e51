/*
 * Option strings as QEMU spells them, turned into JSON objects:
 *   "driver=qcow2,file.filename=a.img,,b"  ->  {"driver":"qcow2",
 *                                               "file":{"filename":"a.img,b"}}
 * Dotted keys nest, ",," is a literal comma.  json:{...} specs go through the
 * same dot expansion, so {"file.filename": "x"} and {"file": {...}} agree.
 * Values from key=value strings are JSON strings; the typed getters below
 * accept either a string or the JSON type.
 */
#ifndef FERRY_COMMON_OPTS_H
#define FERRY_COMMON_OPTS_H

#include <stdbool.h>
#include <stdint.h>

#include <glib.h>
#include <jansson.h>

/* g_autoptr(json_t) for the JSON objects options live in. */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(json_t, json_decref)

/*
 * Parse "k=v,k2=v2".  If implied_key is set, a first element without '='
 * is the value of that key ("a.img,format=raw" with implied "filename").
 */
json_t *ferry_opts_parse(const char *str, const char *implied_key,
                         GError **errp);

/* Parse the text after "json:" and expand its dotted keys. */
json_t *ferry_opts_parse_json(const char *text, GError **errp);

/* Turn {"a.b": 1} into {"a": {"b": 1}} in place, recursively. */
bool ferry_opts_expand_dots(json_t *obj, GError **errp);

/* Merge src into dst; keys in src win. Objects merge recursively. */
void ferry_opts_merge(json_t *dst, json_t *src);

/* The string value of key, or NULL when absent or not a string. */
const char *ferry_opt_str(json_t *obj, const char *key);

/* Typed getters: absent -> def; present but malformed -> error naming key. */
bool ferry_opt_bool(json_t *obj, const char *key, bool def, bool *out,
                    GError **errp);
bool ferry_opt_size(json_t *obj, const char *key, uint64_t def,
                    uint64_t *out, GError **errp);
bool ferry_opt_uint(json_t *obj, const char *key, uint64_t def,
                    uint64_t *out, GError **errp);

/*
 * Fail with "<ctx> does not support the option 'x'" if obj has a key not in
 * the NULL-terminated list `known`.  Keys whose value is an object are
 * checked only by name (children check their own options).
 */
bool ferry_opts_check_known(json_t *obj, const char *const *known,
                            const char *ctx, GError **errp);

/* A value as a string, whatever its JSON type (for messages); caller frees. */
char *ferry_opt_to_string(json_t *val);

#endif
