/*
 * ferry img commit: write what an overlay (and, with -b, the layers between
 * it and base) holds above its base into that base, then empty the overlay
 * unless -d, as qemu-img commit does.  Only ranges some layer above base
 * decides are copied (block status through the chain); zero ranges become
 * zero writes.  The base is reopened read-write for the copy; the overlay
 * declares that it copes with its base changing underneath it, which is
 * what lets the base take a writer.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <string.h>

#include "common/error.h"
#include "common/units.h"
#include "tools/img/img.h"

#define COMMIT_CHUNK (INT64_C(4) << 20)

typedef struct CommitJob {
    BlockBackend *top;
    BlockNode *base;
    BlockBackend *base_blk;     /* writer on base */
    uint64_t rate;              /* bytes per second; 0: unlimited */
    FerryProgress *progress;
    gint64 start_us;
    uint64_t copied;            /* bytes written to base */
} CommitJob;

/* Sleep as long as we are ahead of the -r rate. */
static void throttle(CommitJob *job, int64_t bytes)
{
    gint64 due_us, now;

    job->copied += bytes;
    if (!job->rate) {
        return;
    }
    due_us = job->start_us + (gint64)(job->copied * 1e6 / job->rate);
    now = g_get_monotonic_time();
    if (due_us > now) {
        g_usleep(due_us - now);
    }
}

/* Copy one range that a layer above base decides. */
static bool copy_range(CommitJob *job, int64_t offset, int64_t bytes,
                       bool zero, void *buf, GError **errp)
{
    int ret;

    if (zero) {
        ret = blk_pwrite_zeroes(job->base_blk, offset, bytes,
                                BLOCK_REQ_MAY_UNMAP);
        if (ret < 0) {
            ferry_error_setg_errno(errp, -ret, "cannot write zeroes to the "
                                   "base at offset %" G_GINT64_FORMAT, offset);
            return false;
        }
        return true;
    }
    ret = blk_pread(job->top, offset, bytes, buf, 0);
    if (ret < 0) {
        ferry_error_setg_errno(errp, -ret, "cannot read the image at offset %"
                               G_GINT64_FORMAT, offset);
        return false;
    }
    ret = blk_pwrite(job->base_blk, offset, bytes, buf, 0);
    if (ret < 0) {
        ferry_error_setg_errno(errp, -ret, "cannot write to the base at "
                               "offset %" G_GINT64_FORMAT, offset);
        return false;
    }
    return true;
}

static bool run_copy(CommitJob *job, GError **errp)
{
    BlockNode *top = blk_node(job->top);
    int64_t len = blk_getlength(job->top);
    int64_t base_len = blk_getlength(job->base_blk);
    g_autofree void *buf = NULL;
    int64_t offset = 0;

    if (len < 0 || base_len < 0) {
        ferry_error_setg_errno(errp, (int)-(len < 0 ? len : base_len),
                               "cannot get the image sizes");
        return false;
    }
    /* A base shorter than the overlay grows first, as in QEMU. */
    if (base_len < len &&
        !blk_truncate(job->base_blk, len, false, BLOCK_PREALLOC_OFF, errp)) {
        g_prefix_error(errp, "cannot grow the base to %" G_GINT64_FORMAT
                       " bytes: ", len);
        return false;
    }
    buf = g_try_malloc(COMMIT_CHUNK);
    if (!buf) {
        ferry_error_set(errp, FERRY_ERROR_NO_SPACE, "out of memory");
        return false;
    }
    job->start_us = g_get_monotonic_time();
    while (offset < len) {
        int64_t n;
        int st = block_node_block_status_above(top, job->base, offset,
                                               len - offset, &n, NULL, NULL,
                                               NULL);
        if (st < 0 || n <= 0) {
            ferry_error_setg_errno(errp, st < 0 ? -st : EIO,
                                   "cannot get block status at offset %"
                                   G_GINT64_FORMAT, offset);
            return false;
        }
        if (st & (BLOCK_STATUS_ALLOCATED | BLOCK_STATUS_ZERO)) {
            /* zero ranges go in large requests; data in buffer chunks */
            n = MIN(n, st & BLOCK_STATUS_ZERO ? BLOCK_MAX_REQUEST
                                              : COMMIT_CHUNK);
            if (!copy_range(job, offset, n, st & BLOCK_STATUS_ZERO, buf,
                            errp)) {
                return false;
            }
            throttle(job, n);
        }
        offset += n;
        ferry_progress_add(job->progress, n);
    }
    if (blk_flush(job->base_blk) < 0) {
        ferry_error_set(errp, FERRY_ERROR_IO, "cannot flush the base");
        return false;
    }
    return true;
}

