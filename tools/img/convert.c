/*
 * ferry img convert: copy one or more images (concatenated) into a new or
 * existing target of any format, with qemu-img convert's flags.  The copy
 * runs on worker threads over the synchronous block API: each worker takes
 * the next chunk (cut from the source's block status, so holes and zeroes
 * are skipped in large steps), reads it, finds zero runs (-S) and writes in
 * sequence order (or as it comes with -W).  The chunking and zero rules are
 * in convert-plan.c; the CLI and target creation are at the bottom.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blockdev/bitmap.h"
#include "common/error.h"
#include "common/log.h"
#include "common/opts.h"
#include "common/units.h"
#include "tools/img/convert-plan.h"
#include "tools/img/img.h"

/*
 * Data request size.  A chunk is copied into the buffer by pread and out of
 * it by pwrite; at 1 MiB it is still in the core's 2 MiB L2 for the second
 * copy.  At 2 MiB, measured with a cold source (bench/img-convert), the
 * kernel spent twice the system time in the pwrite copy.
 */
#define CONVERT_CHUNK_BYTES      (1024 * 1024)
#define CONVERT_MAX_ZERO_BYTES   (INT64_C(1) << 30)  /* one zeroing request */
#define CONVERT_DEFAULT_SPARSE   4096
#define CONVERT_MAX_SPARSE       (16 * 1024 * 1024)
#define CONVERT_DEFAULT_WORKERS  8
#define CONVERT_MAX_WORKERS      16
#define CONVERT_DEFAULT_CLUSTER  65536

typedef struct ConvertSource {
    BlockBackend *blk;
    BlockNode *bs;           /* blk's node */
    BlockNode *base;         /* status stops here: its backing with -B */
    const char *spec;        /* as the user typed it, for messages */
    int64_t start;           /* bytes: where it begins in the concatenation */
    int64_t len;             /* bytes */
} ConvertSource;

/* A piece of work handed to one worker. */
typedef struct ConvertChunk {
    int64_t offset;          /* bytes, in the concatenation (= target) */
    int64_t bytes;
    ImgExtentKind kind;
    uint64_t seq;            /* order of hand-out; writes follow it */
} ConvertChunk;

typedef struct Convert {
    /* -- set before the workers start, read-only while they run -- */
    ConvertSource *src;
    int nsrc;
    int64_t total;           /* bytes: sum of the sources */
    BlockBackend *target;
    BlockNode *tbs;
    int64_t chunk_bytes;     /* largest data request */
    int64_t align;           /* 1, or the target's cluster size with -c */
    int64_t sparse;          /* -S bytes; 0: write everything as data */
    int64_t granule;         /* zero detection unit */
    bool zero_init;          /* the target reads as zeroes: skip zeroes */
    bool target_backing;     /* target has a backing file: skip BACKING */
    bool compressed;
    bool in_order;           /* writes in chunk order (no -W) */
    bool salvage;
    uint64_t rate;           /* -r bytes per second; 0: unlimited */
    FerryProgress *progress;
    const uint8_t *zero_buf; /* chunk_bytes of zeroes, for -S 0 */

    /* -- shared between workers: guarded by lock -- */
    GMutex lock;
    /*
     * In order, the chunks in flight are [write_seq, next_seq), at most one
     * per worker, so chunk seq waits on turn_conds[seq % nworkers] alone:
     * finishing a write wakes the one worker whose turn it is.  The turns
     * have their own lock: a block-status query under `lock` (qcow2 metadata
     * reads, lseek) must never hold up the writer whose turn it is.
     * Lock order: lock, then turn_lock.
     */
    GMutex turn_lock;
    GCond *turn_conds;       /* guarded by turn_lock */
    int nworkers;
    int64_t next;            /* bytes: next offset to hand out */
    uint64_t next_seq;
    uint64_t write_seq;      /* in order: the chunk that may write now;
                                guarded by turn_lock */
    int64_t st_start;        /* cached status extent [st_start, st_end) */
    int64_t st_end;
    ImgExtentKind st_kind;
    int ret;                 /* first error, -errno; 0 while all is well;
                                written under lock, read atomically */
    char *err_msg;           /* its message */
    uint64_t rate_bytes;     /* bytes charged to the rate limit so far */
    gint64 rate_start_us;
} Convert;

