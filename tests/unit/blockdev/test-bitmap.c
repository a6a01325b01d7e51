/*
 * Dirty bitmaps: marking, clearing, extents, merge, resize.
 */
#include "config.h"

#include <glib.h>

#include "blockdev/backend.h"
#include "blockdev/bitmap.h"

static BlockBackend *null_disk(int64_t size)
{
    g_autofree char *spec = g_strdup_printf(
        "json:{\"driver\":\"null-co\",\"size\":%" G_GINT64_FORMAT "}", size);
    GError *err = NULL;
    BlockBackend *blk = blk_open(spec, NULL, NULL, BLOCK_O_RDWR, &err);

    g_assert_no_error(err);
    return blk;
}

static void test_writes_mark_enabled_bitmaps(void)
{
    g_autoptr(BlockBackend) blk = null_disk(10 << 20);
    BlockNode *bs = blk_node(blk);
    GError *err = NULL;
    BlockDirtyBitmap *on = block_dirty_bitmap_create(bs, "on", 65536, &err);
    BlockDirtyBitmap *off = block_dirty_bitmap_create(bs, "off", 65536, &err);
    char buf[4096] = { 0 };

    g_assert_no_error(err);
    off->enabled = false;
    g_assert_cmpint(blk_pwrite(blk, 65536 * 3 + 100, sizeof(buf), buf, 0), ==, 0);
    g_assert_true(block_dirty_bitmap_get(on, 65536 * 3));
    g_assert_false(block_dirty_bitmap_get(on, 65536 * 2));
    g_assert_cmpuint(block_dirty_bitmap_count(on), ==, 65536);
    g_assert_cmpuint(block_dirty_bitmap_count(off), ==, 0);
    /* duplicate names are refused */
    g_assert_null(block_dirty_bitmap_create(bs, "on", 65536, &err));
    g_clear_error(&err);
}

static void test_extents_and_reset(void)
{
    g_autoptr(BlockBackend) blk = null_disk(100 << 20);
    BlockDirtyBitmap *bm = block_dirty_bitmap_create(blk_node(blk), "b", 65536,
                                                     NULL);
    int64_t len, start;

    block_dirty_bitmap_set(bm, 1 << 20, 1 << 20);
    block_dirty_bitmap_set(bm, 50 << 20, 1);
    start = block_dirty_bitmap_next_extent(bm, 0, 100 << 20, true, &len);
    g_assert_cmpint(start, ==, 1 << 20);
    g_assert_cmpint(len, ==, 1 << 20);
    start = block_dirty_bitmap_next_extent(bm, start + len, 100 << 20, true, &len);
    g_assert_cmpint(start, ==, 50 << 20);
    g_assert_cmpint(len, ==, 65536);
    start = block_dirty_bitmap_next_extent(bm, 0, 100 << 20, false, &len);
    g_assert_cmpint(start, ==, 0);
    g_assert_cmpint(len, ==, 1 << 20);
    /* reset clears only whole granules */
    block_dirty_bitmap_reset(bm, (1 << 20) + 1, 65536);
    g_assert_true(block_dirty_bitmap_get(bm, 1 << 20));
    block_dirty_bitmap_reset(bm, 1 << 20, 1 << 20);
    g_assert_false(block_dirty_bitmap_get(bm, 1 << 20));
    g_assert_cmpint(block_dirty_bitmap_next_extent(bm, 51 << 20, 100 << 20,
                                                   true, &len), ==, -1);
}

static void test_merge_and_resize(void)
{
    g_autoptr(BlockBackend) blk = null_disk(4 << 20);
    BlockNode *bs = blk_node(blk);
    BlockDirtyBitmap *a = block_dirty_bitmap_create(bs, "a", 65536, NULL);
    BlockDirtyBitmap *b = block_dirty_bitmap_create(bs, "b", 65536, NULL);
    BlockDirtyBitmap *c = block_dirty_bitmap_create(bs, "c", 1 << 20, NULL);

    block_dirty_bitmap_set(a, 0, 1);
    block_dirty_bitmap_set(b, 3 << 20, 1);
    g_assert_true(block_dirty_bitmap_merge(a, b, NULL));
    g_assert_cmpuint(block_dirty_bitmap_count(a), ==, 2 * 65536);
    /* different granularity merges by extents */
    g_assert_true(block_dirty_bitmap_merge(c, a, NULL));
    g_assert_cmpuint(block_dirty_bitmap_count(c), ==, 2 << 20);
    g_assert_true(block_dirty_bitmap_resize(a, 1 << 20));
    g_assert_cmpuint(block_dirty_bitmap_count(a), ==, 65536);
    g_assert_true(block_dirty_bitmap_remove(bs, "b", NULL));
    g_assert_null(block_dirty_bitmap_find(bs, "b"));
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/blockdev/bitmap/writes-mark-enabled-bitmaps",
                    test_writes_mark_enabled_bitmaps);
    g_test_add_func("/blockdev/bitmap/extents-and-reset", test_extents_and_reset);
    g_test_add_func("/blockdev/bitmap/merge-and-resize", test_merge_and_resize);
    return g_test_run();
}
