/*
 * Block jobs while the disk is written: two writer threads keep writing
 * through a BlockBackend (as a guest or an NBD client would) while mirror,
 * backup and stream run; afterwards every byte is what it must be (the
 * writers' last data, or the point in time for backup).  Also the state
 * machine's verb table.
 *
 *   writers --> BlockBackend --> [qcow2 src] --file--> [file src.qcow2]
 *   job     --> src, target  (mirror pivots the backend onto target)
 */
#include "config.h"

#include <errno.h>
#include <string.h>

#include <glib.h>
#include <glib/gstdio.h>

#include "blockdev/backend.h"
#include "blockdev/driver.h"
#include "blockdev/job.h"
#include "blockdev/jobs.h"
#include "common/opts.h"

#define DISK_BYTES  (32 << 20)
#define BLOCK_BYTES 4096
#define NB_BLOCKS   (DISK_BYTES / BLOCK_BYTES)
#define WRITERS     2

static char *tmpdir;

typedef struct Writers {
    BlockBackend *blk;
    uint8_t shadow[NB_BLOCKS];   /* pattern byte last written per block */
    volatile int stop;
    int failures;
    GThread *threads[WRITERS];
    int writes;
} Writers;

typedef struct WriterArg {
    Writers *w;
    int index;
} WriterArg;

/* Writer i owns the blocks whose 256 KiB stripe number is i mod WRITERS. */
static gpointer writer_main(gpointer opaque)
{
    WriterArg *a = opaque;
    Writers *w = a->w;
    GRand *rnd = g_rand_new_with_seed(1234 + a->index);
    g_autofree uint8_t *buf = g_malloc(64 * BLOCK_BYTES);

    while (!g_atomic_int_get(&w->stop)) {
        int stripe = g_rand_int_range(rnd, 0, DISK_BYTES / (256 << 10));
        int first, n;
        uint8_t pat = (uint8_t)g_rand_int_range(rnd, 1, 256);
        if (stripe % WRITERS != a->index) {
            continue;
        }
        first = stripe * 64 + g_rand_int_range(rnd, 0, 64);
        n = g_rand_int_range(rnd, 1, 64 - first % 64 + 1);
        memset(buf, pat, (size_t)n * BLOCK_BYTES);
        if (blk_pwrite(w->blk, (int64_t)first * BLOCK_BYTES,
                       (int64_t)n * BLOCK_BYTES, buf, 0) < 0) {
            g_atomic_int_inc(&w->failures);
            continue;
        }
        memset(&w->shadow[first], pat, n);
        g_atomic_int_inc(&w->writes);
        g_usleep(200);
    }
    g_rand_free(rnd);
    g_free(a);
    return NULL;
}

static void writers_start(Writers *w)
{
    for (int i = 0; i < WRITERS; i++) {
        WriterArg *a = g_new0(WriterArg, 1);
        a->w = w;
        a->index = i;
        w->threads[i] = g_thread_new("writer", writer_main, a);
    }
}

static void writers_stop(Writers *w)
{
    g_atomic_int_set(&w->stop, 1);
    for (int i = 0; i < WRITERS; i++) {
        g_thread_join(w->threads[i]);
    }
    g_assert_cmpint(w->failures, ==, 0);
}

static char *make_qcow2(const char *name, const char *backing)
{
    char *path = g_build_filename(tmpdir, name, NULL);
    g_autoptr(json_t) opts = json_pack("{s:I}", "size",
                                       (json_int_t)DISK_BYTES);
    GError *err = NULL;

    if (backing) {
        json_object_set_new(opts, "backing_file", json_string(backing));
        json_object_set_new(opts, "backing_fmt", json_string("qcow2"));
    }
    g_unlink(path);
    g_assert_true(block_create("qcow2", path, opts, &err));
    g_assert_no_error(err);
    return path;
}

/* Fill every block with pattern (block index % 251) + 1 through blk. */
static void fill_initial(BlockBackend *blk, uint8_t *shadow)
{
    g_autofree uint8_t *buf = g_malloc(BLOCK_BYTES);

    for (int b = 0; b < NB_BLOCKS; b += 3) {     /* two thirds stay holes */
        uint8_t pat = (uint8_t)(b % 251 + 1);
        memset(buf, pat, BLOCK_BYTES);
        g_assert_cmpint(blk_pwrite(blk, (int64_t)b * BLOCK_BYTES, BLOCK_BYTES,
                                   buf, 0), ==, 0);
        if (shadow) {
            shadow[b] = pat;
        }
    }
}

