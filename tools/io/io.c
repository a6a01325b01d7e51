/*
 * ferry io: a qemu-io compatible subset for tests and debugging.  Opens one
 * image (any spec the graph accepts) and runs -c commands in order: read
 * (-P pattern check, -v dump), write (-P, -z [-u], -c compressed),
 * discard, flush, length, map, truncate, info; output lines as qemu-io's.
 */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>

#include "common/error.h"
#include "common/opts.h"
#include "common/units.h"
#include "tools/ferry.h"
#include "tools/img/img.h"

static bool quiet;

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Sizes as qemu-io prints them: "19.875 MiB", "1 MiB", "0 bytes". */
static char *cvtstr(double value)
{
    static const char *const units[] = { " EiB", " PiB", " TiB", " GiB",
                                         " MiB", " KiB" };
    const char *suffix = " bytes";
    char num[64];
    char *trim;

    for (int i = 0; i < 6; i++) {
        double unit = (double)(1ull << (10 * (6 - i)));
        if (value >= unit) {
            value /= unit;
            suffix = units[i];
            break;
        }
    }
    snprintf(num, sizeof(num), "%.3f", value);
    trim = strstr(num, ".000");
    if (trim) {
        *trim = 0;
    }
    return g_strconcat(num, suffix, NULL);
}

static void print_stats(uint64_t bytes, double t)
{
    g_autofree char *sz = cvtstr(bytes);
    g_autofree char *rate = cvtstr(t > 0 ? bytes / t : bytes);
    int min = (int)(t / 60);
    double sec = t - min * 60;

    if (quiet) {
        return;
    }
    printf("%s, 1 ops; %s%02d.%02d sec (%s/sec and %.4f ops/sec)\n", sz,
           min ? "1:" : "", (int)sec,
           (int)((sec - (int)sec) * 100), rate, t > 0 ? 1 / t : 0.0);
}

static bool parse_num(const char *s, uint64_t *out)
{
    GError *err = NULL;

    if (!ferry_parse_size(s, "number", out, &err)) {
        fprintf(stderr, "Parsing error: non-numeric argument, or extraneous/"
                "unrecognized suffix -- %s\n", s);
        g_error_free(err);
        return false;
    }
    return true;
}

static void dump_buffer(const uint8_t *buf, uint64_t offset, uint64_t len)
{
    for (uint64_t i = 0; i < len; i += 16) {
        printf("%08" G_GINT64_MODIFIER "x:  ", offset + i);
        for (uint64_t j = i; j < i + 16 && j < len; j++) {
            printf("%02x ", buf[j]);
        }
        printf(" ");
        for (uint64_t j = i; j < i + 16 && j < len; j++) {
            printf("%c", buf[j] >= 32 && buf[j] < 127 ? buf[j] : '.');
        }
        printf("\n");
    }
}

typedef struct Args {
    int argc;
    char **argv;
} Args;

static int cmd_read(BlockBackend *blk, int argc, char **argv)
{
    int pattern = -1, c;
    bool verbose = false;
    uint64_t off, len;
    g_autofree uint8_t *buf = NULL;
    double t;
    int ret;

    optind = 0;
    while ((c = getopt(argc, argv, "P:vq")) != -1) {
        switch (c) {
        case 'P': pattern = (int)strtol(optarg, NULL, 0) & 0xff; break;
        case 'v': verbose = true; break;
        case 'q': quiet = true; break;
        default: return -1;
        }
    }
    if (argc - optind != 2 || !parse_num(argv[optind], &off) ||
        !parse_num(argv[optind + 1], &len)) {
        fprintf(stderr, "read: usage: read [-P pattern] [-v] off len\n");
        return -1;
    }
    buf = g_try_malloc(MAX(len, 1));
    if (!buf) {
        fprintf(stderr, "read: cannot allocate %" G_GUINT64_FORMAT " bytes\n",
                len);
        return -1;
    }
    t = now();
    ret = blk_pread(blk, off, len, buf, 0);
    t = now() - t;
    if (ret < 0) {
        printf("read failed: %s\n", g_strerror(-ret));
        return -1;
    }
    if (pattern >= 0) {
        for (uint64_t i = 0; i < len; i++) {
            if (buf[i] != pattern) {
                printf("Pattern verification failed at offset %" G_GUINT64_FORMAT
                       ", %" G_GUINT64_FORMAT " bytes\n", off + i, len);
                return -1;
            }
        }
    }
    if (verbose) {
        dump_buffer(buf, off, len);
    }
    if (!quiet) {
        printf("read %" G_GUINT64_FORMAT "/%" G_GUINT64_FORMAT " bytes at offset %"
               G_GUINT64_FORMAT "\n", len, len, off);
    }
    print_stats(len, t);
    return 0;
}

