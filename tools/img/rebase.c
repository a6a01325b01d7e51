/*
 * ferry img rebase: point an overlay at another backing file (or none) as
 * qemu-img rebase does.  -u only rewrites the header
 * (drv->change_backing_file).  Safe mode first copies into the overlay
 * every range it does not allocate itself where the old and the new backing
 * read differently, so what the overlay reads never changes; then it
 * rewrites the header.  If the new backing file is already in the chain,
 * only the layers above it are compared.  -c (not in qemu-img 7.2; as in
 * later versions) writes the copied clusters compressed.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <string.h>

#include "common/error.h"
#include "tools/img/img.h"

#define REBASE_CHUNK  (INT64_C(2) << 20)
#define REBASE_SECTOR 512

typedef struct Rebase {
    BlockBackend *blk;          /* the overlay, read-write */
    BlockNode *bs;
    BlockBackend *old_blk;      /* reader on the old backing, or NULL */
    BlockBackend *new_blk;      /* reader on the new backing, or NULL */
    BlockNode *prefix;          /* new backing found in the chain, or NULL */
    int64_t size, old_size, new_size;
    bool compress;
    int64_t cluster_size;       /* for -c */
    int64_t compressed_end;     /* -c: bytes before this are written */
    uint8_t *buf_old, *buf_new;
    uint8_t *zeroes;            /* REBASE_CHUNK zero bytes, when needed */
    FerryProgress *progress;
} Rebase;

/* Length of the run of sectors at buf that match (or differ) like the first. */
static int64_t same_run(const uint8_t *a, const uint8_t *b, int64_t len,
                        bool *differ)
{
    int64_t i = 0;

    *differ = memcmp(a, b, MIN(REBASE_SECTOR, len)) != 0;
    while (i < len) {
        int64_t n = MIN(REBASE_SECTOR, len - i);
        if ((memcmp(a + i, b + i, n) != 0) != *differ) {
            break;
        }
        i += n;
    }
    return i;
}

static BlockBackend *reader_on(BlockNode *bs, GError **errp)
{
    BlockBackend *blk = blk_new(NULL, BLOCK_PERM_CONSISTENT_READ,
                                BLOCK_PERM_ALL);

    if (!blk_insert_node(blk, bs, errp)) {
        blk_unref(blk);
        return NULL;
    }
    return blk;
}

/*
 * -c: rewrite the whole clusters around [offset, offset+bytes) compressed,
 * with what the overlay reads now (old backing under it).
 */
static int write_compressed(Rebase *r, int64_t offset, int64_t bytes)
{
    int64_t cs = r->cluster_size;
    int64_t start = MAX(offset / cs * cs, r->compressed_end);
    int64_t end = MIN((offset + bytes + cs - 1) / cs * cs, r->size);
    g_autofree uint8_t *buf = NULL;
    int ret;

    if (start >= end) {
        return 0;
    }
    buf = g_try_malloc(end - start);
    if (!buf) {
        return -ENOMEM;
    }
    ret = blk_pread(r->blk, start, end - start, buf, 0);
    for (int64_t o = start; ret == 0 && o < end; o += cs) {
        ret = blk_pwrite(r->blk, o, MIN(cs, end - o), buf + (o - start),
                         BLOCK_REQ_WRITE_COMPRESSED);
    }
    r->compressed_end = end;
    return ret;
}

/*
 * Zeroes that must stay zeroes once the backing file changes.  A driver may
 * drop a zero write where the image already reads zeroes (no backing file,
 * or a qcow2 v2 image without zero clusters); then the new backing file
 * would show through, so those ranges get explicit zero data.
 */
