/*
 * ferry img convert's pure logic: zero detection (the -S rule with
 * disk-aligned granules) and how chunks are cut from block-status extents,
 * including the cluster-aligned cutting used for compressed targets.
 */
#include "config.h"

#include <string.h>

#include <glib.h>

#include "tools/img/convert-plan.h"

#define KiB 1024
#define MiB (1024 * 1024)

static void test_is_zero(void)
{
    g_autofree uint8_t *buf = g_malloc0(64 * KiB + 16);

    /* every length and alignment up to a few words, then large buffers */
    for (size_t start = 0; start < 16; start++) {
        for (size_t len = 0; len < 200; len++) {
            g_assert_true(img_buffer_is_zero(buf + start, len));
            if (len) {
                /* a single non-zero byte anywhere is found */
                for (size_t at = 0; at < len; at += 1 + len / 7) {
                    buf[start + at] = 0x80;
                    g_assert_false(img_buffer_is_zero(buf + start, len));
                    buf[start + at] = 0;
                }
                buf[start + len - 1] = 1;
                g_assert_false(img_buffer_is_zero(buf + start, len));
                buf[start + len - 1] = 0;
            }
        }
    }
    g_assert_true(img_buffer_is_zero(buf, 64 * KiB));
    buf[64 * KiB - 1] = 1;
    g_assert_false(img_buffer_is_zero(buf, 64 * KiB));
    g_assert_true(img_buffer_is_zero(buf, 64 * KiB - 1));
    buf[32 * KiB + 3] = 1;
    g_assert_false(img_buffer_is_zero(buf + 1, 64 * KiB - 2));
}

static void test_granule(void)
{
    g_assert_cmpint(img_sparse_granule(512), ==, 512);
    g_assert_cmpint(img_sparse_granule(4096), ==, 4096);
    g_assert_cmpint(img_sparse_granule(1536), ==, 1024);
    g_assert_cmpint(img_sparse_granule(64 * KiB), ==, 64 * KiB);
    g_assert_cmpint(img_sparse_granule(0), ==, 512);
}

/* 64 KiB buffer at disk offset 1 MiB: data, 8 KiB of zero, data, zero tail */
static void test_split_runs(void)
{
    g_autofree uint8_t *buf = g_malloc0(64 * KiB);
    ImgRun runs[64];
    size_t n;

    memset(buf, 0xaa, 8 * KiB);
    memset(buf + 16 * KiB, 0xbb, 4 * KiB);
    buf[24 * KiB + 100] = 1;                 /* one byte in granule 6 */
    n = img_split_zero_runs(buf, MiB, 64 * KiB, 4 * KiB, 4 * KiB, runs);
    g_assert_cmpuint(n, ==, 6);
    g_assert_true(!runs[0].zero && runs[0].offset == MiB &&
                  runs[0].bytes == 8 * KiB);
    g_assert_true(runs[1].zero && runs[1].offset == MiB + 8 * KiB &&
                  runs[1].bytes == 8 * KiB);
    g_assert_true(!runs[2].zero && runs[2].bytes == 4 * KiB);
    g_assert_true(runs[3].zero && runs[3].bytes == 4 * KiB);   /* 20..24K */
    g_assert_true(!runs[4].zero && runs[4].offset == MiB + 24 * KiB);
    g_assert_cmpint(runs[4].bytes, ==, 4 * KiB);
    g_assert_true(runs[5].zero && runs[5].offset == MiB + 28 * KiB &&
                  runs[5].bytes == 36 * KiB);
}