static int cmd_write(BlockBackend *blk, int argc, char **argv)
{
    int pattern = 0xcd, c;
    bool zero = false, unmap = false, compressed = false;
    uint64_t off, len;
    double t;
    int ret;

    optind = 0;
    while ((c = getopt(argc, argv, "P:zucq")) != -1) {
        switch (c) {
        case 'P': pattern = (int)strtol(optarg, NULL, 0) & 0xff; break;
        case 'z': zero = true; break;
        case 'u': unmap = true; break;
        case 'c': compressed = true; break;
        case 'q': quiet = true; break;
        default: return -1;
        }
    }
    if (argc - optind != 2 || !parse_num(argv[optind], &off) ||
        !parse_num(argv[optind + 1], &len)) {
        fprintf(stderr, "write: usage: write [-P pattern] [-z [-u]] [-c] off "
                "len\n");
        return -1;
    }
    if (unmap && !zero) {
        fprintf(stderr, "-u requires -z to be specified\n");
        return -1;
    }
    t = now();
    if (zero) {
        ret = blk_pwrite_zeroes(blk, off, len, unmap ? BLOCK_REQ_MAY_UNMAP : 0);
    } else {
        g_autofree uint8_t *buf = g_try_malloc(MAX(len, 1));
        if (!buf) {
            fprintf(stderr, "write: cannot allocate %" G_GUINT64_FORMAT
                    " bytes\n", len);
            return -1;
        }
        memset(buf, pattern, len);
        ret = blk_pwrite(blk, off, len, buf,
                         compressed ? BLOCK_REQ_WRITE_COMPRESSED : 0);
    }
    t = now() - t;
    if (ret < 0) {
        printf("write failed: %s\n", g_strerror(-ret));
        return -1;
    }
    if (!quiet) {
        printf("wrote %" G_GUINT64_FORMAT "/%" G_GUINT64_FORMAT " bytes at "
               "offset %" G_GUINT64_FORMAT "\n", len, len, off);
    }
    print_stats(len, t);
    return 0;
}

static int cmd_discard(BlockBackend *blk, int argc, char **argv)
{
    uint64_t off, len;
    double t;
    int ret;

    if (argc != 3 || !parse_num(argv[1], &off) || !parse_num(argv[2], &len)) {
        fprintf(stderr, "discard: usage: discard off len\n");
        return -1;
    }
    t = now();
    ret = blk_pdiscard(blk, off, len);
    t = now() - t;
    if (ret < 0) {
        printf("discard failed: %s\n", g_strerror(-ret));
        return -1;
    }
    if (!quiet) {
        printf("discard %" G_GUINT64_FORMAT "/%" G_GUINT64_FORMAT " bytes at "
               "offset %" G_GUINT64_FORMAT "\n", len, len, off);
    }
    print_stats(len, t);
    return 0;
}

/* Allocated or not in this layer, merged into runs as qemu-io's map. */
static int cmd_map(BlockBackend *blk)
{
    BlockNode *bs = blk_node(blk);
    int64_t len = blk_getlength(blk), off = 0;

    while (off < len) {
        int64_t n = 0;
        bool alloc = false;
        g_autofree char *sz = NULL, *at = NULL;
        while (off + n < len) {
            int64_t pnum;
            int depth = 0;
            int ret = block_node_block_status_above(bs, NULL, off + n,
                                                    len - off - n, &pnum,
                                                    NULL, NULL, &depth);
            bool a;
            if (ret < 0) {
                printf("map failed: %s\n", g_strerror(-ret));
                return -1;
            }
            a = (ret & BLOCK_STATUS_ALLOCATED) && depth == 0;
            if (n && a != alloc) {
                break;
            }
            alloc = a;
            n += pnum;
        }
        sz = cvtstr(n);
        at = cvtstr(off);
        printf("%s (0x%" G_GINT64_MODIFIER "x) bytes %s allocated at offset %s "
               "(0x%" G_GINT64_MODIFIER "x)\n", sz, n, alloc ? "   " : "not",
               at, off);
        off += n;
    }
    return 0;
}