/* An error was recorded: every worker waiting for its turn gives up. */
static void wake_all(Convert *s)
{
    g_mutex_lock(&s->turn_lock);
    for (int i = 0; i < s->nworkers; i++) {
        g_cond_broadcast(&s->turn_conds[i]);
    }
    g_mutex_unlock(&s->turn_lock);
}

/* Record the first error; later ones are consequences and dropped. */
static void convert_set_error(Convert *s, int ret, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);

static void convert_set_error(Convert *s, int ret, const char *fmt, ...)
{
    va_list ap;

    g_mutex_lock(&s->lock);
    if (!s->ret) {
        va_start(ap, fmt);
        s->err_msg = g_strdup_vprintf(fmt, ap);
        va_end(ap);
        __atomic_store_n(&s->ret, ret, __ATOMIC_SEQ_CST);
    }
    g_mutex_unlock(&s->lock);
    wake_all(s);
}

static ConvertSource *source_at(Convert *s, int64_t offset)
{
    for (int i = 0; i < s->nsrc; i++) {
        if (offset < s->src[i].start + s->src[i].len) {
            return &s->src[i];
        }
    }
    return &s->src[s->nsrc - 1];
}

/* -- scheduling ----------------------------------------------------------- */

/* Status of the source at s->next into the cache; lock held. */
static int refresh_status_locked(Convert *s)
{
    ConvertSource *src = source_at(s, s->next);
    int64_t off = s->next - src->start, n = 0;
    int ret;

    if (src->len == 0) {
        s->st_start = s->st_end = s->next;
        s->st_kind = IMG_EXTENT_ZERO;
        return 0;
    }
    ret = block_node_block_status_above(src->bs, src->base, off,
                                        src->len - off, &n, NULL, NULL, NULL);
    if (ret < 0) {
        return ret;
    }
    if (n <= 0) {
        n = src->len - off;
        ret = BLOCK_STATUS_ZERO;
    }
    s->st_start = s->next;
    s->st_end = s->next + n;
    if (src->base && !(ret & BLOCK_STATUS_ALLOCATED)) {
        /* -B: not in the source's own layer; the target's backing has it. */
        s->st_kind = IMG_EXTENT_BACKING;
    } else if (ret & BLOCK_STATUS_ZERO) {
        s->st_kind = IMG_EXTENT_ZERO;
    } else if (ret & (BLOCK_STATUS_DATA | BLOCK_STATUS_ALLOCATED)) {
        s->st_kind = IMG_EXTENT_DATA;
    } else {
        s->st_kind = IMG_EXTENT_ZERO;   /* allocated nowhere: reads zeroes */
    }
    return 0;
}

/* Hand out the next chunk; false when done or failed.  Lock held. */
static bool claim_chunk_locked(Convert *s, ConvertChunk *c)
{
    int64_t n;
    int ret;

    if (s->ret || s->next >= s->total) {
        return false;
    }
    if (s->next < s->st_start || s->next >= s->st_end) {
        ret = refresh_status_locked(s);
        if (ret < 0) {
            ConvertSource *src = source_at(s, s->next);
            __atomic_store_n(&s->ret, ret, __ATOMIC_SEQ_CST);
            s->err_msg = g_strdup_printf("error while reading the block "
                                         "status of '%s' at byte %" G_GINT64_FORMAT
                                         ": %s", src->spec, s->next - src->start,
                                         g_strerror(-ret));
            wake_all(s);
            return false;
        }
    }
    n = img_plan_chunk(s->next, s->st_kind, s->st_end, s->total,
                       s->chunk_bytes, s->align, CONVERT_MAX_ZERO_BYTES,
                       &c->kind);
    c->offset = s->next;
    c->bytes = n;
    c->seq = s->next_seq++;
    s->next += n;
    return true;
}

/* In order: wait until chunk seq may write.  False if the copy failed. */
static bool wait_turn(Convert *s, uint64_t seq)
{
    bool ok;

    if (!s->in_order) {
        return !__atomic_load_n(&s->ret, __ATOMIC_RELAXED);
    }
    g_mutex_lock(&s->turn_lock);
    while (s->write_seq != seq && !__atomic_load_n(&s->ret, __ATOMIC_SEQ_CST)) {
        g_cond_wait(&s->turn_conds[seq % s->nworkers], &s->turn_lock);
    }
    ok = !__atomic_load_n(&s->ret, __ATOMIC_SEQ_CST);
    g_mutex_unlock(&s->turn_lock);
    return ok;
}