static int write_lasting_zeroes(Rebase *r, int64_t offset, int64_t bytes)
{
    int64_t pos = offset, end = offset + bytes;
    int ret = blk_pwrite_zeroes(r->blk, offset, bytes, 0);

    while (ret == 0 && pos < end) {
        int64_t n;
        int st = block_node_block_status(r->bs, pos, end - pos, &n, NULL,
                                         NULL);
        if (st < 0 || n <= 0) {
            return st < 0 ? st : -EIO;
        }
        if (!(st & BLOCK_STATUS_ALLOCATED)) {
            if (!r->zeroes && !(r->zeroes = g_try_malloc0(REBASE_CHUNK))) {
                return -ENOMEM;
            }
            for (int64_t o = pos; ret == 0 && o < pos + n; o += REBASE_CHUNK) {
                ret = blk_pwrite(r->blk, o, MIN(REBASE_CHUNK, pos + n - o),
                                 r->zeroes, 0);
            }
        }
        pos += n;
    }
    return ret;
}

/* Make [offset, offset+n) of the overlay hold what the old backing reads. */
static int copy_differences(Rebase *r, int64_t offset, int64_t n,
                            bool old_is_zero)
{
    int64_t done = 0;

    while (done < n) {
        bool differ;
        int64_t run = same_run(r->buf_old + done, r->buf_new + done, n - done,
                               &differ);
        int ret = 0;

        if (differ) {
            if (r->compress) {
                ret = write_compressed(r, offset + done, run);
            } else if (old_is_zero) {
                ret = write_lasting_zeroes(r, offset + done, run);
            } else {
                ret = blk_pwrite(r->blk, offset + done, run,
                                 r->buf_old + done, 0);
            }
            if (ret < 0) {
                img_error("error while writing to the image at offset %"
                          G_GINT64_FORMAT ": %s", offset + done,
                          g_strerror(-ret));
                return ret;
            }
        }
        done += run;
    }
    return 0;
}

/* Read [offset, offset+*n) of a backing file, zeroes past its end. */
static int read_backing(BlockBackend *blk, int64_t size, int64_t offset,
                        int64_t *n, uint8_t *buf, bool *is_zero)
{
    *is_zero = !blk || offset >= size;
    if (*is_zero) {
        memset(buf, 0, *n);
        return 0;
    }
    *n = MIN(*n, size - offset);
    return blk_pread(blk, offset, *n, buf, 0);
}

static bool safe_copy(Rebase *r)
{
    BlockNode *old = block_node_backing(r->bs);
    int64_t offset, n;

    for (offset = 0; offset < r->size; offset += n) {
        bool old_zero, new_zero;
        int st;

        n = MIN(REBASE_CHUNK, r->size - offset);
        st = block_node_block_status(r->bs, offset, n, &n, NULL, NULL);
        if (st < 0 || n <= 0) {
            img_error("error while reading image metadata at offset %"
                      G_GINT64_FORMAT ": %s", offset,
                      g_strerror(st < 0 ? -st : EIO));
            return false;
        }
        if (st & BLOCK_STATUS_ALLOCATED) {
            ferry_progress_add(r->progress, n);
            continue;       /* the overlay decides: backing does not matter */
        }
        if (r->prefix) {
            /* Unchanged between the old backing and the new one? */
            st = block_node_block_status_above(old, r->prefix, offset, n, &n,
                                               NULL, NULL, NULL);
            if (st < 0 || n <= 0) {
                img_error("error while reading image metadata at offset %"
                          G_GINT64_FORMAT ": %s", offset,
                          g_strerror(st < 0 ? -st : EIO));
                return false;
            }
            if (!(st & (BLOCK_STATUS_ALLOCATED | BLOCK_STATUS_ZERO))) {
                ferry_progress_add(r->progress, n);
                continue;
            }
        }
        if (read_backing(r->old_blk, r->old_size, offset, &n, r->buf_old,
                         &old_zero) < 0) {
            img_error("error while reading from the old backing file");
            return false;
        }
        if (read_backing(r->new_blk, r->new_size, offset, &n, r->buf_new,
                         &new_zero) < 0) {
            img_error("error while reading from the new backing file");
            return false;
        }
        if (copy_differences(r, offset, n, old_zero) < 0) {
            return false;
        }
        ferry_progress_add(r->progress, n);
    }
    return true;
}