static void test_split_runs_tail_and_min(void)
{
    g_autofree uint8_t *buf = g_malloc0(64 * KiB);
    ImgRun runs[64];
    size_t n;
    int64_t sum = 0;

    memset(buf, 0xaa, 4 * KiB);
    memset(buf + 12 * KiB, 0xaa, 4 * KiB);
    /* -S 16k: the 8 KiB hole stays data, the 48 KiB tail is zero */
    n = img_split_zero_runs(buf, 0, 64 * KiB, 16 * KiB, 16 * KiB, runs);
    g_assert_cmpuint(n, ==, 2);
    g_assert_true(!runs[0].zero && runs[0].bytes == 16 * KiB);
    g_assert_true(runs[1].zero && runs[1].bytes == 48 * KiB);
    /* -S 4k: every run, adjacent kinds merged, lengths add up */
    n = img_split_zero_runs(buf, 0, 64 * KiB, 4 * KiB, 4 * KiB, runs);
    g_assert_cmpuint(n, ==, 4);
    for (size_t i = 0; i < n; i++) {
        g_assert_cmpint(runs[i].offset, ==, sum);
        sum += runs[i].bytes;
        if (i) {
            g_assert_true(runs[i].zero != runs[i - 1].zero);
        }
    }
    g_assert_cmpint(sum, ==, 64 * KiB);
    /* granule 8k: a 16 KiB zero run counts for -S 16k, not for -S 24k */
    memset(buf, 0, 64 * KiB);
    memset(buf, 1, 8 * KiB);
    memset(buf + 24 * KiB, 1, 40 * KiB);
    n = img_split_zero_runs(buf, 0, 64 * KiB, 8 * KiB, 16 * KiB, runs);
    g_assert_cmpuint(n, ==, 3);
    g_assert_true(!runs[0].zero && runs[0].bytes == 8 * KiB);
    g_assert_true(runs[1].zero && runs[1].bytes == 16 * KiB);
    g_assert_true(!runs[2].zero && runs[2].bytes == 40 * KiB);
    n = img_split_zero_runs(buf, 0, 64 * KiB, 8 * KiB, 24 * KiB, runs);
    g_assert_cmpuint(n, ==, 1);
    g_assert_false(runs[0].zero);
}

/* Granules follow the disk, not the buffer: a buffer at an odd offset. */
static void test_split_runs_unaligned(void)
{
    g_autofree uint8_t *buf = g_malloc0(10 * KiB);
    ImgRun runs[16];
    size_t n;

    buf[0] = 1;                 /* disk byte 3K: granule [0, 4K) is data */
    n = img_split_zero_runs(buf, 3 * KiB, 10 * KiB, 4 * KiB, 4 * KiB, runs);
    g_assert_cmpuint(n, ==, 2);
    g_assert_true(!runs[0].zero && runs[0].offset == 3 * KiB &&
                  runs[0].bytes == KiB);
    g_assert_true(runs[1].zero && runs[1].offset == 4 * KiB &&
                  runs[1].bytes == 9 * KiB);
    g_assert_cmpuint(img_max_runs(10 * KiB, 4 * KiB), >=, n);
}

static void test_plan_plain(void)
{
    ImgExtentKind k;
    const int64_t total = 100 * MiB;

    /* a data extent is cut at chunk boundaries of the disk */
    g_assert_cmpint(img_plan_chunk(0, IMG_EXTENT_DATA, 50 * MiB, total,
                                   2 * MiB, 1, 1 << 30, &k), ==, 2 * MiB);
    g_assert_cmpint(k, ==, IMG_EXTENT_DATA);
    g_assert_cmpint(img_plan_chunk(MiB + 5, IMG_EXTENT_DATA, 50 * MiB, total,
                                   2 * MiB, 1, 1 << 30, &k), ==, MiB - 5);
    /* and at the extent's end */
    g_assert_cmpint(img_plan_chunk(0, IMG_EXTENT_DATA, 4096, total, 2 * MiB,
                                   1, 1 << 30, &k), ==, 4096);
    /* zero extents go in one piece, up to max_zero */
    g_assert_cmpint(img_plan_chunk(4096, IMG_EXTENT_ZERO, 90 * MiB, total,
                                   2 * MiB, 1, 1 << 30, &k), ==, 90 * MiB - 4096);
    g_assert_cmpint(k, ==, IMG_EXTENT_ZERO);
    g_assert_cmpint(img_plan_chunk(0, IMG_EXTENT_BACKING, total, total,
                                   2 * MiB, 1, 16 * MiB, &k), ==, 16 * MiB);
    g_assert_cmpint(k, ==, IMG_EXTENT_BACKING);
    /* the disk's end */
    g_assert_cmpint(img_plan_chunk(total - 10, IMG_EXTENT_DATA, total + 5,
                                   total, 2 * MiB, 1, 1 << 30, &k), ==, 10);
    g_assert_cmpint(img_plan_chunk(total, IMG_EXTENT_DATA, total, total,
                                   2 * MiB, 1, 1 << 30, &k), ==, 0);
}

