/*
 * The block graph on real files: open by spec, permissions between users in
 * one process and OFD locks between opens, requests, block status, the raw
 * window, null-co and O_DIRECT bouncing.
 *
 *   BlockBackend --> [raw] --file--> [file tmpdir/disk.img]
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include <glib.h>
#include <glib/gstdio.h>

#include "blockdev/backend.h"
#include "blockdev/driver.h"
#include "common/opts.h"

static char *tmpdir;

static char *make_file(const char *name, int64_t size)
{
    char *path = g_build_filename(tmpdir, name, NULL);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);

    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(ftruncate(fd, size), ==, 0);
    close(fd);
    return path;
}

static void test_raw_read_write_roundtrip(void)
{
    g_autofree char *path = make_file("rw.img", 4 << 20);
    GError *err = NULL;
    g_autoptr(BlockBackend) blk = blk_open(path, NULL, NULL, BLOCK_O_RDWR, &err);
    char wbuf[8192], rbuf[8192];

    g_assert_no_error(err);
    g_assert_cmpstr(block_node_format(blk_node(blk)), ==, "raw");
    g_assert_cmpint(blk_getlength(blk), ==, 4 << 20);
    for (size_t i = 0; i < sizeof(wbuf); i++) {
        wbuf[i] = (char)(i * 7 + 3);
    }
    g_assert_cmpint(blk_pwrite(blk, 12345, sizeof(wbuf), wbuf, 0), ==, 0);
    g_assert_cmpint(blk_pread(blk, 12345, sizeof(rbuf), rbuf, 0), ==, 0);
    g_assert_cmpmem(wbuf, sizeof(wbuf), rbuf, sizeof(rbuf));
    /* Past the end is refused at the backend. */
    g_assert_cmpint(blk_pread(blk, (4 << 20) - 10, 20, rbuf, 0), ==, -EIO);
}

static void test_two_writers_refused_in_process(void)
{
    g_autofree char *path = make_file("two.img", 1 << 20);
    GError *err = NULL;
    g_autoptr(BlockBackend) a = blk_open(path, "raw", NULL, BLOCK_O_RDWR, &err);
    g_autoptr(BlockBackend) b = NULL;
    uint32_t perm, shared;

    g_assert_no_error(err);
    blk_perm_for_flags(BLOCK_O_RDWR, &perm, &shared);
    b = blk_new("second", perm, shared);
    g_assert_false(blk_insert_node(b, blk_node(a), &err));
    g_assert_error(err, g_quark_from_static_string("ferry-error-quark"), 3);
    g_assert_nonnull(strstr(err->message, "write"));
    g_clear_error(&err);

    /* A reader that shares everything is fine. */
    g_autoptr(BlockBackend) r = blk_new("reader", 0, BLOCK_PERM_ALL);
    g_assert_true(blk_insert_node(r, blk_node(a), &err));
    g_assert_no_error(err);
}

static void test_second_open_sees_ofd_lock(void)
{
    g_autofree char *path = make_file("lock.img", 1 << 20);
    GError *err = NULL;
    g_autoptr(BlockBackend) a = blk_open(path, "raw", NULL, BLOCK_O_RDWR, &err);
    BlockBackend *b;

    g_assert_no_error(err);
    /* A second writer (another open file description) is refused. */
    b = blk_open(path, "raw", NULL, BLOCK_O_RDWR, &err);
    g_assert_null(b);
    g_assert_nonnull(err);
    g_assert_nonnull(strstr(err->message, "in use"));
    g_clear_error(&err);
    /* A raw reader shares everything, as qemu-img's readers do. */
    b = blk_open(path, "raw", NULL, 0, &err);
    g_assert_no_error(err);
    blk_unref(b);
    /* After the writer goes, a writer can come. */
    g_clear_pointer(&a, blk_unref);
    b = blk_open(path, "raw", NULL, BLOCK_O_RDWR, &err);
    g_assert_no_error(err);
    blk_unref(b);
}

static void test_block_status_sees_holes(void)
{
    g_autofree char *path = make_file("sparse.img", 16 << 20);
    GError *err = NULL;
    g_autoptr(BlockBackend) blk = blk_open(path, "raw", NULL, BLOCK_O_RDWR, &err);
    g_autofree char *buf = g_malloc(1 << 20);
    int64_t pnum;
    int ret;

    g_assert_no_error(err);
    memset(buf, 0xab, 1 << 20);
    g_assert_cmpint(blk_pwrite(blk, 8 << 20, 1 << 20, buf, 0), ==, 0);
    ret = block_node_block_status(blk_node(blk), 0, 16 << 20, &pnum, NULL, NULL);
    g_assert_cmpint(ret, >=, 0);
    g_assert_true(ret & BLOCK_STATUS_ZERO);
    g_assert_false(ret & BLOCK_STATUS_DATA);
    g_assert_cmpint(pnum, ==, 8 << 20);
    ret = block_node_block_status(blk_node(blk), 8 << 20, 8 << 20, &pnum, NULL,
                                  NULL);
    g_assert_true(ret & BLOCK_STATUS_DATA);
    g_assert_cmpint(pnum, ==, 1 << 20);
    /* write_zeroes with unmap punches the data back into a hole */
    g_assert_cmpint(block_node_pwrite_zeroes(blk_node(blk)->file->node, 8 << 20,
                                             1 << 20, BLOCK_REQ_MAY_UNMAP), ==, 0);
    ret = block_node_block_status(blk_node(blk), 8 << 20, 8 << 20, &pnum, NULL,
                                  NULL);
    g_assert_true(ret & BLOCK_STATUS_ZERO);
    g_assert_true(ret & BLOCK_STATUS_EOF);
}