/*
 * Let the base take a writer: the overlay's users share write (it copes
 * with its base changing), the base becomes read-write, and a backend on
 * it declares the writes.
 */
static bool open_base_for_writing(CommitJob *job, GError **errp)
{
    uint32_t perm, shared;

    blk_perm_for_flags(blk_node(job->top)->open_flags, &perm, &shared);
    if (!blk_set_perm(job->top, perm, shared | BLOCK_PERM_WRITE |
                      BLOCK_PERM_RESIZE, errp) ||
        !block_node_reopen(job->base, job->base->open_flags | BLOCK_O_RDWR,
                           errp)) {
        return false;
    }
    blk_perm_for_flags(BLOCK_O_RDWR, &perm, &shared);
    job->base_blk = blk_new("commit-base", perm, shared);
    if (!blk_insert_node(job->base_blk, job->base, errp)) {
        return false;
    }
    return true;
}

static bool empty_top(BlockNode *top, GError **errp)
{
    bool ok;

    block_node_drain_begin(top);
    ok = top->drv->make_empty(top, errp);
    block_node_drain_end(top);
    if (!ok) {
        g_prefix_error(errp, "the data is in the base, but emptying the "
                       "image failed: ");
    }
    return ok;
}

int img_commit(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, IMG_OPT_OBJECT },
        { "image-opts", no_argument, NULL, IMG_OPT_IMAGE_OPTS },
        { "progress", required_argument, NULL, IMG_OPT_PROGRESS },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL, *cache = NULL, *base_name = NULL, *filename;
    bool quiet = false, drop = false, progress = false, image_opts = false;
    FerryProgressMode pmode = FERRY_PROGRESS_NONE;
    g_autoptr(BlockBackend) blk = NULL;
    CommitJob job = { 0 };
    GError *err = NULL;
    BlockNode *top;
    bool ok;
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "f:ht:b:dpqr:", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 't': cache = optarg; break;
        case 'b': base_name = optarg; drop = true; break;   /* -b implies -d */
        case 'd': drop = true; break;
        case 'p': progress = true; break;
        case 'q': quiet = true; break;
        case 'r':
            if (!ferry_parse_size(optarg, "rate limit", &job.rate, &err)) {
                return img_fail(err);
            }
            break;
        case IMG_OPT_IMAGE_OPTS: image_opts = true; break;
        case IMG_OPT_PROGRESS:
            if (!ferry_progress_parse_mode(optarg, &pmode)) {
                return img_usage_error("commit", "--progress must be human, "
                                       "json or none, not '%s'", optarg);
            }
            break;
        case IMG_OPT_OBJECT:
            return img_usage_error("commit", "--object is not supported yet");
        default:
            return img_usage_error("commit", "invalid option");
        }
    }
    if (optind != argc - 1) {
        return img_usage_error("commit", "expecting one image file name");
    }
    filename = argv[optind];
    if (quiet) {
        progress = false;
        pmode = FERRY_PROGRESS_NONE;
    }
    blk = img_open(filename, fmt, image_opts, BLOCK_O_RDWR | BLOCK_O_UNMAP,
                   cache, &err);
    if (!blk) {
        return img_fail(err);
    }
    top = blk_node(blk);
    if (base_name) {
        job.base = img_find_backing_image(top, base_name);
        if (!job.base) {
            img_error("Did not find '%s' in the backing chain of '%s'",
                      base_name, filename);
            return IMG_EXIT_ERROR;
        }
    } else {
        job.base = block_node_backing(top);
        if (!job.base) {
            img_error("Image does not have a backing file");
            return IMG_EXIT_ERROR;
        }
    }
    if (!drop && !top->drv->make_empty) {
        img_error("format '%s' cannot empty an image yet, so '%s' would keep "
                  "its data after the commit: add -d to commit and keep it",
                  block_node_format(top), filename);
        return IMG_EXIT_ERROR;
    }
    job.top = blk;
    job.progress = img_progress_new(progress, pmode, "commit",
                                    MAX(blk_getlength(blk), 0));
    ok = open_base_for_writing(&job, &err) && run_copy(&job, &err) &&
         (drop || empty_top(top, &err));
    if (ok) {
        ferry_progress_finish(job.progress);
    } else {
        ferry_progress_abort(job.progress);
    }
    if (job.base_blk) {
        blk_unref(job.base_blk);
    }
    if (!ok) {
        return img_fail(err);
    }
    if (!quiet) {
        printf("Image committed.\n");
    }
    return IMG_EXIT_OK;
}