/*
 * check [-r leaks|all]: the driver's check, printed as qemu-img check's
 * summary plus one "check: key=value ..." line for scripts.
 */
static int cmd_check(BlockBackend *blk, int argc, char **argv)
{
    BlockNode *bs = blk_node(blk);
    BlockCheckResult res = { 0 };
    uint32_t fix = 0;
    GError *err = NULL;

    if (argc == 3 && !strcmp(argv[1], "-r")) {
        fix = !strcmp(argv[2], "all") ? BLOCK_FIX_LEAKS | BLOCK_FIX_ERRORS
              : !strcmp(argv[2], "leaks") ? BLOCK_FIX_LEAKS : 0;
    }
    if (!bs->drv->check) {
        printf("check: format %s cannot be checked\n", block_node_format(bs));
        return -1;
    }
    block_node_drain_begin(bs);
    if (!bs->drv->check(bs, &res, fix, &err)) {
        block_node_drain_end(bs);
        printf("check failed: %s\n", err->message);
        g_error_free(err);
        return -1;
    }
    block_node_drain_end(bs);
    if (res.leaks_fixed || res.corruptions_fixed) {
        printf("The following inconsistencies were found and repaired:\n\n"
               "    %" G_GINT64_FORMAT " leaked clusters\n    %" G_GINT64_FORMAT
               " corruptions\n\n", res.leaks_fixed, res.corruptions_fixed);
    }
    if (!res.corruptions && !res.leaks && !res.check_errors) {
        printf("No errors were found on the image.\n");
    }
    printf("check: corruptions=%" G_GINT64_FORMAT " leaks=%" G_GINT64_FORMAT
           " check-errors=%" G_GINT64_FORMAT " corruptions-fixed=%" G_GINT64_FORMAT
           " leaks-fixed=%" G_GINT64_FORMAT " image-end-offset=%" G_GINT64_FORMAT
           " total-clusters=%" G_GINT64_FORMAT " allocated-clusters=%"
           G_GINT64_FORMAT " fragmented-clusters=%" G_GINT64_FORMAT
           " compressed-clusters=%" G_GINT64_FORMAT "\n", res.corruptions,
           res.leaks, res.check_errors, res.corruptions_fixed, res.leaks_fixed,
           res.image_end_offset, res.total_clusters, res.allocated_clusters,
           res.fragmented_clusters, res.compressed_clusters);
    return res.corruptions || res.check_errors ? -1 : 0;
}