/* Every block of bs reads as its expected pattern (0 for holes). */
static void assert_content(BlockNode *bs, const uint8_t *expect)
{
    g_autofree uint8_t *buf = g_malloc(BLOCK_BYTES);

    for (int b = 0; b < NB_BLOCKS; b++) {
        g_assert_cmpint(block_node_pread(bs, (int64_t)b * BLOCK_BYTES,
                                         BLOCK_BYTES, buf, 0), ==, 0);
        for (int i = 0; i < BLOCK_BYTES; i++) {
            if (buf[i] != expect[b]) {
                g_error("block %d byte %d: got 0x%02x, want 0x%02x", b, i,
                        buf[i], expect[b]);
            }
        }
    }
}

static BlockJobCommon common(const char *id)
{
    BlockJobCommon c = { .job_id = id, .auto_finalize = true,
                         .auto_dismiss = false };
    return c;
}

static int finish(BlockJob *job)
{
    int ret;

    block_job_wait_concluded(job);
    ret = job->ret;
    g_assert_true(block_job_dismiss(job, NULL));
    return ret;
}

static void wait_ready(BlockJob *job)
{
    while (!block_job_is_ready(job)) {
        g_main_context_iteration(NULL, FALSE);
        g_usleep(1000);
    }
}

/*
 * Mirror while two writers write, through ready and the pivot: the target
 * ends with every writer's last data (in either copy mode).
 */
static void mirror_under_writes(const char *prefix, bool write_blocking)
{
    g_autofree char *src_name = g_strdup_printf("%s-src.qcow2", prefix);
    g_autofree char *dst_name = g_strdup_printf("%s-dst.qcow2", prefix);
    g_autofree char *src = make_qcow2(src_name, NULL);
    g_autofree char *dst = make_qcow2(dst_name, NULL);
    Writers *w = g_new0(Writers, 1);
    BlockJobCommon c = common(prefix);
    GError *err = NULL;
    BlockNode *target;
    BlockJob *job;

    w->blk = blk_open(src, "qcow2", NULL, BLOCK_O_RDWR, &err);
    g_assert_no_error(err);
    fill_initial(w->blk, w->shadow);
    target = block_node_open(dst, "qcow2", NULL, BLOCK_O_RDWR, 0,
                             BLOCK_PERM_ALL, &err);
    g_assert_no_error(err);
    writers_start(w);
    job = block_mirror_start(&c, blk_node(w->blk), target, BLOCK_SYNC_FULL,
                             0, 0, write_blocking, &err);
    g_assert_no_error(err);
    wait_ready(job);
    g_usleep(100 * 1000);        /* keep writing while ready */
    g_assert_true(block_job_user_complete(job, &err));
    g_assert_cmpint(finish(job), ==, 0);
    g_usleep(50 * 1000);         /* and after the pivot */
    writers_stop(w);
    g_assert_true(blk_node(w->blk) == target);
    g_assert_cmpint(w->writes, >, 50);
    assert_content(target, w->shadow);
    blk_unref(w->blk);
    block_node_unref(target);
    g_free(w);
}

static void test_mirror_converges_under_writes_and_pivots(void)
{
    mirror_under_writes("mirror0", false);
}

static void test_backup_is_point_in_time_under_writes(void)
{
    g_autofree char *src = make_qcow2("b-src.qcow2", NULL);
    g_autofree char *dst = make_qcow2("b-dst.qcow2", NULL);
    Writers *w = g_new0(Writers, 1);
    g_autofree uint8_t *at_start = g_malloc0(NB_BLOCKS);
    BlockJobCommon c = common("backup0");
    GError *err = NULL;
    BlockNode *target;
    BlockJob *job;

    w->blk = blk_open(src, "qcow2", NULL, BLOCK_O_RDWR, &err);
    g_assert_no_error(err);
    fill_initial(w->blk, w->shadow);
    memcpy(at_start, w->shadow, NB_BLOCKS);
    target = block_node_open(dst, "qcow2", NULL, BLOCK_O_RDWR, 0,
                             BLOCK_PERM_ALL, &err);
    g_assert_no_error(err);
    c.speed = 16 << 20;          /* slow enough for writes to race it */
    job = block_backup_start(&c, blk_node(w->blk), target, BLOCK_SYNC_FULL,
                             NULL, BLOCK_BITMAP_SYNC_ON_SUCCESS, &err);
    g_assert_no_error(err);
    writers_start(w);
    g_assert_cmpint(finish(job), ==, 0);
    writers_stop(w);
    g_assert_cmpint(w->writes, >, 20);
    assert_content(target, at_start);
    assert_content(blk_node(w->blk), w->shadow);
    blk_unref(w->blk);
    block_node_unref(target);
    g_free(w);
}

