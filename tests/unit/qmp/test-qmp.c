/*
 * The QMP input path without sockets: the stream splitter fed in pieces
 * (byte by byte, many texts in one read), its limits and recovery, and the
 * dispatcher's envelope and argument checks on a command of the test's own.
 * Also the table of named backends (a VM's drives) the block commands
 * look devices up in, and the hooks a VM sets: quit and its events.
 */
#include "config.h"

#include <string.h>

#include <glib.h>

#include "blockdev/backend.h"
#include "qmp/commands.h"
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

static json_t *call(const char *name, const char *args_json, GError **errp)
{
    g_autoptr(json_t) args = json_loads(args_json, 0, NULL);

    g_assert_nonnull(args);
    return qmp_call(name, args, errp);
}

static BlockBackend *null_blk(const char *node_name)
{
    g_autofree char *spec = g_strdup_printf(
        "json:{\"driver\":\"null-co\",\"size\":1048576,"
        "\"node-name\":\"%s\"}", node_name);
    GError *err = NULL;
    BlockBackend *blk = blk_open(spec, NULL, NULL, BLOCK_O_RDWR, &err);

    g_assert_no_error(err);
    return blk;
}

/*
 *   device "d0" --blk--> [null-co n0]      then, after a replace:
 *   device "d0" --blk--> [null-co n1]
 * query-block follows the backend; a device name works where a node is
 * asked for, before node names.
 */
static void test_devices_lookup_and_query_block(void)
{
    BlockBackend *blk = null_blk("n0");
    g_autoptr(BlockBackend) other = null_blk("n1");
    BlockNode *n0 = blk_node(blk), *n1 = blk_node(other);
    GPtrArray *held;
    GError *err = NULL;
    json_t *r, *b;

    qmp_block_device_add("d0", "/machine/peripheral-anon/device[0]/"
                         "virtio-backend", blk);
    r = call("query-block", "{}", &err);
    g_assert_no_error(err);
    g_assert_cmpint(json_array_size(r), ==, 1);
    b = json_array_get(r, 0);
    g_assert_cmpstr(json_string_value(json_object_get(b, "device")), ==, "d0");
    g_assert_cmpstr(json_string_value(json_object_get(b, "qdev")), ==,
                    "/machine/peripheral-anon/device[0]/virtio-backend");
    g_assert_cmpstr(json_string_value(json_object_get(
        json_object_get(b, "inserted"), "node-name")), ==, "n0");
    json_decref(r);

    r = call("block-dirty-bitmap-add", "{\"node\": \"d0\", \"name\": \"b\"}",
             &err);
    g_assert_no_error(err);
    json_decref(r);
    g_assert_nonnull(n0->bitmaps);
    g_assert_null(call("block-dirty-bitmap-add",
                       "{\"node\": \"d9\", \"name\": \"b\"}", &err));
    g_assert_cmpstr(err->message, ==,
                    "Cannot find device='d9' nor node-name='d9'");
    g_clear_error(&err);
    r = call("block-dirty-bitmap-remove", "{\"node\": \"d0\", \"name\": \"b\"}",
             &err);
    g_assert_no_error(err);
    json_decref(r);

    /* what a mirror's pivot does: the device follows its backend */
    block_node_ref(n1);
    blk_unref(g_steal_pointer(&other));
    held = block_node_quiesce_users(n0, NULL);
    g_assert_true(block_node_replace(n0, n1, NULL, &err));
    block_users_unquiesce(held);
    g_assert_true(blk_node(blk) == n1);
    r = call("query-block", "{}", &err);
    g_assert_cmpstr(json_string_value(json_object_get(json_object_get(
        json_array_get(r, 0), "inserted"), "node-name")), ==, "n1");
    json_decref(r);

    qmp_block_device_remove("d0");
    r = call("query-block", "{}", &err);
    g_assert_cmpint(json_array_size(r), ==, 0);
    json_decref(r);
    blk_unref(blk);
    block_node_unref(n1);
}

static void count_quit(void *opaque)
{
    (*(int *)opaque)++;
}

static void test_quit_handler_and_registered_events(void)
{
    static const QmpEventSpec events[] = {
        { "X_RESET", "guest:bool reason:str" },
    };
    GError *err = NULL;
    int quits = 0;
    bool found = false;
    json_t *r, *e;
    size_t i;

    qmp_set_quit_handler(count_quit, &quits);
    json_decref(call("quit", "{}", &err));
    g_assert_no_error(err);
    g_assert_cmpint(quits, ==, 1);
    qmp_set_quit_handler(NULL, NULL);

    qmp_register_events(events, G_N_ELEMENTS(events));
    r = call("query-qmp-schema", "{}", &err);
    json_array_foreach(r, i, e) {
        if (!g_strcmp0(json_string_value(json_object_get(e, "name")),
                       "X_RESET")) {
            found = !g_strcmp0(json_string_value(json_object_get(
                e, "meta-type")), "event");
        }
    }
    g_assert_true(found);
    json_decref(r);
}

int main(int argc, char **argv)
{
    static const QmpCommand cmds[] = {
        { "x-echo", "s:str n:int? fail:bool?", cmd_echo },
    };

    g_test_init(&argc, &argv, NULL);
    qmp_register_core_commands();
    qmp_register_block_commands();
    qmp_register_bitmap_commands();
    qmp_register_commands(cmds, G_N_ELEMENTS(cmds));
    g_test_add_func("/qmp/stream/byte-by-byte-and-batched",
                    test_stream_byte_by_byte_and_batched);
    g_test_add_func("/qmp/stream/limits-and-recovery",
                    test_stream_limits_and_recovery);
    g_test_add_func("/qmp/dispatch/checks-arguments",
                    test_dispatch_checks_arguments);
    g_test_add_func("/qmp/devices/lookup-and-query-block",
                    test_devices_lookup_and_query_block);
    g_test_add_func("/qmp/dispatch/quit-handler-and-events",
                    test_quit_handler_and_registered_events);
    return g_test_run();
}