/* -c: 64 KiB clusters; chunks start and end on clusters. */
static void test_plan_compressed(void)
{
    ImgExtentKind k;
    const int64_t c = 64 * KiB, total = 10 * MiB + 512;

    /* a 4 KiB data extent is a whole cluster */
    g_assert_cmpint(img_plan_chunk(0, IMG_EXTENT_DATA, 4096, total, 2 * MiB,
                                   c, 1 << 30, &k), ==, c);
    g_assert_cmpint(k, ==, IMG_EXTENT_DATA);
    /* a zero extent shorter than a cluster becomes a data cluster */
    g_assert_cmpint(img_plan_chunk(c, IMG_EXTENT_ZERO, c + 8192, total,
                                   2 * MiB, c, 1 << 30, &k), ==, c);
    g_assert_cmpint(k, ==, IMG_EXTENT_DATA);
    /* a longer one is cut down to whole clusters */
    g_assert_cmpint(img_plan_chunk(c, IMG_EXTENT_ZERO, 5 * c + 100, total,
                                   2 * MiB, c, 1 << 30, &k), ==, 4 * c);
    g_assert_cmpint(k, ==, IMG_EXTENT_ZERO);
    /* data ending mid-cluster is rounded up */
    g_assert_cmpint(img_plan_chunk(2 * c, IMG_EXTENT_DATA, 3 * c + 1, total,
                                   2 * MiB, c, 1 << 30, &k), ==, 2 * c);
    /* the last, partial cluster at the disk's end */
    g_assert_cmpint(img_plan_chunk(10 * MiB, IMG_EXTENT_DATA, total, total,
                                   2 * MiB, c, 1 << 30, &k), ==, 512);
    g_assert_cmpint(img_plan_chunk(10 * MiB, IMG_EXTENT_ZERO, total, total,
                                   2 * MiB, c, 1 << 30, &k), ==, 512);
    g_assert_cmpint(k, ==, IMG_EXTENT_ZERO);
    /* every data chunk stays cluster aligned over a whole walk */
    for (int64_t off = 0, n; off < total; off += n) {
        int64_t ext_end = MIN(off + 3 * c / 2 + 7, total);
        n = img_plan_chunk(off, (off / c) % 3 ? IMG_EXTENT_ZERO
                                              : IMG_EXTENT_DATA,
                           ext_end, total, 2 * MiB, c, 1 << 30, &k);
        g_assert_cmpint(n, >, 0);
        g_assert_cmpint(off % c, ==, 0);
        g_assert_true((off + n) % c == 0 || off + n == total);
    }
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/tools/convert-plan/is-zero", test_is_zero);
    g_test_add_func("/tools/convert-plan/granule", test_granule);
    g_test_add_func("/tools/convert-plan/split-runs", test_split_runs);
    g_test_add_func("/tools/convert-plan/split-runs-min", test_split_runs_tail_and_min);
    g_test_add_func("/tools/convert-plan/split-runs-unaligned", test_split_runs_unaligned);
    g_test_add_func("/tools/convert-plan/plan-plain", test_plan_plain);
    g_test_add_func("/tools/convert-plan/plan-compressed", test_plan_compressed);
    return g_test_run();
}