static void end_turn(Convert *s, uint64_t seq)
{
    if (!s->in_order) {
        return;
    }
    g_mutex_lock(&s->turn_lock);
    s->write_seq = seq + 1;
    g_cond_signal(&s->turn_conds[s->write_seq % s->nworkers]);
    g_mutex_unlock(&s->turn_lock);
}

/* -r: sleep so the bytes copied so far take at least bytes/rate seconds. */
static void rate_limit(Convert *s, int64_t bytes)
{
    gint64 due, now;

    if (!s->rate) {
        return;
    }
    g_mutex_lock(&s->lock);
    s->rate_bytes += bytes;
    due = s->rate_start_us + (gint64)((double)s->rate_bytes * 1e6 /
                                      (double)s->rate);
    g_mutex_unlock(&s->lock);
    now = g_get_monotonic_time();
    if (due > now) {
        g_usleep(due - now);
    }
}

/* -- reading -------------------------------------------------------------- */

/*
 * --salvage: read [offset, offset+bytes) of one source in sectors, turning
 * the ones that fail into zeroes with a warning each.
 */
static int salvage_read(Convert *s, ConvertSource *src, int64_t offset,
                        int64_t bytes, uint8_t *buf)
{
    const int64_t step = MAX(512, (int64_t)src->bs->request_alignment);

    for (int64_t done = 0; done < bytes; done += step) {
        int64_t n = MIN(step, bytes - done);
        int ret = blk_pread(src->blk, offset + done, n, buf + done, 0);
        if (ret < 0) {
            ferry_warn("error while reading '%s' at byte %" G_GINT64_FORMAT
                       ": %s; the %" G_GINT64_FORMAT " bytes there are "
                       "written as zeroes (--salvage)", src->spec,
                       offset + done, g_strerror(-ret), n);
            memset(buf + done, 0, n);
        }
    }
    return 0;
}

/* Read a data chunk, which may span several sources. */
static int read_chunk(Convert *s, const ConvertChunk *c, uint8_t *buf)
{
    int64_t off = c->offset, end = c->offset + c->bytes;

    while (off < end) {
        ConvertSource *src = source_at(s, off);
        int64_t soff = off - src->start;
        int64_t n = MIN(end, src->start + src->len) - off;
        int ret;

        if (n <= 0) {
            /* Past every source (a cluster-aligned tail): zeroes. */
            memset(buf + (off - c->offset), 0, end - off);
            break;
        }
        ret = blk_pread(src->blk, soff, n, buf + (off - c->offset), 0);
        if (ret < 0 && s->salvage) {
            ret = salvage_read(s, src, soff, n, buf + (off - c->offset));
        }
        if (ret < 0) {
            convert_set_error(s, ret, "error while reading '%s' at byte %"
                              G_GINT64_FORMAT ": %s", src->spec, soff,
                              g_strerror(-ret));
            return ret;
        }
        off += n;
    }
    return 0;
}

/* -- writing -------------------------------------------------------------- */

static int write_zeroes(Convert *s, int64_t offset, int64_t bytes)
{
    int ret;

    if (s->zero_init) {
        return 0;
    }
    if (!s->sparse) {
        /* -S 0: the target is fully allocated, zeroes are data. */
        for (int64_t done = 0; done < bytes; done += s->chunk_bytes) {
            int64_t n = MIN(s->chunk_bytes, bytes - done);
            ret = blk_pwrite(s->target, offset + done, n, s->zero_buf, 0);
            if (ret < 0) {
                return ret;
            }
        }
        return 0;
    }
    return blk_pwrite_zeroes(s->target, offset, bytes, BLOCK_REQ_MAY_UNMAP);
}

