/*
 * JSON text exactly as qemu-img prints it, so scripts that diff or hash
 * "qemu-img ... --output=json" get the same bytes from ferry.  Two things
 * differ from jansson's own dump:
 *  - key order: QEMU builds its output in a QDict, a hash table of 512
 *    buckets walked in bucket order (newest key first within a bucket), so
 *    "qemu-img check" starts with "image-end-offset".  The bucket comes from
 *    the TDB string hash QDict uses.
 *  - layout: empty arrays and objects still get a line break ("[\n    ]"),
 *    and every character outside printable ASCII is a \uXXXX escape.
 */
#include "config.h"

#include <string.h>

#include "tools/img/img.h"

#define QDICT_BUCKETS 512

/* The TDB hash (Samba's trivial database), which QDict buckets keys by. */
static uint32_t tdb_hash(const char *key)
{
    size_t len = strlen(key);
    uint32_t value = 0x238F13AFu * (uint32_t)len;

    for (size_t i = 0; i < len; i++) {
        value += (uint32_t)(unsigned char)key[i] << (i * 5 % 24);
    }
    return 1103515243u * value + 12345u;
}

typedef struct KeySlot {
    const char *key;
    json_t *value;
    uint32_t bucket;
    size_t index;       /* insertion order */
} KeySlot;

static int slot_cmp(const void *a, const void *b)
{
    const KeySlot *x = a, *y = b;

    if (x->bucket != y->bucket) {
        return x->bucket < y->bucket ? -1 : 1;
    }
    /* QDict inserts at the head of a bucket: newest first. */
    return x->index > y->index ? -1 : x->index < y->index;
}

json_t *img_json_qemu_order(json_t *json)
{
    if (json_is_object(json)) {
        size_t n = json_object_size(json), i = 0;
        g_autofree KeySlot *slots = g_new0(KeySlot, MAX(n, 1));
        json_t *out = json_object();
        const char *key;
        json_t *val;

        json_object_foreach(json, key, val) {
            slots[i] = (KeySlot){ key, val, tdb_hash(key) % QDICT_BUCKETS, i };
            i++;
        }
        qsort(slots, n, sizeof(*slots), slot_cmp);
        for (i = 0; i < n; i++) {
            json_object_set_new(out, slots[i].key,
                                img_json_qemu_order(slots[i].value));
        }
        return out;
    }
    if (json_is_array(json)) {
        json_t *out = json_array();
        size_t i;
        json_t *val;

        json_array_foreach(json, i, val) {
            json_array_append_new(out, img_json_qemu_order(val));
        }
        return out;
    }
    return json_incref(json);
}

/* Decode one UTF-8 sequence; -1 (and one byte consumed) if malformed. */
static int32_t utf8_next(const unsigned char **pp)
{
    const unsigned char *p = *pp;
    int32_t cp;
    int extra;

    if (p[0] < 0x80) {
        *pp = p + 1;
        return p[0];
    }
    if ((p[0] & 0xe0) == 0xc0) {
        cp = p[0] & 0x1f;
        extra = 1;
    } else if ((p[0] & 0xf0) == 0xe0) {
        cp = p[0] & 0x0f;
        extra = 2;
    } else if ((p[0] & 0xf8) == 0xf0) {
        cp = p[0] & 0x07;
        extra = 3;
    } else {
        *pp = p + 1;
        return -1;
    }
    for (int i = 1; i <= extra; i++) {
        if ((p[i] & 0xc0) != 0x80) {
            *pp = p + i;
            return -1;
        }
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    *pp = p + extra + 1;
    return cp;
}

static void quote(GString *out, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;

    g_string_append_c(out, '"');
    while (*p) {
        int32_t cp = utf8_next(&p);
        switch (cp) {
        case '"': g_string_append(out, "\\\""); break;
        case '\\': g_string_append(out, "\\\\"); break;
        case '\b': g_string_append(out, "\\b"); break;
        case '\f': g_string_append(out, "\\f"); break;
        case '\n': g_string_append(out, "\\n"); break;
        case '\r': g_string_append(out, "\\r"); break;
        case '\t': g_string_append(out, "\\t"); break;
        default:
            if (cp < 0) {
                cp = 0xfffd;
            }
            if (cp > 0xffff) {
                cp -= 0x10000;
                g_string_append_printf(out, "\\u%04X\\u%04X",
                                       0xd800 + (cp >> 10),
                                       0xdc00 + (cp & 0x3ff));
            } else if (cp < 0x20 || cp >= 0x7f) {
                g_string_append_printf(out, "\\u%04X", cp);
            } else {
                g_string_append_c(out, (char)cp);
            }
        }
    }
    g_string_append_c(out, '"');
}

static void newline(GString *out, int level)
{
    g_string_append_printf(out, "\n%*s", level * 4, "");
}

static void emit(GString *out, json_t *v, int level)
{
    const char *sep = "";

    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *key;
        json_t *val;
        g_string_append_c(out, '{');
        json_object_foreach(v, key, val) {
            g_string_append(out, sep);
            newline(out, level + 1);
            quote(out, key);
            g_string_append(out, ": ");
            emit(out, val, level + 1);
            sep = ",";
        }
        newline(out, level);
        g_string_append_c(out, '}');
        break;
    }
    case JSON_ARRAY: {
        size_t i;
        json_t *val;
        g_string_append_c(out, '[');
        json_array_foreach(v, i, val) {
            g_string_append(out, sep);
            newline(out, level + 1);
            emit(out, val, level + 1);
            sep = ",";
        }
        newline(out, level);
        g_string_append_c(out, ']');
        break;
    }
    case JSON_STRING:
        quote(out, json_string_value(v));
        break;
    case JSON_INTEGER:
        g_string_append_printf(out, "%" JSON_INTEGER_FORMAT,
                               json_integer_value(v));
        break;
    case JSON_REAL:
        g_string_append_printf(out, "%.17g", json_real_value(v));
        break;
    case JSON_TRUE:
        g_string_append(out, "true");
        break;
    case JSON_FALSE:
        g_string_append(out, "false");
        break;
    default:
        g_string_append(out, "null");
        break;
    }
}

char *img_json_to_qemu_text(json_t *json)
{
    json_t *ordered = img_json_qemu_order(json);
    GString *out = g_string_new(NULL);

    emit(out, ordered, 0);
    json_decref(ordered);
    return g_string_free(out, FALSE);
}
