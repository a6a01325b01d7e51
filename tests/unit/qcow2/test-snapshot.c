/*
 * qcow2 internal snapshots on tiny images: create / revert / delete keep
 * the data each state had, refcounts exact (check clean) and COPIED set
 * again once a snapshot is gone (rewrites stay in place); a refcount too
 * narrow for one more reference refuses cleanly; reverting to a snapshot
 * of another size resizes; a damaged table fails the open in one line.
 *
 *   BlockBackend --> [qcow2 tmpdir/x.qcow2] --file--> [file]
 */
#include "config.h"

#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include <glib.h>

#include "blockdev/backend.h"
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

static BlockBackend *open_rw(const char *path)
{
    GError *err = NULL;
    BlockBackend *blk = blk_open(path, "qcow2", NULL, BLOCK_O_RDWR, &err);

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
    g_assert_cmpint(res.check_errors, ==, 0);
}

static void fill(BlockBackend *blk, int64_t off, int64_t len, int pat)
{
    g_autofree uint8_t *buf = g_malloc(len);

    memset(buf, pat, len);
    g_assert_cmpint(blk_pwrite(blk, off, len, buf, 0), ==, 0);
}

static void expect(BlockBackend *blk, int64_t off, int64_t len, int pat)
{
    g_autofree uint8_t *buf = g_malloc(len);

    g_assert_cmpint(blk_pread(blk, off, len, buf, 0), ==, 0);
    for (int64_t i = 0; i < len; i++) {
        if (buf[i] != pat) {
            g_error("offset %" G_GINT64_FORMAT ": 0x%02x, expected 0x%02x",
                    off + i, buf[i], pat);
        }
    }
}

static bool snap(BlockBackend *blk, const char *op, const char *name,
                 GError **errp)
{
    BlockNode *bs = blk_node(blk);
    bool ok;

    block_node_drain_begin(bs);
    if (!strcmp(op, "create")) {
        BlockSnapshotInfo sn = { .name = g_strdup(name), .date_sec = 1,
                                 .icount = UINT64_MAX };
        ok = bs->drv->snapshot_create(bs, &sn, errp);
        block_snapshot_info_clear(&sn);
    } else if (!strcmp(op, "goto")) {
        ok = bs->drv->snapshot_goto(bs, name, errp);
    } else {
        ok = bs->drv->snapshot_delete(bs, NULL, name, errp);
    }
    block_node_drain_end(bs);
    return ok;
}

static void snap_ok(BlockBackend *blk, const char *op, const char *name)
{
    GError *err = NULL;

    g_assert_true(snap(blk, op, name, &err));
    g_assert_no_error(err);
}

static void test_create_goto_delete(void)
{
    g_autofree char *path = make_qcow2("snap.qcow2", "cluster_size=4k",
                                       1 << 20);
    BlockBackend *blk = open_rw(path);
    Qcow2State *s = blk_node(blk)->opaque;
    uint64_t end;

    fill(blk, 0, 64 << 10, 0x11);
    snap_ok(blk, "create", "a");
    g_assert_cmpuint(s->nb_snapshots, ==, 1);
    /* Every active L1 entry lost COPIED: its L2 table is shared now. */
    g_assert_false(s->l1[0] & QCOW2_OFLAG_COPIED);
    assert_clean(blk);
    fill(blk, 4096, 4096, 0x22);
    snap_ok(blk, "create", "b");
    fill(blk, 0, 8192, 0x33);
    expect(blk, 0, 8192, 0x33);
    assert_clean(blk);

    snap_ok(blk, "goto", "a");
    expect(blk, 0, 64 << 10, 0x11);
    assert_clean(blk);
    snap_ok(blk, "goto", "2");          /* by ID */
    expect(blk, 0, 4096, 0x11);
    expect(blk, 4096, 4096, 0x22);
    assert_clean(blk);

    snap_ok(blk, "delete", "a");
    snap_ok(blk, "delete", "b");
    g_assert_cmpuint(s->nb_snapshots, ==, 0);
    g_assert_cmpuint(s->snapshots_offset, ==, 0);
    assert_clean(blk);
    /* Alone again: COPIED is back and a rewrite goes in place. */
    g_assert_true(s->l1[0] & QCOW2_OFLAG_COPIED);
    g_assert_cmpint(blk_flush(blk), ==, 0);
    end = s->file_end;
    fill(blk, 0, 64 << 10, 0x44);
    g_assert_cmpint(blk_flush(blk), ==, 0);
    g_assert_cmpuint(s->file_end, ==, end);
    expect(blk, 4096, 4096, 0x44);
    assert_clean(blk);
    blk_unref(blk);
}

