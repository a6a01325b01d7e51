/*
 * Incremental splitting of a QMP input stream into JSON texts.  QMP has no
 * framing: a text ends where its outermost brace closes.  This scanner only
 * tracks nesting, strings and escapes; jansson parses each complete text.
 * Recovery (qmp-spec, "Forcing the JSON parser into known-good state"): a
 * control character other than \t \r \n, or 0xFF, resets the scanner.
 */
#include "config.h"

#include <string.h>

#include "qmp/qmp.h"

void qmp_stream_init(QmpStream *st, size_t max_bytes, QmpStreamFn fn,
                     void *opaque)
{
    memset(st, 0, sizeof(*st));
    st->fn = fn;
    st->opaque = opaque;
    st->max_bytes = max_bytes ? max_bytes : QMP_STREAM_MAX_BYTES;
    st->buf = g_string_new(NULL);
}

void qmp_stream_destroy(QmpStream *st)
{
    if (st->buf) {
        g_string_free(st->buf, TRUE);
        st->buf = NULL;
    }
}

static void reset(QmpStream *st)
{
    g_string_truncate(st->buf, 0);
    st->depth = 0;
    st->in_string = st->escape = st->in_scalar = st->skipping = false;
}

/* A complete text is in buf: parse it and hand it over. */
static void finish(QmpStream *st)
{
    json_error_t jerr;
    json_t *v;

    if (st->skipping) {
        reset(st);
        return;
    }
    v = json_loadb(st->buf->str, st->buf->len,
                   JSON_DECODE_ANY | JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL,
                   &jerr);
    reset(st);
    if (v) {
        st->fn(st->opaque, v, NULL);
    } else {
        g_autofree char *msg = g_strdup_printf("JSON parse error, %s",
                                               jerr.text);
        st->fn(st->opaque, NULL, msg);
    }
}

static void fail(QmpStream *st, const char *msg)
{
    reset(st);
    st->fn(st->opaque, NULL, msg);
}

static bool is_delimiter(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '{' ||
           c == '[' || c == '"' || c == '}' || c == ']' || c == ',' || c == ':';
}

/* Append one byte of the current text, or start skipping if too large. */
static void keep(QmpStream *st, unsigned char c)
{
    if (st->skipping) {
        return;
    }
    if (st->buf->len >= st->max_bytes) {
        g_autofree char *msg = g_strdup_printf(
            "JSON parse error, input exceeds %zu bytes", st->max_bytes);
        g_string_truncate(st->buf, 0);
        st->skipping = true;
        st->fn(st->opaque, NULL, msg);
        return;
    }
    g_string_append_c(st->buf, (char)c);
}

static void feed_byte(QmpStream *st, unsigned char c)
{
    if (c == 0xff || (c < 0x20 && c != '\t' && c != '\r' && c != '\n')) {
        bool had_input = st->buf->len || st->depth || st->in_scalar;
        reset(st);
        if (had_input) {
            st->fn(st->opaque, NULL, "JSON parse error, stray control "
                   "character in input");
        }
        return;
    }
    if (st->in_scalar) {
        if (!is_delimiter(c)) {
            keep(st, c);
            return;
        }
        finish(st);
        /* fall through: c starts something new */
    }
    if (st->in_string) {
        keep(st, c);
        if (st->escape) {
            st->escape = false;
        } else if (c == '\\') {
            st->escape = true;
        } else if (c == '"') {
            st->in_string = false;
            if (st->depth == 0) {
                finish(st);
            }
        }
        return;
    }
    switch (c) {
    case ' ': case '\t': case '\r': case '\n':
        if (st->depth) {
            keep(st, c);
        }
        return;
    case '"':
        st->in_string = true;
        keep(st, c);
        return;
    case '{': case '[':
        if (st->depth >= QMP_STREAM_MAX_DEPTH) {
            if (!st->skipping) {
                g_string_truncate(st->buf, 0);
                st->skipping = true;
                st->fn(st->opaque, NULL, "JSON parse error, nesting too deep");
            }
        }
        st->depth++;
        keep(st, c);
        return;
    case '}': case ']':
        if (st->depth == 0) {
            fail(st, "JSON parse error, stray closing bracket");
            return;
        }
        keep(st, c);
        if (--st->depth == 0) {
            finish(st);
        }
        return;
    default:
        keep(st, c);
        if (st->depth == 0) {
            st->in_scalar = true;
        }
        return;
    }
}

void qmp_stream_feed(QmpStream *st, const char *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        feed_byte(st, (unsigned char)data[i]);
    }
}