static int run_command(BlockBackend *blk, const char *line)
{
    g_auto(GStrv) argv = NULL;
    GError *err = NULL;
    int argc;

    if (!g_shell_parse_argv(line, &argc, &argv, &err)) {
        fprintf(stderr, "cannot parse command '%s': %s\n", line, err->message);
        g_error_free(err);
        return -1;
    }
    if (!strcmp(argv[0], "read")) {
        return cmd_read(blk, argc, argv);
    } else if (!strcmp(argv[0], "write")) {
        return cmd_write(blk, argc, argv);
    } else if (!strcmp(argv[0], "discard")) {
        return cmd_discard(blk, argc, argv);
    } else if (!strcmp(argv[0], "flush")) {
        int ret = blk_flush(blk);
        if (ret < 0) {
            printf("flush failed: %s\n", g_strerror(-ret));
            return -1;
        }
        return 0;
    } else if (!strcmp(argv[0], "length")) {
        int64_t len = blk_getlength(blk);
        g_autofree char *s = len >= 0 ? cvtstr(len) : NULL;
        if (len < 0) {
            printf("getlength: %s\n", g_strerror((int)-len));
            return -1;
        }
        printf("%s\n", s);
        return 0;
    } else if (!strcmp(argv[0], "check")) {
        return cmd_check(blk, argc, argv);
    } else if (!strcmp(argv[0], "map")) {
        return cmd_map(blk);
    } else if (!strcmp(argv[0], "truncate")) {
        uint64_t size;
        if (argc != 2 || !parse_num(argv[1], &size)) {
            fprintf(stderr, "truncate: usage: truncate size\n");
            return -1;
        }
        if (!blk_truncate(blk, size, true, BLOCK_PREALLOC_OFF, &err)) {
            printf("truncate: %s\n", err->message);
            g_error_free(err);
            return -1;
        }
        return 0;
    } else if (!strcmp(argv[0], "abort")) {
        /* As qemu-io's abort: die without closing, like a crash would. */
        fflush(stdout);
        _exit(134);
    } else if (!strcmp(argv[0], "info")) {
        BlockNode *bs = blk_node(blk);
        BlockImageInfo info = { 0 };
        printf("format name: %s\n", block_node_format(bs));
        if (bs->drv->get_info && bs->drv->get_info(bs, &info, NULL)) {
            if (info.cluster_size) {
                g_autofree char *cs = ferry_size_to_str(info.cluster_size);
                printf("cluster size: %s\n", cs);
            }
            json_decref(info.format_specific);
        }
        return 0;
    }
    fprintf(stderr, "command \"%s\" not found\n", argv[0]);
    return -1;
}

static void usage(FILE *out)
{
    fprintf(out, "usage: ferry io [-f fmt] [-r] [--image-opts] [-U] [-t cache] "
                 "[-q] -c CMD [-c CMD ...] IMAGE\n"
                 "commands: read [-P pat] [-v] off len | write [-P pat] "
                 "[-z [-u]] [-c] off len | discard off len | flush | length | "
                 "map | truncate size | info | abort\n");
}

int io_main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "image-opts", no_argument, NULL, 'I' },
        { "force-share", no_argument, NULL, 'U' },
        { "cmd", required_argument, NULL, 'c' },
        { "format", required_argument, NULL, 'f' },
        { "read-only", no_argument, NULL, 'r' },
        { "cache", required_argument, NULL, 't' },
        { NULL, 0, NULL, 0 },
    };
    g_autoptr(GPtrArray) cmds = g_ptr_array_new();
    const char *fmt = NULL, *cache = NULL;
    bool image_opts = false, ro = false, share = false;
    g_autoptr(BlockBackend) blk = NULL;
    uint32_t flags;
    GError *err = NULL;
    int c, status = 0;

    optind = 0;
    while ((c = getopt_long(argc, argv, "+c:f:rt:Uqnh", longopts, NULL)) != -1) {
        switch (c) {
        case 'c': g_ptr_array_add(cmds, optarg); break;
        case 'f': fmt = optarg; break;
        case 'r': ro = true; break;
        case 't': cache = optarg; break;
        case 'n': cache = "none"; break;
        case 'U': share = true; break;
        case 'q': quiet = true; break;
        case 'I': image_opts = true; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 1;
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        return 1;
    }
    flags = (ro ? 0 : BLOCK_O_RDWR) | (share ? BLOCK_O_FORCE_SHARE : 0);
    {
        g_autoptr(json_t) extra = json_object();
        json_object_set_new(extra, "discard", json_string("unmap"));
        if (image_opts) {
            blk = img_open(argv[optind], fmt, true, flags, cache, &err);
        } else {
            g_autoptr(json_t) opts = block_spec_to_opts(argv[optind], false,
                                                        &err);
            if (opts) {
                char *dump;
                g_autofree char *spec = NULL;
                ferry_opts_merge(opts, extra);
                dump = json_dumps(opts, JSON_COMPACT);
                spec = g_strdup_printf("json:%s", dump);
                free(dump);
                blk = img_open(spec, fmt, false, flags, cache, &err);
            }
        }
    }
    if (!blk) {
        fprintf(stderr, "ferry io: %s\n", err->message);
        g_error_free(err);
        return 1;
    }
    for (guint i = 0; i < cmds->len; i++) {
        if (run_command(blk, cmds->pdata[i]) < 0) {
            status = 1;
        }
    }
    fflush(stdout);
    return status;
}
