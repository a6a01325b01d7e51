/*
 * ferry img compare: do two images read the same?  qemu-img compare's
 * rules, messages and exit codes: 0 identical, 1 different, 2 an image did
 * not open, 3 block status failed, 4 a read failed.  Images of different
 * sizes are equal if the extra part reads as zeroes (-s: sizes must match).
 * Block status through both chains skips ranges that are zero on both
 * sides; data is read in large chunks and compared 512-byte sector by
 * sector, so a mismatch is reported at the start of its sector, as qemu-img
 * does.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <string.h>

#include "common/error.h"
#include "tools/img/img.h"

#define CMP_EXIT_SAME        0
#define CMP_EXIT_DIFFERENT   1
#define CMP_EXIT_OPEN        2
#define CMP_EXIT_STATUS      3
#define CMP_EXIT_READ        4

#define CMP_CHUNK   (INT64_C(4) << 20)
#define CMP_SECTOR  512

typedef struct CmpImage {
    const char *filename;
    BlockBackend *blk;
    BlockNode *bs;
    int64_t size;           /* bytes */
    uint8_t *buf;           /* CMP_CHUNK bytes */
} CmpImage;

typedef struct CmpState {
    CmpImage img[2];
    bool quiet;             /* -q: no verdict line */
    bool strict;
    FerryProgress *progress;
} CmpState;

/*
 * The verdict line, printed after the progress line is finished so the two
 * do not mix on a terminal.
 */
static void verdict(CmpState *s, bool same, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);

static void verdict(CmpState *s, bool same, const char *fmt, ...)
{
    va_list ap;

    if (same) {
        ferry_progress_finish(s->progress);
    } else {
        ferry_progress_abort(s->progress);
    }
    s->progress = NULL;
    if (s->quiet) {
        return;
    }
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
}

/* Offset of the first 512-byte sector that differs, or -1 if none. */
static int64_t first_diff_sector(const uint8_t *a, const uint8_t *b,
                                 int64_t len)
{
    for (int64_t i = 0; i < len; i += CMP_SECTOR) {
        int64_t n = MIN(CMP_SECTOR, len - i);
        if (memcmp(a + i, b + i, n)) {
            return i;
        }
    }
    return -1;
}

/* Offset of the first sector with a non-zero byte, or -1 if all zero. */
static int64_t first_nonzero_sector(const uint8_t *buf, int64_t len)
{
    static const uint8_t zero[CMP_SECTOR];

    for (int64_t i = 0; i < len; i += CMP_SECTOR) {
        int64_t n = MIN(CMP_SECTOR, len - i);
        if (memcmp(buf + i, zero, n)) {
            return i;
        }
    }
    return -1;
}

static int read_chunk(CmpImage *im, int64_t offset, int64_t len, uint8_t *buf)
{
    int ret = blk_pread(im->blk, offset, len, buf, 0);

    if (ret < 0) {
        img_error("error while reading offset %" G_GINT64_FORMAT " of %s: %s",
                  offset, im->filename, g_strerror(-ret));
        return CMP_EXIT_READ;
    }
    return 0;
}

/* One side has data where the other reads as zeroes: is the data zero? */
static int check_zero(CmpState *s, CmpImage *im, int64_t offset, int64_t len)
{
    int64_t at;
    int ret = read_chunk(im, offset, len, im->buf);

    if (ret) {
        return ret;
    }
    at = first_nonzero_sector(im->buf, len);
    if (at >= 0) {
        verdict(s, false, "Content mismatch at offset %" G_GINT64_FORMAT "!\n",
                offset + at);
        return CMP_EXIT_DIFFERENT;
    }
    return 0;
}

/* Both sides have data here: read both, compare sector by sector. */
static int compare_data(CmpState *s, int64_t offset, int64_t len)
{
    CmpImage *a = &s->img[0], *b = &s->img[1];
    int64_t at;
    int ret;

    if ((ret = read_chunk(a, offset, len, a->buf)) ||
        (ret = read_chunk(b, offset, len, b->buf))) {
        return ret;
    }
    at = first_diff_sector(a->buf, b->buf, len);
    if (at >= 0) {
        verdict(s, false, "Content mismatch at offset %" G_GINT64_FORMAT "!\n",
                offset + at);
        return CMP_EXIT_DIFFERENT;
    }
    return 0;
}

static int status_of(CmpImage *im, int64_t offset, int64_t end, int64_t *pnum)
{
    int ret = block_node_block_status_above(im->bs, NULL, offset,
                                            end - offset, pnum, NULL, NULL,
                                            NULL);

    if (ret < 0 || *pnum <= 0) {
        img_error("block status failed for %s at offset %" G_GINT64_FORMAT
                  ": %s", im->filename, offset,
                  g_strerror(ret < 0 ? -ret : EIO));
        return -1;
    }
    return ret;
}

/* Decided by some layer of the chain rather than read as a hole. */
static bool is_allocated(int status)
{
    return status & BLOCK_STATUS_ALLOCATED;
}