static void test_stream_under_writes_keeps_guest_data(void)
{
    g_autofree char *base = make_qcow2("s-base.qcow2", NULL);
    g_autofree char *top = NULL;
    Writers *w = g_new0(Writers, 1);
    BlockJobCommon c = common("stream0");
    GError *err = NULL;
    BlockJob *job;

    {
        g_autoptr(BlockBackend) b = blk_open(base, "qcow2", NULL, BLOCK_O_RDWR,
                                             &err);
        g_assert_no_error(err);
        fill_initial(b, w->shadow);
    }
    top = make_qcow2("s-top.qcow2", base);
    w->blk = blk_open(top, "qcow2", NULL, BLOCK_O_RDWR, &err);
    g_assert_no_error(err);
    writers_start(w);
    c.speed = 32 << 20;
    job = block_stream_start(&c, blk_node(w->blk), NULL, NULL, &err);
    g_assert_no_error(err);
    g_assert_cmpint(finish(job), ==, 0);
    writers_stop(w);
    g_assert_null(blk_node(w->blk)->backing);
    assert_content(blk_node(w->blk), w->shadow);
    blk_unref(w->blk);
    g_free(w);
}

/* base <- mid <- top, writers on top: active commit pivots them to base. */
static void test_active_commit_under_writes_pivots_to_base(void)
{
    g_autofree char *base = make_qcow2("c-base.qcow2", NULL);
    g_autofree char *mid = NULL, *top = NULL;
    Writers *w = g_new0(Writers, 1);
    BlockJobCommon c = common("commit0");
    GError *err = NULL;
    BlockNode *base_node;
    BlockJob *job;

    {
        g_autoptr(BlockBackend) b = blk_open(base, "qcow2", NULL, BLOCK_O_RDWR,
                                             &err);
        g_assert_no_error(err);
        fill_initial(b, w->shadow);
    }
    mid = make_qcow2("c-mid.qcow2", base);
    top = make_qcow2("c-top.qcow2", mid);
    w->blk = blk_open(top, "qcow2", NULL, BLOCK_O_RDWR, &err);
    g_assert_no_error(err);
    base_node = blk_node(w->blk)->backing->node->backing->node;
    block_node_ref(base_node);
    writers_start(w);
    job = block_commit_start(&c, blk_node(w->blk), base_node, NULL, &err);
    g_assert_no_error(err);
    wait_ready(job);
    g_assert_true(block_job_user_complete(job, &err));
    g_assert_cmpint(finish(job), ==, 0);
    g_usleep(50 * 1000);
    writers_stop(w);
    g_assert_true(blk_node(w->blk) == base_node);
    g_assert_null(base_node->backing);
    assert_content(base_node, w->shadow);
    blk_unref(w->blk);
    block_node_unref(base_node);
    g_free(w);
}

static void test_verbs_follow_the_state_table(void)
{
    g_autofree char *src = make_qcow2("v-src.qcow2", NULL);
    g_autofree char *dst = make_qcow2("v-dst.qcow2", NULL);
    BlockJobCommon c = common("verbs0");
    GError *err = NULL;
    g_autoptr(BlockBackend) blk = blk_open(src, "qcow2", NULL, BLOCK_O_RDWR,
                                           &err);
    BlockNode *target = block_node_open(dst, "qcow2", NULL, BLOCK_O_RDWR, 0,
                                        BLOCK_PERM_ALL, &err);
    BlockJob *job;

    g_assert_no_error(err);
    fill_initial(blk, NULL);
    c.speed = 1 << 20;           /* slow: stays running */
    job = block_backup_start(&c, blk_node(blk), target, BLOCK_SYNC_FULL, NULL,
                             BLOCK_BITMAP_SYNC_ON_SUCCESS, &err);
    g_assert_no_error(err);
    g_assert_null(block_job_create(job->drv, "verbs0", 0, true, true, &err));
    g_assert_cmpstr(err->message, ==, "Job ID 'verbs0' already in use");
    g_clear_error(&err);
    g_assert_false(block_job_user_complete(job, &err));
    g_assert_cmpstr(err->message, ==, "Job 'verbs0' in state 'running' cannot "
                    "accept command verb 'complete'");
    g_clear_error(&err);
    g_assert_false(block_job_user_resume(job, &err));
    g_clear_error(&err);
    g_assert_true(block_job_user_pause(job, &err));
    g_assert_false(block_job_user_pause(job, &err));
    g_clear_error(&err);
    while (job->status != JOB_STATUS_PAUSED) {
        g_usleep(1000);
    }
    g_assert_false(block_job_dismiss(job, &err));
    g_clear_error(&err);
    g_assert_true(block_job_user_cancel(job, true, &err));
    g_assert_cmpint(finish(job), ==, -ECANCELED);
    block_node_unref(target);
}

