/*
 * ferry img's output helpers against text qemu-img 7.2 printed: the
 * snapshot table (snapshot-table.c) and the JSON writer (json-out.c).
 * The expected strings were captured from Debian's qemu-img 7.2 with TZ=UTC.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <glib.h>
#include <jansson.h>

#include "tools/img/img.h"
#include "tools/img/info.h"

static json_t *snap(const char *id, const char *name, json_int_t date,
                    json_int_t vm_size, json_int_t clock_sec,
                    json_int_t clock_nsec, json_int_t icount)
{
    json_t *o = json_object();

    json_object_set_new(o, "id", json_string(id));
    json_object_set_new(o, "name", json_string(name));
    json_object_set_new(o, "vm-state-size", json_integer(vm_size));
    json_object_set_new(o, "date-sec", json_integer(date));
    json_object_set_new(o, "date-nsec", json_integer(0));
    json_object_set_new(o, "vm-clock-sec", json_integer(clock_sec));
    json_object_set_new(o, "vm-clock-nsec", json_integer(clock_nsec));
    if (icount >= 0) {
        json_object_set_new(o, "icount", json_integer(icount));
    }
    return o;
}

/* qemu-img snapshot -l on two snapshots qemu-img made (TZ=UTC). */
static void test_snapshot_table_matches_qemu(void)
{
    const char *expected =
        "ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT\n"
        "1         snap1                 0 B 2026-11-23 17:52:44 00:00:00.000          0\n"
        "2         a_much_longer_snapshot_name_here      0 B 2026-11-23 17:52:44 00:00:00.000          0\n";
    g_autoptr(GString) out = g_string_new(NULL);
    json_t *arr = json_array();

    json_array_append_new(arr, snap("1", "snap1", 1795456364, 0, 0, 0, 0));
    json_array_append_new(arr, snap("2", "a_much_longer_snapshot_name_here",
                                    1795456364, 0, 0, 0, 0));
    img_print_snapshot_table(out, arr);
    g_assert_cmpstr(out->str, ==, expected);
    json_decref(arr);
}

/* VM state, clock and no icount: the columns still line up. */
static void test_snapshot_table_vm_columns(void)
{
    g_autoptr(GString) out = g_string_new(NULL);
    json_t *arr = json_array();
    g_auto(GStrv) lines = NULL;

    json_array_append_new(arr, snap("10", "vm", 0, 1536 * 1024, 3723,
                                    456000000, -1));
    img_print_snapshot_table(out, arr);
    lines = g_strsplit(out->str, "\n", -1);
    g_assert_cmpstr(lines[1], ==,
                    "10        vm                1.5 MiB 1970-01-01 00:00:00"
                    " 01:02:03.456           ");
    g_assert_cmpuint(strlen(lines[0]), ==, strlen(lines[1]));
    json_decref(arr);
}

/* qemu-img check --output=json on a leaky qcow2: QDict's key order. */
static void test_json_key_order_matches_qemu(void)
{
    const char *expected =
        "{\n"
        "    \"image-end-offset\": 786432,\n"
        "    \"compressed-clusters\": 2,\n"
        "    \"total-clusters\": 1024,\n"
        "    \"check-errors\": 0,\n"
        "    \"leaks\": 1,\n"
        "    \"allocated-clusters\": 7,\n"
        "    \"filename\": \"leaky.qcow2\",\n"
        "    \"format\": \"qcow2\",\n"
        "    \"fragmented-clusters\": 2\n"
        "}";
    json_t *o = json_pack("{s:s, s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i}",
                          "filename", "leaky.qcow2", "format", "qcow2",
                          "check-errors", 0, "image-end-offset", 786432,
                          "leaks", 1, "total-clusters", 1024,
                          "allocated-clusters", 7, "fragmented-clusters", 2,
                          "compressed-clusters", 2);
    g_autofree char *text = img_json_to_qemu_text(o);

    g_assert_cmpstr(text, ==, expected);
    json_decref(o);
}

/* qemu-img info: an empty "flags" list and nested objects, as qemu prints. */
static void test_json_empty_list_and_nesting(void)
{
    const char *expected =
        "{\n"
        "    \"flags\": [\n"
        "    ],\n"
        "    \"name\": \"b1\",\n"
        "    \"granularity\": 4096\n"
        "}";
    json_t *o = json_pack("{s:[], s:s, s:i}", "flags", "name", "b1",
                          "granularity", 4096);
    g_autofree char *text = img_json_to_qemu_text(o);

    g_assert_cmpstr(text, ==, expected);
    json_decref(o);
}

/* Outside printable ASCII, qemu writes \uXXXX (surrogate pairs above BMP). */
static void test_json_escapes(void)
{
    json_t *s = json_string("a\"b\\c\n\x01\x7f\xc3\xa9\xf0\x9f\x98\x80");
    g_autofree char *text = img_json_to_qemu_text(s);

    g_assert_cmpstr(text, ==,
                    "\"a\\\"b\\\\c\\n\\u0001\\u007F\\u00E9\\uD83D\\uDE00\"");
    json_decref(s);
}

int main(int argc, char **argv)
{
    setenv("TZ", "UTC", 1);
    tzset();
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/tools/img/snapshot-table/matches-qemu",
                    test_snapshot_table_matches_qemu);
    g_test_add_func("/tools/img/snapshot-table/vm-columns",
                    test_snapshot_table_vm_columns);
    g_test_add_func("/tools/img/json/key-order-matches-qemu",
                    test_json_key_order_matches_qemu);
    g_test_add_func("/tools/img/json/empty-list-and-nesting",
                    test_json_empty_list_and_nesting);
    g_test_add_func("/tools/img/json/escapes", test_json_escapes);
    return g_test_run();
}