/* -c: whole clusters, each compressed by the target driver. */
static int write_compressed(Convert *s, int64_t offset, int64_t bytes,
                            const uint8_t *buf)
{
    for (int64_t done = 0; done < bytes; done += s->align) {
        int64_t n = MIN(s->align, bytes - done);
        int ret;
        if (img_buffer_is_zero(buf + done, n)) {
            ret = write_zeroes(s, offset + done, n);
        } else {
            ret = blk_pwrite(s->target, offset + done, n, buf + done,
                             BLOCK_REQ_WRITE_COMPRESSED);
        }
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

static int write_runs(Convert *s, const ImgRun *runs, size_t nruns,
                      const uint8_t *buf, int64_t buf_offset)
{
    for (size_t i = 0; i < nruns; i++) {
        const uint8_t *p = buf + (runs[i].offset - buf_offset);
        int ret;
        if (runs[i].zero) {
            ret = write_zeroes(s, runs[i].offset, runs[i].bytes);
        } else if (s->compressed) {
            ret = write_compressed(s, runs[i].offset, runs[i].bytes, p);
        } else {
            ret = blk_pwrite(s->target, runs[i].offset, runs[i].bytes, p, 0);
        }
        if (ret < 0) {
            convert_set_error(s, ret, "error while writing at byte %"
                              G_GINT64_FORMAT ": %s", runs[i].offset,
                              g_strerror(-ret));
            return ret;
        }
    }
    return 0;
}

static int copy_chunk(Convert *s, const ConvertChunk *c, uint8_t *buf,
                      ImgRun *runs)
{
    size_t nruns = 1;
    int ret = 0;

    if (c->kind == IMG_EXTENT_DATA) {
        ret = read_chunk(s, c, buf);
        if (ret < 0) {
            return ret;
        }
        if (s->sparse && !s->compressed) {
            nruns = img_split_zero_runs(buf, c->offset, c->bytes, s->granule,
                                        s->sparse, runs);
        } else {
            runs[0] = (ImgRun){ c->offset, c->bytes, false };
        }
        rate_limit(s, c->bytes);
    } else {
        runs[0] = (ImgRun){ c->offset, c->bytes, true };
    }
    if (!wait_turn(s, c->seq)) {
        return -ECANCELED;
    }
    if (c->kind != IMG_EXTENT_BACKING) {
        ret = write_runs(s, runs, nruns, buf, c->offset);
    }
    end_turn(s, c->seq);
    if (ret == 0) {
        ferry_progress_add(s->progress, c->bytes);
    }
    return ret;
}

static gpointer convert_worker(gpointer opaque)
{
    Convert *s = opaque;
    size_t align = MAX(4096, s->tbs->request_alignment);
    uint8_t *buf = NULL;
    g_autofree ImgRun *runs = g_new(ImgRun, img_max_runs(s->chunk_bytes,
                                                         s->granule));

    if (posix_memalign((void **)&buf, align, s->chunk_bytes)) {
        convert_set_error(s, -ENOMEM, "cannot allocate a %" G_GINT64_FORMAT
                          "-byte buffer", s->chunk_bytes);
        return NULL;
    }
    for (;;) {
        ConvertChunk c;
        bool more;

        g_mutex_lock(&s->lock);
        more = claim_chunk_locked(s, &c);
        g_mutex_unlock(&s->lock);
        if (!more || copy_chunk(s, &c, buf, runs) < 0) {
            break;
        }
    }
    free(buf);
    return NULL;
}

/* Run the copy on n workers; 0 or -errno with s->err_msg set. */
static int convert_run(Convert *s, int workers)
{
    g_autofree GThread **threads = g_new0(GThread *, workers);
    void *zero = NULL;

    if (!s->sparse) {
        if (posix_memalign(&zero, 4096, s->chunk_bytes)) {
            s->err_msg = g_strdup("out of memory");
            return -ENOMEM;
        }
        memset(zero, 0, s->chunk_bytes);
        s->zero_buf = zero;
    }
    s->rate_start_us = g_get_monotonic_time();
    s->nworkers = workers;
    s->turn_conds = g_new(GCond, workers);
    for (int i = 0; i < workers; i++) {
        g_cond_init(&s->turn_conds[i]);
    }
    for (int i = 0; i < workers; i++) {
        g_autofree char *name = g_strdup_printf("convert%d", i);
        threads[i] = g_thread_new(name, convert_worker, s);
    }
    for (int i = 0; i < workers; i++) {
        g_thread_join(threads[i]);
    }
    free(zero);
    return s->ret;
}

/* -- setup ---------------------------------------------------------------- */

/* Does a newly created target read as zeroes everywhere? */
static bool target_has_zero_init(BlockNode *bs)
{
    for (BlockNode *n = bs; n; n = n->file ? n->file->node : NULL) {
        if (!(n->drv->caps & BLOCK_CAP_ZERO_INIT)) {
            return false;
        }
        if (!n->file && n->filename && !strcmp(n->drv->name, "file")) {
            struct stat st;
            if (stat(n->filename, &st) == 0 && S_ISBLK(st.st_mode)) {
                return false;   /* a device keeps whatever it held */
            }
        }
    }
    return true;
}

static int64_t target_cluster_size(BlockNode *bs)
{
    BlockImageInfo info = { 0 };
    int64_t cluster = CONVERT_DEFAULT_CLUSTER;

    if (bs->drv->get_info && bs->drv->get_info(bs, &info, NULL) &&
        info.cluster_size > 0) {
        cluster = info.cluster_size;
    }
    json_decref(info.format_specific);
    return cluster;
}

/* --bitmaps: copy the source's persistent bitmaps into the target. */
static bool copy_bitmaps(BlockNode *from, BlockNode *to, GError **errp)
{
    GList *names = NULL;
    bool ok = true;

    g_mutex_lock(&from->bitmaps_lock);
    for (GList *l = from->bitmaps; l; l = l->next) {
        BlockDirtyBitmap *bm = l->data;
        if (bm->persistent) {
            names = g_list_append(names, bm);
        }
    }
    g_mutex_unlock(&from->bitmaps_lock);
    if (names && !(to->drv->caps & BLOCK_CAP_BITMAPS)) {
        ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED,
                        "--bitmaps: format '%s' cannot store bitmaps",
                        to->drv->name);
        ok = false;
    }
    for (GList *l = names; ok && l; l = l->next) {
        BlockDirtyBitmap *bm = l->data, *nb;
        if (bm->inconsistent) {
            ferry_error_set(errp, FERRY_ERROR_CORRUPT,
                            "--bitmaps: bitmap '%s' is inconsistent (the "
                            "image was not closed cleanly)", bm->name);
            ok = false;
            break;
        }
        nb = block_dirty_bitmap_create(to, bm->name, bm->granularity, errp);
        if (!nb || !block_dirty_bitmap_merge(nb, bm, errp)) {
            g_prefix_error(errp, "--bitmaps: bitmap '%s': ", bm->name);
            ok = false;
            break;
        }
        nb->persistent = true;
        nb->enabled = bm->enabled;
    }
    g_list_free(names);
    if (ok && to->drv->bitmaps_store) {
        ok = to->drv->bitmaps_store(to, errp);
    }
    return ok;
}

typedef struct ConvertOpts {
    const char *fmt;             /* -f */
    const char *out_fmt;         /* -O */
    const char *cache;           /* -t: target */
    const char *src_cache;       /* -T */
    const char *backing;         /* -B */
    const char *backing_fmt;     /* -F */
    GPtrArray *o_args;           /* -o */
    bool image_opts, target_image_opts, target_is_zero, bitmaps;
    bool force_share, compressed, skip_create, in_order, salvage;
    bool quiet, progress, copy_offload;
    FerryProgressMode progress_mode;
    int64_t sparse;
    uint64_t rate;
    int workers;
} ConvertOpts;

static int open_sources(Convert *s, const ConvertOpts *o, char **specs,
                        int n, GError **errp)
{
    uint32_t flags = (o->force_share ? BLOCK_O_FORCE_SHARE : 0) |
                     (o->bitmaps ? 0 : BLOCK_O_NO_BITMAPS);

    s->src = g_new0(ConvertSource, n);
    s->nsrc = n;
    for (int i = 0; i < n; i++) {
        ConvertSource *src = &s->src[i];
        src->spec = specs[i];
        src->blk = img_open(specs[i], o->fmt, o->image_opts, flags,
                            o->src_cache, errp);
        if (!src->blk) {
            return -1;
        }
        src->bs = blk_node(src->blk);
        src->len = blk_getlength(src->blk);
        if (src->len < 0) {
            ferry_error_setg_errno(errp, (int)-src->len,
                                   "cannot get the size of '%s'", specs[i]);
            return -1;
        }
        if (!o->src_cache) {
            /* No -T: a cold source is read once, past the page cache. */
            block_node_read_uncached_if_cold(src->bs);
        }
        src->start = s->total;
        s->total += src->len;
        /* -B: only the source's own layer is copied, its backing is shared. */
        src->base = o->backing ? block_node_backing(src->bs) : NULL;
    }
    return 0;
}

static bool create_target(Convert *s, const ConvertOpts *o,
                          const char *out, GError **errp)
{
    g_autoptr(json_t) opts = img_parse_create_opts(o->o_args, errp);
    const BlockDriver *drv = block_driver_find(o->out_fmt);
    const char *backing_fmt = o->backing_fmt;
    g_autofree char *probed_fmt = NULL;

    if (!opts) {
        return false;
    }
    if (!drv) {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "unknown file format '%s'",
                        o->out_fmt);
        return false;
    }
    if (o->compressed && !(drv->caps & BLOCK_CAP_COMPRESSED)) {
        ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED,
                        "compression (-c) is not supported by format '%s'",
                        o->out_fmt);
        return false;
    }
    /* qemu-img counts in 512-byte sectors: an odd tail is rounded up. */
    json_object_set_new(opts, "size", json_integer((s->total + 511) / 512 * 512));
    if (o->backing) {
        if (!backing_fmt) {
            /* Probe the backing file once, as qemu-img does without -F. */
            g_autofree char *path = block_backing_path(out, o->backing);
            g_autoptr(BlockBackend) bb = img_open(path, NULL, false,
                                                  BLOCK_O_NO_BITMAPS |
                                                  BLOCK_O_FORCE_SHARE,
                                                  NULL, errp);
            if (!bb) {
                g_prefix_error(errp, "backing file (-B): ");
                return false;
            }
            probed_fmt = g_strdup(block_node_format(blk_node(bb)));
            backing_fmt = probed_fmt;
        }
        json_object_set_new(opts, "backing_file", json_string(o->backing));
        json_object_set_new(opts, "backing_fmt", json_string(backing_fmt));
    }
    if (!img_check_create_opts(o->out_fmt, opts, errp) ||
        !block_create(o->out_fmt, out, opts, errp)) {
        g_prefix_error(errp, "%s: ", out);
        return false;
    }
    return true;
}