/*
 * Write-behind: a mirror flushes its target every so often while it
 * copies (blockdev/jobs/mirror.c), and a failed flush of that kind stops
 * the job like a failed write.  The target is a null-co node whose flush
 * the test counts (and fails once, in the second case).
 */
#define WB_BYTES (96 << 20)

static int wb_flushes;
static int wb_fail_at;           /* fail the flush with this number (1-based) */

static int counting_flush(BlockNode *bs)
{
    int n = g_atomic_int_add(&wb_flushes, 1) + 1;

    (void)bs;
    return n == wb_fail_at ? -EIO : 0;
}

static BlockJob *mirror_to_counting_target(BlockNode **src_out,
                                           BlockNode **dst_out,
                                           BlockDriver *fake)
{
    g_autofree char *path = g_build_filename(tmpdir, "wb-src.raw", NULL);
    g_autofree uint8_t *data = g_malloc(WB_BYTES);
    g_autoptr(json_t) extra = json_pack("{s:I}", "size", (json_int_t)WB_BYTES);
    BlockJobCommon c = common("mirror-wb");
    GError *err = NULL;
    BlockJob *job;

    memset(data, 0x5a, WB_BYTES);
    g_assert_true(g_file_set_contents(path, (char *)data, WB_BYTES, &err));
    *src_out = block_node_open(path, "raw", NULL, BLOCK_O_RDWR, 0,
                               BLOCK_PERM_ALL, &err);
    g_assert_no_error(err);
    *dst_out = block_node_open("null-co://", "null-co", extra, BLOCK_O_RDWR,
                               0, BLOCK_PERM_ALL, &err);
    g_assert_no_error(err);
    *fake = *(*dst_out)->drv;
    fake->flush = counting_flush;
    (*dst_out)->drv = fake;
    g_atomic_int_set(&wb_flushes, 0);
    job = block_mirror_start(&c, *src_out, *dst_out, BLOCK_SYNC_FULL, 0, 0,
                             false, &err);
    g_assert_no_error(err);
    return job;
}

static void test_mirror_flushes_behind_its_copies(void)
{
    BlockDriver fake;
    BlockNode *src, *dst;
    BlockJob *job;
    GError *err = NULL;

    wb_fail_at = 0;
    job = mirror_to_counting_target(&src, &dst, &fake);
    wait_ready(job);
    /* 96 MiB copied: flushes behind the copies, then the one at ready */
    g_assert_cmpint(g_atomic_int_get(&wb_flushes), >=, 3);
    g_assert_true(block_job_user_cancel(job, false, &err));
    g_assert_no_error(err);
    finish(job);
    block_node_unref(dst);
    block_node_unref(src);
}

static void test_mirror_failed_flush_behind_stops_the_job(void)
{
    BlockDriver fake;
    BlockNode *src, *dst;
    BlockJob *job;

    wb_fail_at = 1;          /* the first flush is a write-behind one */
    job = mirror_to_counting_target(&src, &dst, &fake);
    block_job_wait_concluded(job);
    /* it failed mid-copy, not at the flush that ends the copy */
    g_assert_cmpint(job->progress_current, <, WB_BYTES);
    g_assert_cmpint(finish(job), ==, -EIO);
    block_node_unref(dst);
    block_node_unref(src);
}

/*
 * copy-mode=write-blocking: with the job paused after ready (no
 * background copying), a write through the source's users is on the
 * target when it completes; in background mode the target stays stale
 * until the job runs again.  Then complete: everything matches.
 */
