/*
 * qcow2 driver internals on tiny images: refcount packing for every width,
 * cache eviction and writeback with a two-table cache, refcount table
 * growth, copy-on-write of partial clusters from a backing file, and
 * concurrent writers sharing unallocated clusters.
 *
 *   BlockBackend --> [qcow2 tmpdir/x.qcow2] --file--> [file]
 *                         |
 *                      backing --> [raw tmpdir/base.raw] (COW test only)
 */
#include "config.h"

#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include <glib.h>
#include <glib/gstdio.h>

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

static BlockBackend *open_rw(const char *path, const char *extra)
{
    GError *err = NULL;
    g_autofree char *spec = extra ? g_strdup_printf("driver=qcow2,file.filename=%s,%s",
                                                    path, extra)
                                  : g_strdup(path);
    BlockBackend *blk = blk_open(spec, extra ? NULL : "qcow2", NULL,
                                 BLOCK_O_RDWR, &err);

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

static void test_refcount_pack_every_width(void)
{
    uint8_t block[512];

    for (uint32_t order = 0; order <= 6; order++) {
        uint32_t bits = 1u << order;
        uint64_t max = bits == 64 ? UINT64_MAX : (1ull << bits) - 1;
        uint64_t n = sizeof(block) * 8 / bits;
        memset(block, 0, sizeof(block));
        for (uint64_t i = 0; i < n; i++) {
            qcow2_rc_set_entry(block, order, i, (i * 0x9e3779b97f4a7c15ull) & max);
        }
        for (uint64_t i = 0; i < n; i++) {
            g_assert_cmpuint(qcow2_rc_get_entry(block, order, i), ==,
                             (i * 0x9e3779b97f4a7c15ull) & max);
        }
        /* Changing one entry leaves its neighbours alone. */
        qcow2_rc_set_entry(block, order, 5, max);
        g_assert_cmpuint(qcow2_rc_get_entry(block, order, 4), ==,
                         (4 * 0x9e3779b97f4a7c15ull) & max);
        g_assert_cmpuint(qcow2_rc_get_entry(block, order, 6), ==,
                         (6 * 0x9e3779b97f4a7c15ull) & max);
        g_assert_cmpuint(qcow2_rc_get_entry(block, order, 5), ==, max);
    }
    /* Sub-byte widths: entry 0 is in the least significant bits. */
    memset(block, 0, sizeof(block));
    qcow2_rc_set_entry(block, 0, 0, 1);
    g_assert_cmpuint(block[0], ==, 1);
    qcow2_rc_set_entry(block, 2, 1, 0xf);
    g_assert_cmpuint(block[0], ==, 0xf1);
}

/* 512-byte clusters: one L2 table covers 32 KiB; the cache holds 2. */
static void test_cache_eviction_writeback(void)
{
    g_autofree char *path = make_qcow2("evict.qcow2", "cluster_size=512", 1 << 20);
    g_autofree uint8_t *buf = g_malloc(4096);
    BlockBackend *blk = open_rw(path, "l2-cache-size=1024,refcount-cache-size=1024");
    Qcow2State *s = blk_node(blk)->opaque;

    g_assert_cmpint(s->l2_cache.size, ==, 2);
    for (int i = 0; i < 32; i++) {
        memset(buf, i + 1, 4096);
        g_assert_cmpint(blk_pwrite(blk, i * 32768 + 1000, 4096, buf, 0), ==, 0);
    }
    for (int i = 31; i >= 0; i--) {
        g_assert_cmpint(blk_pread(blk, i * 32768 + 1000, 4096, buf, 0), ==, 0);
        g_assert_cmpuint(buf[0], ==, i + 1);
        g_assert_cmpuint(buf[4095], ==, i + 1);
    }
    assert_clean(blk);
    blk_unref(blk);
    /* After close everything written back: a fresh open reads the same. */
    blk = open_rw(path, NULL);
    for (int i = 0; i < 32; i++) {
        g_assert_cmpint(blk_pread(blk, i * 32768 + 1000, 4096, buf, 0), ==, 0);
        g_assert_cmpuint(buf[100], ==, i + 1);
    }
    assert_clean(blk);
    blk_unref(blk);
}

/* 64-bit refcounts in 512-byte clusters: the one-cluster table covers 2 MiB. */
static void test_refcount_table_grows(void)
{
    g_autofree char *path = make_qcow2("grow.qcow2",
                                       "cluster_size=512,refcount_bits=64",
                                       8 << 20);
    g_autofree uint8_t *buf = g_malloc(1 << 20);
    BlockBackend *blk = open_rw(path, NULL);
    Qcow2State *s = blk_node(blk)->opaque;
    uint32_t before = s->reftable_clusters;

    for (int i = 0; i < 6; i++) {
        memset(buf, 0x40 + i, 1 << 20);
        g_assert_cmpint(blk_pwrite(blk, (int64_t)i << 20, 1 << 20, buf, 0), ==, 0);
    }
    g_assert_cmpuint(s->reftable_clusters, >, before);
    g_assert_cmpint(blk_flush(blk), ==, 0);
    assert_clean(blk);
    for (int i = 0; i < 6; i++) {
        g_assert_cmpint(blk_pread(blk, (int64_t)i << 20, 1 << 20, buf, 0), ==, 0);
        g_assert_cmpuint(buf[0], ==, 0x40 + i);
        g_assert_cmpuint(buf[(1 << 20) - 1], ==, 0x40 + i);
    }
    blk_unref(blk);
}

/* A 3-byte write into a cluster whose rest comes from the backing file. */
static void test_cow_partial_cluster_from_backing(void)
{
    g_autofree char *base = g_build_filename(tmpdir, "base.raw", NULL);
    g_autofree char *top = NULL;
    g_autofree uint8_t *buf = g_malloc(65536 * 2);
    g_autoptr(json_t) opts = json_object();
    GError *err = NULL;
    BlockBackend *blk;
    int fd;

    fd = open(base, O_RDWR | O_CREAT | O_TRUNC, 0644);
    memset(buf, 0xba, 65536 * 2);
    g_assert_cmpint(pwrite(fd, buf, 65536 + 4096, 0), ==, 65536 + 4096);
    close(fd);
    json_object_set_new(opts, "size", json_integer(1 << 20));
    json_object_set_new(opts, "backing_file", json_string(base));
    json_object_set_new(opts, "backing_fmt", json_string("raw"));
    top = g_build_filename(tmpdir, "top.qcow2", NULL);
    g_assert_true(block_create("qcow2", top, opts, &err));
    g_assert_no_error(err);
    blk = open_rw(top, NULL);
    g_assert_cmpint(blk_pwrite(blk, 65536 + 10, 3, "abc", 0), ==, 0);
    g_assert_cmpint(blk_pread(blk, 0, 65536 * 2, buf, 0), ==, 0);
    g_assert_cmpuint(buf[0], ==, 0xba);
    g_assert_cmpuint(buf[65536 + 9], ==, 0xba);
    g_assert_cmpmem(buf + 65536 + 10, 3, "abc", 3);
    g_assert_cmpuint(buf[65536 + 13], ==, 0xba);
    g_assert_cmpuint(buf[65536 + 4095], ==, 0xba);
    /* Past the end of the shorter backing file: zeroes. */
    g_assert_cmpuint(buf[65536 + 4096], ==, 0);
    g_assert_cmpuint(buf[65536 * 2 - 1], ==, 0);
    assert_clean(blk);
    blk_unref(blk);
}

typedef struct Writer {
    BlockBackend *blk;
    int id;
    int nthreads;
} Writer;

/* Each thread owns every nthreads-th 4 KiB piece of the same clusters. */
static gpointer writer_thread(gpointer opaque)
{
    Writer *w = opaque;
    uint8_t buf[4096];

    memset(buf, 0x10 + w->id, sizeof(buf));
    for (int64_t piece = w->id; piece < 1024; piece += w->nthreads) {
        int ret = blk_pwrite(w->blk, piece * 4096, 4096, buf, 0);
        g_assert_cmpint(ret, ==, 0);
    }
    return NULL;
}

static void test_concurrent_writers_same_clusters(void)
{
    g_autofree char *path = make_qcow2("conc.qcow2", NULL, 8 << 20);
    BlockBackend *blk = open_rw(path, NULL);
    Writer w[4];
    GThread *t[4];
    uint8_t buf[4096];

    for (int i = 0; i < 4; i++) {
        w[i] = (Writer){ blk, i, 4 };
        t[i] = g_thread_new("writer", writer_thread, &w[i]);
    }
    for (int i = 0; i < 4; i++) {
        g_thread_join(t[i]);
    }
    for (int64_t piece = 0; piece < 1024; piece++) {
        g_assert_cmpint(blk_pread(blk, piece * 4096, 4096, buf, 0), ==, 0);
        g_assert_cmpuint(buf[0], ==, 0x10 + piece % 4);
        g_assert_cmpuint(buf[4095], ==, 0x10 + piece % 4);
    }
    g_assert_cmpint(blk_flush(blk), ==, 0);
    assert_clean(blk);
    blk_unref(blk);
}

/* Random overlapping sector-aligned writes from several threads. */
static gpointer overlap_thread(gpointer opaque)
{
    Writer *w = opaque;
    GRand *rnd = g_rand_new_with_seed(w->id + 1);
    g_autofree uint8_t *buf = g_malloc(128 * 1024);

    memset(buf, 0x20 + w->id, 128 * 1024);
    for (int i = 0; i < 200; i++) {
        int64_t off = (int64_t)g_rand_int_range(rnd, 0, 4096) * 512;
        int64_t len = (int64_t)g_rand_int_range(rnd, 1, 256) * 512;
        len = MIN(len, (2 << 20) - off);
        g_assert_cmpint(blk_pwrite(w->blk, off, len, buf, 0), ==, 0);
    }
    g_rand_free(rnd);
    return NULL;
}

static void test_concurrent_overlapping_writes(void)
{
    g_autofree char *path = make_qcow2("overlap.qcow2", "cluster_size=4k",
                                       2 << 20);
    BlockBackend *blk = open_rw(path, NULL);
    g_autofree uint8_t *buf = g_malloc(2 << 20);
    Writer w[4];
    GThread *t[4];

    for (int i = 0; i < 4; i++) {
        w[i] = (Writer){ blk, i, 4 };
        t[i] = g_thread_new("overlap", overlap_thread, &w[i]);
    }
    for (int i = 0; i < 4; i++) {
        g_thread_join(t[i]);
    }
    g_assert_cmpint(blk_flush(blk), ==, 0);
    assert_clean(blk);
    blk_unref(blk);
    /* Every sector holds one writer's pattern (or zeroes): nothing lost. */
    blk = open_rw(path, NULL);
    g_assert_cmpint(blk_pread(blk, 0, 2 << 20, buf, 0), ==, 0);
    for (int64_t sec = 0; sec < (2 << 20) / 512; sec++) {
        uint8_t v = buf[sec * 512];
        g_assert_true(v == 0 || (v >= 0x20 && v < 0x24));
        for (int j = 1; j < 512; j++) {
            g_assert_cmpuint(buf[sec * 512 + j], ==, v);
        }
    }
    assert_clean(blk);
    blk_unref(blk);
}

/*
 * Invariant 11: a discard racing an in-place write of the same cluster
 * waits for it.  Without that, the discard frees the host cluster, a flush
 * makes it reusable, another write takes it for other data, and the late
 * in-place write lands in that data.  Writer A is held by the driver's
 * test hook between planning its in-place write and doing it, while B
 * discards the cluster, flushes and writes a fresh cluster (which would
 * take the freed host cluster).
 */
static GMutex race_lock;
static GCond race_cond;
static int race_state;      /* 0: A not there, 1: A held, 2: A released */

static void race_hook(Qcow2State *s, const char *event)
{
    g_mutex_lock(&race_lock);
    if (race_state == 0 && !strcmp(event, "in-place-write")) {
        race_state = 1;
        g_cond_broadcast(&race_cond);
        while (race_state == 1) {
            g_cond_wait(&race_cond, &race_lock);
        }
    }
    g_mutex_unlock(&race_lock);
}

typedef struct RaceCtx {
    BlockBackend *blk;
    gint b_done;
} RaceCtx;

static gpointer race_a(gpointer opaque)
{
    RaceCtx *c = opaque;
    uint8_t buf[65536];

    memset(buf, 0xaa, sizeof(buf));
    g_assert_cmpint(blk_pwrite(c->blk, 0, sizeof(buf), buf, 0), ==, 0);
    return NULL;
}

static gpointer race_b(gpointer opaque)
{
    RaceCtx *c = opaque;
    uint8_t buf[65536];

    g_assert_cmpint(blk_pdiscard(c->blk, 0, 65536), ==, 0);
    g_assert_cmpint(blk_flush(c->blk), ==, 0);
    memset(buf, 0x5a, sizeof(buf));
    g_assert_cmpint(blk_pwrite(c->blk, 1 << 20, sizeof(buf), buf, 0), ==, 0);
    g_atomic_int_set(&c->b_done, 1);
    return NULL;
}

static void test_discard_waits_for_inplace_write(void)
{
    g_autofree char *path = make_qcow2("race.qcow2", NULL, 4 << 20);
    BlockBackend *blk = open_rw(path, "discard=unmap");
    Qcow2State *s = blk_node(blk)->opaque;
    RaceCtx c = { blk, 0 };
    uint8_t buf[65536];
    GThread *a, *b;
    bool b_early;

    memset(buf, 0x11, sizeof(buf));
    g_assert_cmpint(blk_pwrite(blk, 0, sizeof(buf), buf, 0), ==, 0);
    g_assert_cmpint(blk_flush(blk), ==, 0);
    race_state = 0;
    s->test_hook = race_hook;
    a = g_thread_new("race-a", race_a, &c);
    g_mutex_lock(&race_lock);
    while (race_state != 1) {
        g_cond_wait(&race_cond, &race_lock);
    }
    g_mutex_unlock(&race_lock);
    b = g_thread_new("race-b", race_b, &c);
    g_usleep(200 * 1000);
    b_early = g_atomic_int_get(&c.b_done);
    g_mutex_lock(&race_lock);
    race_state = 2;
    g_cond_broadcast(&race_cond);
    g_mutex_unlock(&race_lock);
    g_thread_join(a);
    g_thread_join(b);
    s->test_hook = NULL;

    g_assert_false(b_early);        /* the discard waited for A's write */
    g_assert_cmpint(blk_pread(blk, 1 << 20, sizeof(buf), buf, 0), ==, 0);
    for (size_t i = 0; i < sizeof(buf); i++) {
        if (buf[i] != 0x5a) {
            g_error("byte %zu of the fresh cluster is 0x%02x: the late "
                    "in-place write landed in a reused cluster", i, buf[i]);
        }
    }
    g_assert_cmpint(blk_flush(blk), ==, 0);
    assert_clean(blk);
    blk_unref(blk);
}

/* Growing with preallocation maps the new clusters; shrinking frees them. */
static void test_truncate_prealloc_and_shrink(void)
{
    g_autofree char *path = make_qcow2("trunc.qcow2", "cluster_size=4k", 1 << 20);
    BlockBackend *blk = open_rw(path, NULL);
    BlockNode *bs = blk_node(blk);
    GError *err = NULL;
    int64_t pnum, map;
    BlockNode *file;
    uint8_t buf[4096];
    int ret;

    g_assert_true(blk_truncate(blk, 3 << 20, false, BLOCK_PREALLOC_METADATA,
                               &err));
    g_assert_no_error(err);
    ret = block_node_block_status(bs, 2 << 20, 1 << 20, &pnum, &map, &file);
    g_assert_cmpint(ret & BLOCK_STATUS_ALLOCATED, !=, 0);
    g_assert_cmpint(ret & BLOCK_STATUS_OFFSET_VALID, !=, 0);
    g_assert_cmpint(pnum, ==, 1 << 20);
    g_assert_true(blk_truncate(blk, 4 << 20, false, BLOCK_PREALLOC_FULL, &err));
    g_assert_no_error(err);
    g_assert_cmpint(blk_pread(blk, (4 << 20) - 4096, 4096, buf, 0), ==, 0);
    g_assert_cmpuint(buf[0], ==, 0);
    g_assert_cmpint(blk_flush(blk), ==, 0);
    assert_clean(blk);
    memset(buf, 0x77, sizeof(buf));
    g_assert_cmpint(blk_pwrite(blk, 100 * 1024, 4096, buf, 0), ==, 0);
    g_assert_true(blk_truncate(blk, 512 * 1024, true, BLOCK_PREALLOC_OFF, &err));
    g_assert_no_error(err);
    g_assert_cmpint(blk_getlength(blk), ==, 512 * 1024);
    assert_clean(blk);
    g_assert_cmpint(blk_pread(blk, 100 * 1024, 4096, buf, 0), ==, 0);
    g_assert_cmpuint(buf[4095], ==, 0x77);
    blk_unref(blk);
}

int main(int argc, char **argv)
{
    int ret;

    g_test_init(&argc, &argv, NULL);
    tmpdir = g_dir_make_tmp("ferry-qcow2-XXXXXX", NULL);
    g_test_add_func("/qcow2/refcount/pack-every-width",
                    test_refcount_pack_every_width);
    g_test_add_func("/qcow2/cache/eviction-writeback",
                    test_cache_eviction_writeback);
    g_test_add_func("/qcow2/refcount/grow-table", test_refcount_table_grows);
    g_test_add_func("/qcow2/cluster/cow-partial-from-backing",
                    test_cow_partial_cluster_from_backing);
    g_test_add_func("/qcow2/cluster/concurrent-writers-same-clusters",
                    test_concurrent_writers_same_clusters);
    g_test_add_func("/qcow2/cluster/concurrent-overlapping-writes",
                    test_concurrent_overlapping_writes);
    g_test_add_func("/qcow2/cluster/discard-waits-for-in-place-write",
                    test_discard_waits_for_inplace_write);
    g_test_add_func("/qcow2/truncate/prealloc-and-shrink",
                    test_truncate_prealloc_and_shrink);
    ret = g_test_run();
    {
        g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", tmpdir);
        if (system(cmd) != 0) {
            g_printerr("cannot remove %s\n", tmpdir);
        }
    }
    return ret;
}