static bool open_target(Convert *s, const ConvertOpts *o, const char *out,
                        GError **errp)
{
    /*
     * The target's backing is opened (read-only), as qemu-img does: a format
     * decides whether a zero write may leave a cluster unallocated by
     * whether it has a backing node.
     */
    uint32_t flags = BLOCK_O_RDWR | BLOCK_O_NO_BITMAPS |
                     (o->sparse ? BLOCK_O_UNMAP : 0);
    int64_t len;

    s->target = img_open(out, o->target_image_opts ? NULL : o->out_fmt,
                         o->target_image_opts, flags, o->cache, errp);
    if (!s->target) {
        return false;
    }
    s->tbs = blk_node(s->target);
    len = blk_getlength(s->target);
    if (len < 0) {
        ferry_error_setg_errno(errp, (int)-len, "cannot get the size of '%s'",
                               out);
        return false;
    }
    if (len < s->total) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "target '%s' is smaller than the source (%"
                        G_GINT64_FORMAT " < %" G_GINT64_FORMAT " bytes)",
                        out, len, s->total);
        return false;
    }
    if (o->compressed && !(s->tbs->drv->caps & BLOCK_CAP_COMPRESSED)) {
        ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED,
                        "compression (-c) is not supported by format '%s'",
                        block_node_format(s->tbs));
        return false;
    }
    s->target_backing = o->backing || s->tbs->backing_file;
    if (o->target_is_zero) {
        s->zero_init = true;
    } else {
        s->zero_init = !o->skip_create && o->sparse && !s->target_backing &&
                       target_has_zero_init(s->tbs);
    }
    return true;
}

