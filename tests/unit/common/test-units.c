/*
 * Size parsing and qemu-img style size printing.
 */
#include "config.h"

#include <string.h>

#include <glib.h>

#include "common/units.h"

static void test_parse_suffixes(void)
{
    struct { const char *in; uint64_t out; } ok[] = {
        { "0", 0 }, { "512", 512 }, { "64k", 65536 }, { "64K", 65536 },
        { "1M", 1 << 20 }, { "1G", 1 << 30 }, { "1.5G", 3ull << 29 },
        { "2T", 2ull << 40 }, { "1KiB", 1024 }, { "10MB", 10 << 20 },
        { "8E", 0 },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(ok); i++) {
        uint64_t v = 1;
        GError *err = NULL;
        gboolean r = ferry_parse_size(ok[i].in, "size", &v, &err);
        if (!strcmp(ok[i].in, "8E")) {
            /* 8 EiB does not fit in int64_t */
            g_assert_false(r);
            g_assert_nonnull(err);
            g_assert_nonnull(strstr(err->message, "too large"));
            g_error_free(err);
            continue;
        }
        g_assert_no_error(err);
        g_assert_true(r);
        g_assert_cmpuint(v, ==, ok[i].out);
    }
}

static void test_parse_rejects_garbage(void)
{
    const char *bad[] = { "", "abc", "-1", "1X", "1.5", "1kk", "k", "1 G" };
    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        uint64_t v;
        GError *err = NULL;
        g_assert_false(ferry_parse_size(bad[i], "image size", &v, &err));
        g_assert_nonnull(err);
        g_assert_nonnull(strstr(err->message, "image size"));
        g_error_free(err);
    }
}

static void test_size_to_str_matches_qemu(void)
{
    struct { uint64_t in; const char *out; } cases[] = {
        { 0, "0 B" }, { 512, "512 B" }, { 1024, "1 KiB" },
        { 1000 * 1024, "0.977 MiB" }, { 1 << 30, "1 GiB" },
        { 196 * 1024, "196 KiB" }, { 1536ull << 20, "1.5 GiB" },
        { 1ull << 40, "1 TiB" },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autofree char *s = ferry_size_to_str(cases[i].in);
        g_assert_cmpstr(s, ==, cases[i].out);
    }
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/common/units/parse-suffixes", test_parse_suffixes);
    g_test_add_func("/common/units/parse-rejects-garbage",
                    test_parse_rejects_garbage);
    g_test_add_func("/common/units/size-to-str-matches-qemu",
                    test_size_to_str_matches_qemu);
    return g_test_run();
}