static void test_raw_window(void)
{
    g_autofree char *path = make_file("window.img", 1 << 20);
    g_autofree char *spec = g_strdup_printf(
        "driver=raw,file.filename=%s,offset=4096,size=8192", path);
    GError *err = NULL;
    g_autoptr(BlockBackend) blk = blk_open(spec, NULL, NULL, BLOCK_O_RDWR, &err);
    g_autoptr(BlockBackend) whole = NULL;
    char buf[512];

    g_assert_no_error(err);
    g_assert_cmpint(blk_getlength(blk), ==, 8192);
    memset(buf, 0x5a, sizeof(buf));
    g_assert_cmpint(blk_pwrite(blk, 0, sizeof(buf), buf, 0), ==, 0);
    g_clear_pointer(&blk, blk_unref);
    whole = blk_open(path, "raw", NULL, 0, &err);
    g_assert_no_error(err);
    memset(buf, 0, sizeof(buf));
    g_assert_cmpint(blk_pread(whole, 4096, sizeof(buf), buf, 0), ==, 0);
    g_assert_cmpint(buf[0], ==, 0x5a);
    g_assert_cmpint(buf[511], ==, 0x5a);
}

static void test_null_co_reads_zeroes(void)
{
    GError *err = NULL;
    g_autoptr(BlockBackend) blk = blk_open(
        "json:{\"driver\":\"null-co\",\"size\":\"1M\"}", NULL, NULL, 0, &err);
    char buf[4096];

    g_assert_no_error(err);
    memset(buf, 1, sizeof(buf));
    g_assert_cmpint(blk_getlength(blk), ==, 1 << 20);
    g_assert_cmpint(blk_pread(blk, 0, sizeof(buf), buf, 0), ==, 0);
    for (size_t i = 0; i < sizeof(buf); i++) {
        g_assert_cmpint(buf[i], ==, 0);
    }
}

static void test_direct_io_bounces_unaligned(void)
{
    g_autofree char *path = make_file("direct.img", 1 << 20);
    GError *err = NULL;
    g_autoptr(json_t) extra = json_pack("{s:{s:b}}", "cache", "direct", 1);
    g_autoptr(BlockBackend) blk = blk_open(path, "raw", extra, BLOCK_O_RDWR, &err);
    char w[100], r[100];

    if (!blk && err && strstr(err->message, "O_DIRECT")) {
        g_test_skip("the temporary directory's file system has no O_DIRECT");
        g_clear_error(&err);
        return;
    }
    g_assert_no_error(err);
    g_assert_cmpuint(blk_node(blk)->file->node->request_alignment, >=, 512);
    memset(w, 0x77, sizeof(w));
    g_assert_cmpint(blk_pwrite(blk, 1001, sizeof(w), w, 0), ==, 0);
    g_assert_cmpint(blk_pread(blk, 1001, sizeof(r), r, 0), ==, 0);
    g_assert_cmpmem(w, sizeof(w), r, sizeof(r));
    /* neighbours untouched */
    g_assert_cmpint(blk_pread(blk, 1000, 1, r, 0), ==, 0);
    g_assert_cmpint(r[0], ==, 0);
}

static void test_unknown_option_is_named(void)
{
    g_autofree char *path = make_file("opt.img", 4096);
    g_autofree char *spec = g_strdup_printf("driver=raw,file.filename=%s,bogus=1",
                                            path);
    GError *err = NULL;

    g_assert_null(blk_open(spec, NULL, NULL, 0, &err));
    g_assert_nonnull(strstr(err->message, "bogus"));
    g_clear_error(&err);
}

static void test_read_only_write_refused(void)
{
    g_autofree char *path = make_file("ro.img", 4096);
    GError *err = NULL;
    g_autoptr(BlockBackend) blk = blk_open(path, "raw", NULL, 0, &err);
    char buf[512] = { 0 };

    g_assert_no_error(err);
    g_assert_cmpint(blk_pwrite(blk, 0, sizeof(buf), buf, 0), ==, -EPERM);
    g_assert_cmpint(block_node_pwrite(blk_node(blk), 0, sizeof(buf), buf, 0),
                    ==, -EPERM);
}

int main(int argc, char **argv)
{
    int ret;

    g_test_init(&argc, &argv, NULL);
    tmpdir = g_dir_make_tmp("ferry-test-graph-XXXXXX", NULL);
    g_test_add_func("/blockdev/graph/raw-read-write-roundtrip",
                    test_raw_read_write_roundtrip);
    g_test_add_func("/blockdev/graph/two-writers-refused-in-process",
                    test_two_writers_refused_in_process);
    g_test_add_func("/blockdev/graph/second-open-sees-ofd-lock",
                    test_second_open_sees_ofd_lock);
    g_test_add_func("/blockdev/graph/block-status-sees-holes",
                    test_block_status_sees_holes);
    g_test_add_func("/blockdev/graph/raw-window", test_raw_window);
    g_test_add_func("/blockdev/graph/null-co-reads-zeroes",
                    test_null_co_reads_zeroes);
    g_test_add_func("/blockdev/graph/direct-io-bounces-unaligned",
                    test_direct_io_bounces_unaligned);
    g_test_add_func("/blockdev/graph/unknown-option-is-named",
                    test_unknown_option_is_named);
    g_test_add_func("/blockdev/graph/read-only-write-refused",
                    test_read_only_write_refused);
    ret = g_test_run();
    {
        g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", tmpdir);
        (void)!system(cmd);
    }
    return ret;
}