static void convert_cleanup(Convert *s)
{
    if (s->target) {
        blk_unref(s->target);
    }
    for (int i = 0; i < s->nsrc; i++) {
        if (s->src[i].blk) {
            blk_unref(s->src[i].blk);
        }
    }
    g_free(s->src);
    g_free(s->err_msg);
    for (int i = 0; i < s->nworkers; i++) {
        g_cond_clear(&s->turn_conds[i]);
    }
    g_free(s->turn_conds);
    g_mutex_clear(&s->turn_lock);
    g_mutex_clear(&s->lock);
}

/* Everything after the options are parsed; 0 or IMG_EXIT_ERROR. */
static int convert_main(ConvertOpts *o, char **specs, int nspecs,
                        const char *out)
{
    Convert s = { 0 };
    GError *err = NULL;
    int workers, ret;

    g_mutex_init(&s.lock);
    g_mutex_init(&s.turn_lock);
    s.st_start = s.st_end = -1;
    if (open_sources(&s, o, specs, nspecs, &err) < 0) {
        goto fail;
    }
    if (o->bitmaps && nspecs != 1) {
        ferry_error_set(&err, FERRY_ERROR_INVALID,
                        "--bitmaps only works with a single source");
        goto fail;
    }
    if (o->bitmaps &&
        !(block_node_skip_filters(s.src[0].bs)->drv->caps & BLOCK_CAP_BITMAPS)) {
        /* Saying nothing would silently drop the user's bitmaps. */
        ferry_error_set(&err, FERRY_ERROR_UNSUPPORTED,
                        "--bitmaps: ferry cannot read persistent bitmaps of "
                        "format '%s'", block_node_format(s.src[0].bs));
        goto fail;
    }
    if (!o->skip_create && !create_target(&s, o, out, &err)) {
        goto fail;
    }
    if (!open_target(&s, o, out, &err)) {
        goto fail;
    }
    s.sparse = o->sparse;
    s.compressed = o->compressed;
    s.salvage = o->salvage;
    s.rate = o->rate;
    s.chunk_bytes = MAX(CONVERT_CHUNK_BYTES, o->sparse);
    s.granule = img_sparse_granule(o->sparse);
    s.align = 1;
    s.in_order = o->in_order;
    workers = o->workers;
    if (s.compressed) {
        /*
         * The target compresses in the writing thread, so writes run in
         * parallel on every core; qcow2 appends compressed clusters, so the
         * file stays close to sequential anyway.
         */
        s.align = target_cluster_size(s.tbs);
        s.chunk_bytes = MAX(s.align, CONVERT_CHUNK_BYTES / s.align * s.align);
        s.granule = s.align;
        s.in_order = false;
        workers = MAX(workers, (int)g_get_num_processors());
    }
    if (!o->quiet) {
        s.progress = img_progress_new(o->progress, o->progress_mode,
                                      "convert", s.total);
    }
    ret = convert_run(&s, workers);
    if (ret == 0 && o->bitmaps && !copy_bitmaps(s.src[0].bs, s.tbs, &err)) {
        ferry_progress_abort(s.progress);
        goto fail;
    }
    if (ret == 0) {
        ret = blk_flush(s.target);
        if (ret < 0) {
            s.err_msg = g_strdup_printf("error while flushing '%s': %s", out,
                                        g_strerror(-ret));
        }
    }
    if (ret < 0) {
        /* The progress line stays where it stopped: no false 100%. */
        ferry_progress_abort(s.progress);
        img_error("%s", s.err_msg ? s.err_msg : g_strerror(-ret));
        convert_cleanup(&s);
        return IMG_EXIT_ERROR;
    }
    ferry_progress_finish(s.progress);
    convert_cleanup(&s);
    return IMG_EXIT_OK;

fail:
    convert_cleanup(&s);
    return img_fail(err);
}