/* Open the new backing file for comparison, or find it in the chain. */
static bool open_new_backing(Rebase *r, const char *backing, const char *fmt,
                             const char *cache, bool force_share)
{
    g_autofree char *path = block_backing_path(r->bs->filename, backing);
    GError *err = NULL;

    r->prefix = img_find_backing_image(r->bs, path);
    if (!r->prefix) {
        r->prefix = img_find_backing_image(r->bs, backing);
    }
    if (r->prefix) {
        r->new_blk = reader_on(r->prefix, &err);
    } else {
        r->new_blk = img_open(path, fmt, false,
                              force_share ? BLOCK_O_FORCE_SHARE : 0, cache,
                              &err);
    }
    if (!r->new_blk) {
        g_prefix_error(&err, "Could not open new backing file '%s': ",
                       backing);
        img_fail(err);
        return false;
    }
    r->new_size = blk_getlength(r->new_blk);
    if (r->new_size < 0) {
        img_error("Could not get size of '%s': %s", backing,
                  g_strerror((int)-r->new_size));
        return false;
    }
    return true;
}

static bool prepare_safe(Rebase *r, const char *backing, const char *fmt,
                         const char *cache, bool force_share)
{
    BlockNode *old = block_node_backing(r->bs);
    GError *err = NULL;

    r->size = blk_getlength(r->blk);
    if (r->size < 0) {
        img_error("Could not get size of '%s': %s", r->bs->filename,
                  g_strerror((int)-r->size));
        return false;
    }
    if (old) {
        r->old_blk = reader_on(old, &err);
        if (!r->old_blk) {
            g_prefix_error(&err, "Could not reuse old backing file '%s': ",
                           old->filename);
            img_fail(err);
            return false;
        }
        r->old_size = blk_getlength(r->old_blk);
        if (r->old_size < 0) {
            img_error("Could not get size of '%s': %s", old->filename,
                      g_strerror((int)-r->old_size));
            return false;
        }
    }
    if (*backing && !open_new_backing(r, backing, fmt, cache, force_share)) {
        return false;
    }
    r->buf_old = g_try_malloc(REBASE_CHUNK);
    r->buf_new = g_try_malloc(REBASE_CHUNK);
    if (!r->buf_old || !r->buf_new) {
        img_error("out of memory");
        return false;
    }
    return true;
}

static int64_t cluster_size_of(BlockNode *bs)
{
    BlockImageInfo info = { 0 };

    if (!bs->drv->get_info || !bs->drv->get_info(bs, &info, NULL)) {
        return 0;
    }
    json_decref(info.format_specific);
    return info.cluster_size;
}

static bool change_header(Rebase *r, const char *backing, const char *fmt)
{
    GError *err = NULL;
    bool ok;

    block_node_drain_begin(r->bs);
    ok = r->bs->drv->change_backing_file(r->bs, *backing ? backing : NULL,
                                         *backing ? fmt : NULL, &err);
    block_node_drain_end(r->bs);
    if (!ok) {
        img_error("Could not change the backing file to '%s': %s", backing,
                  err->message);
        g_error_free(err);
    }
    return ok;
}

static void rebase_free(Rebase *r)
{
    if (r->old_blk) {
        blk_unref(r->old_blk);
    }
    if (r->new_blk) {
        blk_unref(r->new_blk);
    }
    g_free(r->buf_old);
    g_free(r->buf_new);
    g_free(r->zeroes);
}

/* Refuse before touching data what the header rewrite would refuse after. */
static bool check_can_rebase(BlockNode *bs, const char *backing,
                             const char *backing_fmt, bool compress)
{
    if (!bs->drv->change_backing_file) {
        img_error("Could not change the backing file to '%s': format '%s' "
                  "does not support backing files%s", backing ? backing : "",
                  block_node_format(bs),
                  (bs->drv->caps & BLOCK_CAP_BACKING) ||
                  img_qemu_format_has(block_node_format(bs), IMG_QEMU_BACKING)
                  ? " yet" : "");
        return false;
    }
    if (backing && *backing && !backing_fmt) {
        img_error("Could not change the backing file to '%s': backing "
                  "format must be specified", backing);
        return false;
    }
    if (backing_fmt && !block_driver_find(backing_fmt)) {
        img_error("Invalid format name: '%s'", backing_fmt);
        return false;
    }
    if (compress && !(bs->drv->caps & BLOCK_CAP_COMPRESSED)) {
        img_error("format '%s' does not support compressed writes (-c)",
                  block_node_format(bs));
        return false;
    }
    return true;
}