/* The common part [0, MIN(size1, size2)). */
static int compare_common(CmpState *s, int64_t end)
{
    CmpImage *a = &s->img[0], *b = &s->img[1];
    /* -s compares the flags qemu-img compares (EOF included, as there) */
    const int mask = BLOCK_STATUS_DATA | BLOCK_STATUS_ZERO |
                     BLOCK_STATUS_OFFSET_VALID | BLOCK_STATUS_ALLOCATED |
                     BLOCK_STATUS_EOF;
    int64_t offset = 0;

    while (offset < end) {
        int64_t n1, n2, chunk;
        int st1 = status_of(a, offset, a->size, &n1);
        int st2 = st1 < 0 ? -1 : status_of(b, offset, b->size, &n2);
        int ret = 0;

        if (st1 < 0 || st2 < 0) {
            return CMP_EXIT_STATUS;
        }
        chunk = MIN(MIN(n1, n2), end - offset);
        if (s->strict && (st1 & mask) != (st2 & mask)) {
            verdict(s, false, "Strict mode: Offset %" G_GINT64_FORMAT
                " block status mismatch!\n", offset);
            return CMP_EXIT_DIFFERENT;
        }
        if ((st1 & BLOCK_STATUS_ZERO) && (st2 & BLOCK_STATUS_ZERO)) {
            /* both read as zeroes */
        } else if (is_allocated(st1) == is_allocated(st2)) {
            if (is_allocated(st1)) {
                chunk = MIN(chunk, CMP_CHUNK);
                ret = compare_data(s, offset, chunk);
                if (ret) {
                    return ret;
                }
            }
        } else {
            chunk = MIN(chunk, CMP_CHUNK);
            ret = check_zero(s, is_allocated(st1) ? a : b, offset, chunk);
            if (ret) {
                return ret;
            }
        }
        offset += chunk;
        ferry_progress_add(s->progress, chunk);
    }
    return 0;
}

/* The part only the larger image has must read as zeroes. */
static int compare_tail(CmpState *s, CmpImage *over, int64_t offset)
{
    while (offset < over->size) {
        int64_t n;
        int st = status_of(over, offset, over->size, &n);

        if (st < 0) {
            return CMP_EXIT_STATUS;
        }
        if (is_allocated(st) && !(st & BLOCK_STATUS_ZERO)) {
            int ret;
            n = MIN(n, CMP_CHUNK);
            ret = check_zero(s, over, offset, n);
            if (ret) {
                return ret;
            }
        }
        offset += n;
        ferry_progress_add(s->progress, n);
    }
    return 0;
}

static int run_compare(CmpState *s)
{
    CmpImage *a = &s->img[0], *b = &s->img[1];
    int64_t common = MIN(a->size, b->size);
    int ret;

    if (s->strict && a->size != b->size) {
        verdict(s, false, "Strict mode: Image size mismatch!\n");
        return CMP_EXIT_DIFFERENT;
    }
    ret = compare_common(s, common);
    if (ret) {
        return ret;
    }
    if (a->size != b->size) {
        if (!s->quiet) {
            printf("Warning: Image size mismatch!\n");
        }
        ret = compare_tail(s, a->size > b->size ? a : b, common);
        if (ret) {
            return ret;
        }
    }
    verdict(s, true, "Images are identical.\n");
    return CMP_EXIT_SAME;
}

/* Open one side; 0 or the exit code. */
static int open_side(CmpImage *im, const char *fmt, bool image_opts,
                     uint32_t flags, const char *cache)
{
    GError *err = NULL;

    im->blk = img_open(im->filename, fmt, image_opts, flags, cache, &err);
    if (!im->blk) {
        img_fail(err);
        return CMP_EXIT_OPEN;
    }
    im->bs = blk_node(im->blk);
    im->size = blk_getlength(im->blk);
    if (im->size < 0) {
        img_error("cannot get the size of %s: %s", im->filename,
                  g_strerror((int)-im->size));
        return CMP_EXIT_READ;
    }
    im->buf = g_try_malloc(CMP_CHUNK);
    if (!im->buf) {
        img_error("out of memory for a %" G_GINT64_FORMAT " byte buffer",
                  CMP_CHUNK);
        return CMP_EXIT_OPEN;
    }
    return 0;
}

int img_compare(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, IMG_OPT_OBJECT },
        { "image-opts", no_argument, NULL, IMG_OPT_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { "progress", required_argument, NULL, IMG_OPT_PROGRESS },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt1 = NULL, *fmt2 = NULL, *cache = NULL;
    bool image_opts = false, force_share = false, progress = false;
    FerryProgressMode pmode = FERRY_PROGRESS_NONE;
    CmpState s = { 0 };
    uint32_t flags;
    int ret, c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "hf:F:T:pqsU", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': fmt1 = optarg; break;
        case 'F': fmt2 = optarg; break;
        case 'T': cache = optarg; break;
        case 'p': progress = true; break;
        case 'q': s.quiet = true; break;
        case 's': s.strict = true; break;
        case 'U': force_share = true; break;
        case IMG_OPT_IMAGE_OPTS: image_opts = true; break;
        case IMG_OPT_PROGRESS:
            if (!ferry_progress_parse_mode(optarg, &pmode)) {
                return img_usage_error("compare", "--progress must be human, "
                                       "json or none, not '%s'", optarg);
            }
            break;
        case IMG_OPT_OBJECT:
            return img_usage_error("compare", "--object is not supported yet");
        default:
            return img_usage_error("compare", "invalid option");
        }
    }
    if (optind != argc - 2) {
        return img_usage_error("compare", "expecting two image file names");
    }
    s.img[0].filename = argv[optind];
    s.img[1].filename = argv[optind + 1];
    if (s.quiet) {
        progress = false;
        pmode = FERRY_PROGRESS_NONE;
    }
    flags = force_share ? BLOCK_O_FORCE_SHARE : 0;
    ret = open_side(&s.img[0], fmt1, image_opts, flags, cache);
    if (!ret) {
        ret = open_side(&s.img[1], fmt2, image_opts, flags, cache);
    }
    if (!ret) {
        s.progress = img_progress_new(progress, pmode, "compare",
                                      MAX(s.img[0].size, s.img[1].size));
        ret = run_compare(&s);
        ferry_progress_abort(s.progress);      /* if an error stopped us */
    }
    fflush(stdout);
    for (int i = 0; i < 2; i++) {
        if (s.img[i].blk) {
            blk_unref(s.img[i].blk);
        }
        g_free(s.img[i].buf);
    }
    return ret;
}
