/*
 * key=value and json: option parsing into nested JSON.
 */
#include "config.h"

#include <string.h>

#include <glib.h>

#include "common/opts.h"

static char *dump(json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
    char *r = g_strdup(s);
    free(s);
    return r;
}

static void test_dotted_keys_nest(void)
{
    g_autoptr(json_t) o = ferry_opts_parse("driver=qcow2,file.filename=a.img,"
                                           "file.driver=file", NULL, NULL);
    g_autofree char *s = dump(o);
    g_assert_cmpstr(s, ==, "{\"driver\":\"qcow2\",\"file\":{\"driver\":\"file\","
                           "\"filename\":\"a.img\"}}");
}

static void test_double_comma_escapes(void)
{
    g_autoptr(json_t) o = ferry_opts_parse("filename=a,,b.img,driver=raw",
                                           NULL, NULL);
    g_assert_cmpstr(ferry_opt_str(o, "filename"), ==, "a,b.img");
    g_assert_cmpstr(ferry_opt_str(o, "driver"), ==, "raw");
}

static void test_implied_key(void)
{
    g_autoptr(json_t) o = ferry_opts_parse("disk.img,format=raw", "filename",
                                           NULL);
    g_assert_cmpstr(ferry_opt_str(o, "filename"), ==, "disk.img");
    g_assert_cmpstr(ferry_opt_str(o, "format"), ==, "raw");
}

static void test_value_and_group_conflict(void)
{
    GError *err = NULL;
    json_t *o = ferry_opts_parse("file=x,file.filename=y", NULL, &err);
    g_assert_null(o);
    g_assert_nonnull(err);
    g_assert_nonnull(strstr(err->message, "file"));
    g_error_free(err);
}

static void test_json_dots_expand(void)
{
    g_autoptr(json_t) o = ferry_opts_parse_json(
        "{\"driver\":\"raw\",\"file.filename\":\"x\",\"file\":{\"driver\":\"file\"}}",
        NULL);
    g_autofree char *s = dump(o);
    g_assert_cmpstr(s, ==, "{\"driver\":\"raw\",\"file\":{\"driver\":\"file\","
                           "\"filename\":\"x\"}}");
}

static void test_json_errors_are_clear(void)
{
    GError *err = NULL;
    g_assert_null(ferry_opts_parse_json("{\"driver\":", &err));
    g_assert_nonnull(strstr(err->message, "not valid JSON"));
    g_clear_error(&err);
    g_assert_null(ferry_opts_parse_json("[1,2]", &err));
    g_assert_nonnull(strstr(err->message, "object"));
    g_clear_error(&err);
}

static void test_typed_getters(void)
{
    g_autoptr(json_t) o = ferry_opts_parse("a=on,b=off,c=64k,d=12,e=maybe",
                                           NULL, NULL);
    bool b;
    uint64_t n;
    GError *err = NULL;

    g_assert_true(ferry_opt_bool(o, "a", false, &b, NULL) && b);
    g_assert_true(ferry_opt_bool(o, "b", true, &b, NULL) && !b);
    g_assert_true(ferry_opt_bool(o, "zz", true, &b, NULL) && b);
    g_assert_true(ferry_opt_size(o, "c", 0, &n, NULL));
    g_assert_cmpuint(n, ==, 65536);
    g_assert_true(ferry_opt_uint(o, "d", 0, &n, NULL));
    g_assert_cmpuint(n, ==, 12);
    g_assert_false(ferry_opt_uint(o, "c", 0, &n, &err));
    g_clear_error(&err);
    g_assert_false(ferry_opt_bool(o, "e", false, &b, &err));
    g_assert_nonnull(strstr(err->message, "'e'"));
    g_clear_error(&err);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/common/opts/dotted-keys-nest", test_dotted_keys_nest);
    g_test_add_func("/common/opts/double-comma-escapes", test_double_comma_escapes);
    g_test_add_func("/common/opts/implied-key", test_implied_key);
    g_test_add_func("/common/opts/value-and-group-conflict",
                    test_value_and_group_conflict);
    g_test_add_func("/common/opts/json-dots-expand", test_json_dots_expand);
    g_test_add_func("/common/opts/json-errors-are-clear", test_json_errors_are_clear);
    g_test_add_func("/common/opts/typed-getters", test_typed_getters);
    return g_test_run();
}
