/*
 * qcow2 persistent bitmaps on tiny images: bits and flags survive a store
 * and a reopen (the tail past the disk's end stays clear); IN_USE reaches
 * the disk before the first write and leaves it at close; an unchanged
 * image is not rewritten by a read-write open; removal frees the clusters;
 * what cannot be stored is refused before anything changes.
 *
 *   BlockBackend --> [qcow2 tmpdir/x.qcow2] --file--> [file]
 *                         bitmaps: b0 (64 KiB), b1 (4 KiB, disabled)
 */
#include "config.h"

#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include <glib.h>

#include "blockdev/backend.h"
#include "blockdev/bitmap.h"
#include "blockdev/driver.h"
#include "common/opts.h"
#include "qcow2/internal.h"

static char *tmpdir;

static char *make_qcow2(const char *name, const char *opts_str, int64_t size)
{
    char *path = g_build_filename(tmpdir, name, NULL);
    g_autoptr(json_t) opts = NULL;
    GError *err = NULL;

    opts = opts_str ? ferry_opts_parse(opts_str, NULL, &err) : json_object();
    g_assert_no_error(err);
    json_object_set_new(opts, "size", json_integer(size));
    g_assert_true(block_create("qcow2", path, opts, &err));
    g_assert_no_error(err);
    return path;
}

static BlockBackend *open_img(const char *path, uint32_t flags)
{
    GError *err = NULL;
    BlockBackend *blk = blk_open(path, "qcow2", NULL, flags, &err);

    g_assert_no_error(err);
    return blk;
}

static void assert_clean(BlockBackend *blk)
{
    BlockNode *bs = blk_node(blk);
    BlockCheckResult res = { 0 };
    GError *err = NULL;

    block_node_drain_begin(bs);
    g_assert_true(bs->drv->check(bs, &res, 0, &err));
    block_node_drain_end(bs);
    g_assert_no_error(err);
    g_assert_cmpint(res.corruptions, ==, 0);
    g_assert_cmpint(res.leaks, ==, 0);
}

static BlockDirtyBitmap *add(BlockBackend *blk, const char *name, uint32_t g)
{
    BlockNode *bs = blk_node(blk);
    GError *err = NULL;
    BlockDirtyBitmap *bm;

    g_assert_true(bs->drv->bitmap_can_store(bs, name, g, &err));
    g_assert_no_error(err);
    bm = block_dirty_bitmap_create(bs, name, g, &err);
    g_assert_no_error(err);
    bm->persistent = true;
    return bm;
}

static void store(BlockBackend *blk)
{
    BlockNode *bs = blk_node(blk);
    GError *err = NULL;

    block_node_drain_begin(bs);
    g_assert_true(bs->drv->bitmaps_store(bs, &err));
    block_node_drain_end(bs);
    g_assert_no_error(err);
}

static char *file_sum(const char *path)
{
    g_autofree char *data = NULL;
    gsize len;

    g_assert_true(g_file_get_contents(path, &data, &len, NULL));
    return g_compute_checksum_for_data(G_CHECKSUM_SHA256, (guchar *)data, len);
}

/* The first directory entry's flags, read from the file itself. */
static uint32_t disk_flags(const char *path)
{
    g_autoptr(BlockBackend) blk = blk_open(path, "qcow2", NULL,
                                           BLOCK_O_FORCE_SHARE |
                                           BLOCK_O_NO_BITMAPS, NULL);
    Qcow2State *s = blk_node(blk)->opaque;
    uint32_t v = 0;
    int fd = open(path, O_RDONLY);

    g_assert_cmpint(pread(fd, &v, 4, s->bitmap_dir_offset + 12), ==, 4);
    close(fd);
    return GUINT32_FROM_BE(v);
}

static void test_store_load_roundtrip(void)
{
    /* 3 MiB + 4 KiB: the last granule of b0 is partial. */
    g_autofree char *path = make_qcow2("rt.qcow2", "cluster_size=512",
                                       (3 << 20) + 4096);
    BlockBackend *blk = open_img(path, BLOCK_O_RDWR);
    BlockDirtyBitmap *b0 = add(blk, "b0", 65536);
    BlockDirtyBitmap *b1 = add(blk, "b1", 4096);
    uint64_t c0, c1;

    b1->enabled = false;
    for (int i = 0; i < 40; i++) {
        block_dirty_bitmap_set(b0, (int64_t)i * 77777, 1);
        block_dirty_bitmap_set(b1, (int64_t)i * 55555, 4096);
    }
    block_dirty_bitmap_set(b0, (3 << 20) + 4095, 1);
    c0 = block_dirty_bitmap_count(b0);
    c1 = block_dirty_bitmap_count(b1);
    store(blk);
    assert_clean(blk);
    blk_unref(blk);

    blk = open_img(path, 0);
    b0 = block_dirty_bitmap_find(blk_node(blk), "b0");
    b1 = block_dirty_bitmap_find(blk_node(blk), "b1");
    g_assert_nonnull(b0);
    g_assert_nonnull(b1);
    g_assert_true(b0->persistent && b0->enabled && !b0->inconsistent);
    g_assert_true(b1->persistent && !b1->enabled && b1->readonly);
    g_assert_cmpuint(b1->granularity, ==, 4096);
    g_assert_cmpuint(block_dirty_bitmap_count(b0), ==, c0);
    g_assert_cmpuint(block_dirty_bitmap_count(b1), ==, c1);
    for (int i = 0; i < 40; i++) {
        g_assert_true(block_dirty_bitmap_get(b0, (int64_t)i * 77777));
        g_assert_true(block_dirty_bitmap_get(b1, (int64_t)i * 55555));
    }
    g_assert_true(block_dirty_bitmap_get(b0, (3 << 20) + 4095));
    blk_unref(blk);
}