/* -- command line --------------------------------------------------------- */

static bool parse_sparse(const char *arg, int64_t *out, GError **errp)
{
    uint64_t v;

    if (!ferry_parse_size(arg, "sparse size (-S)", &v, errp)) {
        return false;
    }
    if (v % 512 || v > CONVERT_MAX_SPARSE) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "invalid sparse size (-S) '%s': a multiple of 512 up "
                        "to 16 MiB, or 0", arg);
        return false;
    }
    *out = (int64_t)v;
    return true;
}

static bool parse_workers(const char *arg, int *out, GError **errp)
{
    uint64_t v;

    if (!ferry_parse_uint(arg, "number of parallel requests (-m)", &v, NULL) ||
        v < 1 || v > CONVERT_MAX_WORKERS) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "invalid number of parallel requests (-m) '%s': "
                        "between 1 and %d", arg, CONVERT_MAX_WORKERS);
        return false;
    }
    *out = (int)v;
    return true;
}

/* Cross-option rules, with qemu-img's constraints. */
static bool check_opts(const ConvertOpts *o, GError **errp)
{
    const char *bad = NULL;

    if (o->target_is_zero && !o->skip_create) {
        bad = "--target-is-zero needs -n (it describes an existing target)";
    } else if (o->target_image_opts && !o->skip_create) {
        bad = "--target-image-opts needs -n (the target must exist)";
    } else if (o->skip_create && o->o_args->len) {
        bad = "-o cannot be used with -n (the target already exists)";
    } else if (o->skip_create && o->backing) {
        bad = "-B cannot be used with -n (the target already exists)";
    } else if (o->backing_fmt && !o->backing) {
        bad = "-F (backing format) needs -B";
    } else if (o->compressed && o->backing) {
        bad = "-c and -B cannot be used together";
    } else if (o->compressed && o->copy_offload) {
        bad = "copy offloading (-C) cannot be used with -c";
    } else if (o->target_is_zero && o->backing) {
        bad = "--target-is-zero cannot be used with a backing file (-B)";
    }
    if (bad) {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "%s", bad);
        return false;
    }
    return true;
}

