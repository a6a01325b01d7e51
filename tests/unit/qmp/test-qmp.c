/*
 * The QMP input path without sockets: the stream splitter fed in pieces
 * (byte by byte, many texts in one read), its limits and recovery, and the
 * dispatcher's envelope and argument checks on a command of the test's own.
 */
#include "config.h"

#include <string.h>

#include <glib.h>

#include "qmp/qmp.h"

typedef struct Got {
    GPtrArray *values;           /* json_t* */
    GPtrArray *errors;           /* char* */
} Got;

static void collect(void *opaque, json_t *v, const char *error)
{
    Got *g = opaque;

    if (v) {
        g_ptr_array_add(g->values, v);
    } else {
        g_ptr_array_add(g->errors, g_strdup(error));
    }
}

static Got *got_new(void)
{
    Got *g = g_new0(Got, 1);

    g->values = g_ptr_array_new_with_free_func((GDestroyNotify)json_decref);
    g->errors = g_ptr_array_new_with_free_func(g_free);
    return g;
}

static void got_free(Got *g)
{
    g_ptr_array_free(g->values, TRUE);
    g_ptr_array_free(g->errors, TRUE);
    g_free(g);
}

static void test_stream_byte_by_byte_and_batched(void)
{
    const char *in = "{\"execute\": \"a\", \"arguments\": {\"s\": \"}{\\\"\"}}"
                     "  [1, {\"x\": []}]\n{\"execute\":\"b\"}";
    Got *g = got_new();
    QmpStream st;

    qmp_stream_init(&st, 0, collect, g);
    for (size_t i = 0; i < strlen(in); i++) {
        qmp_stream_feed(&st, in + i, 1);
    }
    g_assert_cmpuint(g->values->len, ==, 3);
    g_assert_cmpuint(g->errors->len, ==, 0);
    g_assert_cmpstr(json_string_value(json_object_get(json_object_get(
        g->values->pdata[0], "arguments"), "s")), ==, "}{\"");
    g_assert_true(json_is_array((json_t *)g->values->pdata[1]));
    qmp_stream_feed(&st, in, strlen(in));
    g_assert_cmpuint(g->values->len, ==, 6);
    qmp_stream_destroy(&st);
    got_free(g);
}

static void test_stream_limits_and_recovery(void)
{
    Got *g = got_new();
    QmpStream st;
    g_autofree char *big = g_strnfill(5000, 'A');
    g_autofree char *text = g_strdup_printf("{\"pad\": \"%s\"}{\"ok\": 1}", big);
    g_autofree char *deep = NULL;
    GString *d = g_string_new(NULL);

    qmp_stream_init(&st, 1024, collect, g);
    qmp_stream_feed(&st, text, strlen(text));
    g_assert_cmpuint(g->errors->len, ==, 1);
    g_assert_nonnull(strstr(g->errors->pdata[0], "exceeds 1024 bytes"));
    g_assert_cmpuint(g->values->len, ==, 1);     /* the next text is fine */

    for (int i = 0; i < QMP_STREAM_MAX_DEPTH + 5; i++) {
        g_string_append_c(d, '[');
    }
    for (int i = 0; i < QMP_STREAM_MAX_DEPTH + 5; i++) {
        g_string_append_c(d, ']');
    }
    g_string_append(d, "{\"ok\": 2}");
    deep = g_string_free(d, FALSE);
    qmp_stream_feed(&st, deep, strlen(deep));
    g_assert_cmpuint(g->errors->len, ==, 2);
    g_assert_nonnull(strstr(g->errors->pdata[1], "nesting"));
    g_assert_cmpuint(g->values->len, ==, 2);

    /* a control character drops the half text; 0xff too */
    qmp_stream_feed(&st, "{\"half\": \x01{\"ok\": 3}", 19);
    qmp_stream_feed(&st, "{\"x\xff{\"ok\": 4}", 13);
    g_assert_cmpuint(g->errors->len, ==, 4);
    g_assert_cmpuint(g->values->len, ==, 4);
    g_assert_cmpint(json_integer_value(json_object_get(g->values->pdata[3],
                                                       "ok")), ==, 4);
    /* bad JSON and stray brackets are errors, then the stream goes on */
    qmp_stream_feed(&st, "{\"a\": tru} ] nonsense {\"ok\": 5}", 31);
    g_assert_cmpuint(g->errors->len, ==, 7);
    g_assert_cmpuint(g->values->len, ==, 5);
    qmp_stream_destroy(&st);
    got_free(g);
}