int img_rebase(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, IMG_OPT_OBJECT },
        { "image-opts", no_argument, NULL, IMG_OPT_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { "compress", no_argument, NULL, 'c' },
        { "progress", required_argument, NULL, IMG_OPT_PROGRESS },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL, *backing = NULL, *backing_fmt = NULL;
    const char *cache = NULL, *src_cache = NULL, *filename;
    bool unsafe = false, progress = false, quiet = false, image_opts = false;
    bool force_share = false, compress = false, ok = true;
    FerryProgressMode pmode = FERRY_PROGRESS_NONE;
    g_autoptr(BlockBackend) blk = NULL;
    Rebase r = { 0 };
    GError *err = NULL;
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "hf:F:b:upt:T:qUc", longopts,
                            NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'F': backing_fmt = optarg; break;
        case 'b': backing = optarg; break;
        case 'u': unsafe = true; break;
        case 'p': progress = true; break;
        case 't': cache = optarg; break;
        case 'T': src_cache = optarg; break;
        case 'q': quiet = true; break;
        case 'U': force_share = true; break;
        case 'c': compress = true; break;
        case IMG_OPT_IMAGE_OPTS: image_opts = true; break;
        case IMG_OPT_PROGRESS:
            if (!ferry_progress_parse_mode(optarg, &pmode)) {
                return img_usage_error("rebase", "--progress must be human, "
                                       "json or none, not '%s'", optarg);
            }
            break;
        case IMG_OPT_OBJECT:
            return img_usage_error("rebase", "--object is not supported yet");
        default:
            return img_usage_error("rebase", "invalid option");
        }
    }
    if (optind != argc - 1) {
        return img_usage_error("rebase", "expecting one image file name");
    }
    if (!unsafe && !backing) {
        return img_usage_error("rebase", "Must specify backing file (-b) or "
                               "use unsafe mode (-u)");
    }
    filename = argv[optind];
    if (quiet) {
        progress = false;
        pmode = FERRY_PROGRESS_NONE;
    }
    /* -u ignores the old backing file: it may be the name being fixed. */
    blk = img_open(filename, fmt, image_opts,
                   BLOCK_O_RDWR | (unsafe ? BLOCK_O_NO_BACKING : 0), cache,
                   &err);
    if (!blk) {
        return img_fail(err);
    }
    r.blk = blk;
    r.bs = blk_node(blk);
    r.compress = compress && !unsafe;
    if (!check_can_rebase(r.bs, backing, backing_fmt, r.compress)) {
        return IMG_EXIT_ERROR;
    }
    if (r.compress && (r.cluster_size = cluster_size_of(r.bs)) <= 0) {
        img_error("format '%s' reports no cluster size for -c",
                  block_node_format(r.bs));
        return IMG_EXIT_ERROR;
    }
    if (!unsafe) {
        ok = prepare_safe(&r, backing, backing_fmt, src_cache, force_share);
        if (ok) {
            r.progress = img_progress_new(progress, pmode, "rebase", r.size);
            /* Rebasing onto the current backing changes nothing to copy. */
            if (!r.prefix || r.prefix != block_node_backing(r.bs)) {
                ok = safe_copy(&r);
            }
        }
    }
    if (ok) {
        ok = change_header(&r, backing ? backing : "", backing_fmt);
    }
    if (ok) {
        ferry_progress_finish(r.progress);
    } else {
        ferry_progress_abort(r.progress);
    }
    rebase_free(&r);
    return ok ? IMG_EXIT_OK : IMG_EXIT_ERROR;
}