static void mirror_paused_write(bool write_blocking)
{
    g_autofree char *src = make_qcow2("wb-a-src.qcow2", NULL);
    g_autofree char *dst = make_qcow2("wb-a-dst.qcow2", NULL);
    BlockJobCommon c = common("mirror-active");
    g_autofree uint8_t *shadow = g_malloc0(NB_BLOCKS);
    g_autofree uint8_t *buf = g_malloc(32 * BLOCK_BYTES);
    g_autofree uint8_t *got = g_malloc(32 * BLOCK_BYTES);
    GError *err = NULL;
    BlockBackend *blk;
    BlockNode *target;
    BlockJob *job;

    blk = blk_open(src, "qcow2", NULL, BLOCK_O_RDWR, &err);
    g_assert_no_error(err);
    fill_initial(blk, shadow);
    target = block_node_open(dst, "qcow2", NULL, BLOCK_O_RDWR, 0,
                             BLOCK_PERM_ALL, &err);
    g_assert_no_error(err);
    job = block_mirror_start(&c, blk_node(blk), target, BLOCK_SYNC_FULL, 0, 0,
                             write_blocking, &err);
    g_assert_no_error(err);
    wait_ready(job);
    g_assert_true(block_job_user_pause(job, &err));
    while (job->status != JOB_STATUS_STANDBY) {
        g_usleep(1000);
    }
    /* 128 KiB at 1 MiB: two whole 64 KiB granules */
    memset(buf, 0xc3, 32 * BLOCK_BYTES);
    g_assert_cmpint(blk_pwrite(blk, 1 << 20, 32 * BLOCK_BYTES, buf, 0), ==, 0);
    memset(&shadow[(1 << 20) / BLOCK_BYTES], 0xc3, 32);
    /* and 4 KiB inside a granule, which stays dirty too in either mode */
    memset(buf, 0x3c, BLOCK_BYTES);
    g_assert_cmpint(blk_pwrite(blk, 3 << 20, BLOCK_BYTES, buf, 0), ==, 0);
    shadow[(3 << 20) / BLOCK_BYTES] = 0x3c;
    g_assert_cmpint(block_node_pread(target, 1 << 20, 32 * BLOCK_BYTES, got,
                                     0), ==, 0);
    memset(buf, 0xc3, 32 * BLOCK_BYTES);
    if (write_blocking) {
        g_assert_true(memcmp(got, buf, 32 * BLOCK_BYTES) == 0);
        g_assert_cmpint(block_node_pread(target, 3 << 20, BLOCK_BYTES, got,
                                         0), ==, 0);
        g_assert_cmpint(got[0], ==, 0x3c);
    } else {
        g_assert_false(memcmp(got, buf, 32 * BLOCK_BYTES) == 0);
    }
    g_assert_true(block_job_user_resume(job, &err));
    g_assert_no_error(err);
    g_assert_true(block_job_user_complete(job, &err));
    g_assert_no_error(err);
    g_assert_cmpint(finish(job), ==, 0);
    assert_content(target, shadow);
    blk_unref(blk);
    block_node_unref(target);
}

static void test_mirror_write_blocking_writes_through(void)
{
    mirror_paused_write(true);
}

static void test_mirror_background_leaves_target_to_the_job(void)
{
    mirror_paused_write(false);
}

static void test_mirror_write_blocking_converges_under_writes(void)
{
    mirror_under_writes("mirror-wbc", true);
}

int main(int argc, char **argv)
{
    int ret;

    g_test_init(&argc, &argv, NULL);
    tmpdir = g_dir_make_tmp("ferry-test-job-XXXXXX", NULL);
    g_test_add_func("/blockdev/job/mirror-converges-under-writes-and-pivots",
                    test_mirror_converges_under_writes_and_pivots);
    g_test_add_func("/blockdev/job/backup-is-point-in-time-under-writes",
                    test_backup_is_point_in_time_under_writes);
    g_test_add_func("/blockdev/job/stream-under-writes-keeps-guest-data",
                    test_stream_under_writes_keeps_guest_data);
    g_test_add_func("/blockdev/job/active-commit-under-writes-pivots-to-base",
                    test_active_commit_under_writes_pivots_to_base);
    g_test_add_func("/blockdev/job/verbs-follow-the-state-table",
                    test_verbs_follow_the_state_table);
    g_test_add_func("/blockdev/job/mirror-flushes-behind-its-copies",
                    test_mirror_flushes_behind_its_copies);
    g_test_add_func("/blockdev/job/mirror-failed-flush-behind-stops-the-job",
                    test_mirror_failed_flush_behind_stops_the_job);
    g_test_add_func("/blockdev/job/mirror-write-blocking-writes-through",
                    test_mirror_write_blocking_writes_through);
    g_test_add_func("/blockdev/job/mirror-background-leaves-target-to-the-job",
                    test_mirror_background_leaves_target_to_the_job);
    g_test_add_func("/blockdev/job/mirror-write-blocking-converges-under-writes",
                    test_mirror_write_blocking_converges_under_writes);
    ret = g_test_run();
    {
        g_autoptr(GDir) d = g_dir_open(tmpdir, 0, NULL);
        const char *n;
        while (d && (n = g_dir_read_name(d))) {
            g_autofree char *p = g_build_filename(tmpdir, n, NULL);
            g_unlink(p);
        }
    }
    g_rmdir(tmpdir);
    g_free(tmpdir);
    return ret;
}