static json_t *cmd_echo(json_t *args, GError **errp)
{
    if (qmp_arg_bool(args, "fail", false)) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_DEVICE_NOT_ACTIVE,
                    "asked to fail");
        return NULL;
    }
    return json_pack("{s:I,s:s}", "n", (json_int_t)qmp_arg_int(args, "n", -1),
                     "s", qmp_arg_str(args, "s") ? qmp_arg_str(args, "s")
                                                 : "");
}

static json_t *run(QmpSession *s, const char *req)
{
    g_autoptr(json_t) r = json_loads(req, JSON_DECODE_ANY, NULL);
    g_assert_nonnull(r);
    return qmp_dispatch(s, r);
}

static void assert_error(json_t *resp, const char *cls, const char *desc)
{
    json_t *e = json_object_get(resp, "error");

    g_assert_nonnull(e);
    g_assert_cmpstr(json_string_value(json_object_get(e, "class")), ==, cls);
    g_assert_cmpstr(json_string_value(json_object_get(e, "desc")), ==, desc);
    json_decref(resp);
}

static void test_dispatch_checks_arguments(void)
{
    QmpSession s = { 0 };
    json_t *r;

    assert_error(run(&s, "{\"execute\": \"x-echo\"}"), "CommandNotFound",
                 "Expecting capabilities negotiation with 'qmp_capabilities'");
    r = run(&s, "{\"execute\": \"qmp_capabilities\", \"id\": [1]}");
    g_assert_true(json_is_object(json_object_get(r, "return")));
    g_assert_true(json_is_array(json_object_get(r, "id")));
    json_decref(r);
    assert_error(run(&s, "{\"execute\": \"x-echo\", \"arguments\": {}}"),
                 "GenericError", "Parameter 's' is missing");
    assert_error(run(&s, "{\"execute\": \"x-echo\", \"arguments\": "
                     "{\"s\": \"a\", \"n\": \"1\"}}"), "GenericError",
                 "Invalid parameter type for 'n', expected: integer");
    assert_error(run(&s, "{\"execute\": \"x-echo\", \"arguments\": "
                     "{\"s\": 1}}"), "GenericError",
                 "Invalid parameter type for 's', expected: string");
    assert_error(run(&s, "{\"execute\": \"x-echo\", \"arguments\": "
                     "{\"s\": \"a\", \"z\": 1}}"), "GenericError",
                 "Parameter 'z' is unexpected");
    assert_error(run(&s, "{\"execute\": \"x-echo\", \"arguments\": "
                     "{\"s\": \"a\", \"fail\": true}}"), "DeviceNotActive",
                 "asked to fail");
    assert_error(run(&s, "{\"execute\": \"nope\"}"), "CommandNotFound",
                 "The command nope has not been found");
    assert_error(run(&s, "[]"), "GenericError",
                 "QMP input must be a JSON object");
    r = run(&s, "{\"execute\": \"x-echo\", \"arguments\": {\"s\": \"hi\", "
            "\"n\": 7}, \"id\": \"q\"}");
    g_assert_cmpint(json_integer_value(json_object_get(
        json_object_get(r, "return"), "n")), ==, 7);
    g_assert_cmpstr(json_string_value(json_object_get(r, "id")), ==, "q");
    json_decref(r);
}

int main(int argc, char **argv)
{
    static const QmpCommand cmds[] = {
        { "x-echo", "s:str n:int? fail:bool?", cmd_echo },
    };

    g_test_init(&argc, &argv, NULL);
    qmp_register_core_commands();
    qmp_register_commands(cmds, G_N_ELEMENTS(cmds));
    g_test_add_func("/qmp/stream/byte-by-byte-and-batched",
                    test_stream_byte_by_byte_and_batched);
    g_test_add_func("/qmp/stream/limits-and-recovery",
                    test_stream_limits_and_recovery);
    g_test_add_func("/qmp/dispatch/checks-arguments",
                    test_dispatch_checks_arguments);
    return g_test_run();
}