int img_convert(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, IMG_OPT_OBJECT },
        { "image-opts", no_argument, NULL, IMG_OPT_IMAGE_OPTS },
        { "target-image-opts", no_argument, NULL, IMG_OPT_TARGET_IMAGE_OPTS },
        { "target-is-zero", no_argument, NULL, IMG_OPT_TARGET_IS_ZERO },
        { "bitmaps", no_argument, NULL, IMG_OPT_BITMAPS },
        { "salvage", no_argument, NULL, IMG_OPT_SALVAGE },
        { "force-share", no_argument, NULL, 'U' },
        { "progress", optional_argument, NULL, IMG_OPT_PROGRESS },
        { NULL, 0, NULL, 0 },
    };
    g_autoptr(GPtrArray) o_args = g_ptr_array_new();
    ConvertOpts o = {
        .out_fmt = "raw", .cache = "unsafe", .src_cache = NULL,
        .in_order = true, .sparse = CONVERT_DEFAULT_SPARSE,
        .workers = CONVERT_DEFAULT_WORKERS, .o_args = o_args,
    };
    const char *snapshot = NULL;
    GError *err = NULL;
    uint64_t v;
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "hf:O:B:F:Cco:l:S:pt:T:qnm:WUr:",
                            longopts, NULL)) != -1) {
        switch (c) {
        case 'f': o.fmt = optarg; break;
        case 'O': o.out_fmt = optarg; break;
        case 'B': o.backing = optarg; break;
        case 'F': o.backing_fmt = optarg; break;
        case 'C': o.copy_offload = true; break;
        case 'c': o.compressed = true; break;
        case 'o': g_ptr_array_add(o_args, optarg); break;
        case 'l': snapshot = optarg; break;
        case 'S':
            if (!parse_sparse(optarg, &o.sparse, &err)) {
                return img_fail(err);
            }
            break;
        case 'p': o.progress = true; break;
        case 't': o.cache = optarg; break;
        case 'T': o.src_cache = optarg; break;
        case 'q': o.quiet = true; break;
        case 'n': o.skip_create = true; break;
        case 'm':
            if (!parse_workers(optarg, &o.workers, &err)) {
                return img_fail(err);
            }
            break;
        case 'W': o.in_order = false; break;
        case 'U': o.force_share = true; break;
        case 'r':
            if (!ferry_parse_size(optarg, "rate limit (-r)", &v, &err)) {
                return img_fail(err);
            }
            o.rate = v;
            break;
        case IMG_OPT_IMAGE_OPTS: o.image_opts = true; break;
        case IMG_OPT_TARGET_IMAGE_OPTS: o.target_image_opts = true; break;
        case IMG_OPT_TARGET_IS_ZERO: o.target_is_zero = true; break;
        case IMG_OPT_BITMAPS: o.bitmaps = true; break;
        case IMG_OPT_SALVAGE: o.salvage = true; break;
        case IMG_OPT_PROGRESS:
            if (!optarg) {
                o.progress = true;
            } else if (!ferry_progress_parse_mode(optarg, &o.progress_mode)) {
                img_error("--progress must be human, json or none, not '%s'",
                          optarg);
                return IMG_EXIT_ERROR;
            }
            break;
        case IMG_OPT_OBJECT:
            img_error("--object is not supported yet");
            return IMG_EXIT_ERROR;
        default:
            return img_usage_error("convert", "invalid option");
        }
    }
    if (img_opts_wants_help(o_args)) {
        img_print_create_opts_help(o.out_fmt);
        return IMG_EXIT_OK;
    }
    if (argc - optind < 2) {
        img_error("convert needs at least one source and an output filename");
        return IMG_EXIT_ERROR;
    }
    if (snapshot) {
        img_error("-l (convert from an internal snapshot) is not supported "
                  "yet");
        return IMG_EXIT_ERROR;
    }
    if (!check_opts(&o, &err) ||
        !img_parse_cache(o.cache, &(uint32_t){ 0 }, &err) ||
        !img_parse_cache(o.src_cache, &(uint32_t){ 0 }, &err)) {
        return img_fail(err);
    }
    if (o.copy_offload) {
        ferry_warn("copy offloading (-C) is not supported; copying through "
                   "memory");
    }
    return convert_main(&o, argv + optind, argc - optind - 1, argv[argc - 1]);
}