static void test_in_use_before_first_write(void)
{
    g_autofree char *path = make_qcow2("inuse.qcow2", NULL, 4 << 20);
    BlockBackend *blk = open_img(path, BLOCK_O_RDWR);
    g_autofree char *before = NULL;
    g_autofree char *after = NULL;
    uint8_t buf[4096] = { 1 };
    BlockDirtyBitmap *bm;

    add(blk, "b0", 65536);
    store(blk);
    blk_unref(blk);
    g_assert_cmpuint(disk_flags(path), ==, QCOW2_BME_FLAG_AUTO);

    /* Opened for writing, nothing written: the file does not change. */
    before = file_sum(path);
    blk = open_img(path, BLOCK_O_RDWR);
    g_assert_cmpuint(disk_flags(path), ==, QCOW2_BME_FLAG_AUTO);
    blk_unref(blk);
    after = file_sum(path);
    g_assert_cmpstr(before, ==, after);

    blk = open_img(path, BLOCK_O_RDWR);
    g_assert_cmpint(blk_pwrite(blk, 1 << 20, sizeof(buf), buf, 0), ==, 0);
    g_assert_cmpuint(disk_flags(path), ==,
                     QCOW2_BME_FLAG_AUTO | QCOW2_BME_FLAG_IN_USE);
    bm = block_dirty_bitmap_find(blk_node(blk), "b0");
    g_assert_true(block_dirty_bitmap_get(bm, 1 << 20));
    blk_unref(blk);
    g_assert_cmpuint(disk_flags(path), ==, QCOW2_BME_FLAG_AUTO);

    blk = open_img(path, 0);
    bm = block_dirty_bitmap_find(blk_node(blk), "b0");
    g_assert_true(block_dirty_bitmap_get(bm, 1 << 20));
    g_assert_cmpuint(block_dirty_bitmap_count(bm), ==, 65536);
    assert_clean(blk);
    blk_unref(blk);
}

static void test_remove_frees_clusters(void)
{
    g_autofree char *path = make_qcow2("rm.qcow2", "cluster_size=4k", 8 << 20);
    BlockBackend *blk = open_img(path, BLOCK_O_RDWR);
    Qcow2State *s = blk_node(blk)->opaque;
    BlockDirtyBitmap *bm = add(blk, "b0", 512);
    GError *err = NULL;

    block_dirty_bitmap_set(bm, 0, 8 << 20);
    add(blk, "b1", 65536);
    store(blk);
    g_assert_cmpuint(s->nb_bitmaps, ==, 2);
    g_assert_true(s->autoclear & QCOW2_AUTOCLEAR_BITMAPS);
    assert_clean(blk);
    g_assert_true(block_dirty_bitmap_remove(blk_node(blk), "b0", &err));
    g_assert_no_error(err);
    g_assert_cmpuint(s->nb_bitmaps, ==, 1);
    assert_clean(blk);
    g_assert_true(block_dirty_bitmap_remove(blk_node(blk), "b1", &err));
    g_assert_no_error(err);
    g_assert_cmpuint(s->nb_bitmaps, ==, 0);
    g_assert_false(s->autoclear & QCOW2_AUTOCLEAR_BITMAPS);
    assert_clean(blk);
    blk_unref(blk);
}

static void test_refusals(void)
{
    g_autofree char *v2 = make_qcow2("v2.qcow2", "compat=0.10", 1 << 20);
    g_autofree char *v3 = make_qcow2("v3.qcow2", NULL, 1 << 20);
    BlockBackend *blk = open_img(v2, BLOCK_O_RDWR);
    BlockNode *bs = blk_node(blk);
    GError *err = NULL;

    g_assert_false(bs->drv->bitmap_can_store(bs, "b0", 65536, &err));
    g_assert_nonnull(strstr(err->message, "v2"));
    g_clear_error(&err);
    blk_unref(blk);

    blk = open_img(v3, BLOCK_O_RDWR);
    bs = blk_node(blk);
    g_assert_false(bs->drv->bitmap_can_store(bs, "b0", 256, &err));
    g_clear_error(&err);
    g_assert_false(bs->drv->bitmap_can_store(bs, "", 65536, &err));
    g_clear_error(&err);
    add(blk, "b0", 65536);
    store(blk);
    blk_unref(blk);
    blk = open_img(v3, BLOCK_O_RDWR);
    bs = blk_node(blk);
    /* Already in the image: refused by name. */
    g_assert_false(bs->drv->bitmap_can_store(bs, "b0", 65536, &err));
    g_clear_error(&err);
    blk_unref(blk);
}

int main(int argc, char **argv)
{
    int ret;

    g_test_init(&argc, &argv, NULL);
    tmpdir = g_dir_make_tmp("ferry-qcow2-bm-XXXXXX", NULL);
    g_test_add_func("/qcow2/bitmap/store-load-roundtrip",
                    test_store_load_roundtrip);
    g_test_add_func("/qcow2/bitmap/in-use-before-first-write",
                    test_in_use_before_first_write);
    g_test_add_func("/qcow2/bitmap/remove-frees-clusters",
                    test_remove_frees_clusters);
    g_test_add_func("/qcow2/bitmap/refusals", test_refusals);
    ret = g_test_run();
    {
        g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", tmpdir);
        if (system(cmd) != 0) {
            g_printerr("cannot remove %s\n", tmpdir);
        }
    }
    return ret;
}