static void test_reopen_keeps_table(void)
{
    g_autofree char *path = make_qcow2("reopen.qcow2", NULL, 1 << 20);
    BlockBackend *blk = open_rw(path);
    BlockSnapshotInfo *list = NULL;
    GError *err = NULL;
    int n;

    fill(blk, 0, 65536, 0x55);
    for (int i = 0; i < 5; i++) {
        g_autofree char *name = g_strdup_printf("s%d", i);
        snap_ok(blk, "create", name);
    }
    snap_ok(blk, "delete", "s1");
    blk_unref(blk);
    blk = open_rw(path);
    n = blk_node(blk)->drv->snapshot_list(blk_node(blk), &list, &err);
    g_assert_no_error(err);
    g_assert_cmpint(n, ==, 4);
    g_assert_cmpstr(list[0].name, ==, "s0");
    g_assert_cmpstr(list[1].id, ==, "3");
    g_assert_cmpstr(list[3].id, ==, "5");
    g_assert_cmpuint(list[3].disk_size, ==, 1 << 20);
    g_assert_cmpuint(list[3].icount, ==, UINT64_MAX);
    for (int i = 0; i < n; i++) {
        block_snapshot_info_clear(&list[i]);
    }
    g_free(list);
    snap_ok(blk, "create", "s5");
    g_assert_cmpstr(((Qcow2State *)blk_node(blk)->opaque)->snapshots[4].id,
                    ==, "6");
    assert_clean(blk);
    blk_unref(blk);
}

static void test_narrow_refcount_refused(void)
{
    g_autofree char *path = make_qcow2("narrow.qcow2", "refcount_bits=1",
                                       1 << 20);
    BlockBackend *blk = open_rw(path);
    GError *err = NULL;

    fill(blk, 0, 65536, 0x66);
    g_assert_false(snap(blk, "create", "x", &err));
    g_assert_nonnull(err);
    g_assert_nonnull(strstr(err->message, "refcount_bits=1"));
    g_clear_error(&err);
    g_assert_cmpuint(((Qcow2State *)blk_node(blk)->opaque)->nb_snapshots, ==,
                     0);
    assert_clean(blk);
    blk_unref(blk);
}

static void test_goto_other_size(void)
{
    g_autofree char *path = make_qcow2("size.qcow2", NULL, 1 << 20);
    BlockBackend *blk = open_rw(path);
    GError *err = NULL;

    fill(blk, 0, 65536, 0x77);
    snap_ok(blk, "create", "small");
    g_assert_true(blk_truncate(blk, 4 << 20, true, BLOCK_PREALLOC_OFF, &err));
    g_assert_no_error(err);
    fill(blk, 3 << 20, 65536, 0x78);
    snap_ok(blk, "create", "big");
    snap_ok(blk, "goto", "small");
    g_assert_cmpint(blk_getlength(blk), ==, 1 << 20);
    expect(blk, 0, 65536, 0x77);
    assert_clean(blk);
    /* Shrinking with snapshots stays refused; growing back works. */
    g_assert_false(blk_truncate(blk, 512 << 10, true, BLOCK_PREALLOC_OFF,
                                &err));
    g_clear_error(&err);
    snap_ok(blk, "goto", "big");
    g_assert_cmpint(blk_getlength(blk), ==, 4 << 20);
    expect(blk, 3 << 20, 65536, 0x78);
    assert_clean(blk);
    blk_unref(blk);
}

static void test_damaged_table_refused(void)
{
    g_autofree char *path = make_qcow2("bad.qcow2", NULL, 1 << 20);
    BlockBackend *blk = open_rw(path);
    uint32_t nb = GUINT32_TO_BE(70000);
    GError *err = NULL;
    int fd;

    snap_ok(blk, "create", "x");
    blk_unref(blk);
    fd = open(path, O_WRONLY);
    g_assert_cmpint(pwrite(fd, &nb, 4, 60), ==, 4);
    close(fd);
    blk = blk_open(path, "qcow2", NULL, 0, &err);
    g_assert_null(blk);
    g_assert_nonnull(err);
    g_assert_nonnull(strstr(err->message, "70000 snapshots"));
    g_assert_null(strchr(err->message, '\n'));
    g_clear_error(&err);
}

int main(int argc, char **argv)
{
    int ret;

    g_test_init(&argc, &argv, NULL);
    tmpdir = g_dir_make_tmp("ferry-qcow2-snap-XXXXXX", NULL);
    g_test_add_func("/qcow2/snapshot/create-goto-delete",
                    test_create_goto_delete);
    g_test_add_func("/qcow2/snapshot/reopen-keeps-table",
                    test_reopen_keeps_table);
    g_test_add_func("/qcow2/snapshot/narrow-refcount-refused",
                    test_narrow_refcount_refused);
    g_test_add_func("/qcow2/snapshot/goto-other-size", test_goto_other_size);
    g_test_add_func("/qcow2/snapshot/damaged-table-refused",
                    test_damaged_table_refused);
    ret = g_test_run();
    {
        g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", tmpdir);
        if (system(cmd) != 0) {
            g_printerr("cannot remove %s\n", tmpdir);
        }
    }
    return ret;
}
