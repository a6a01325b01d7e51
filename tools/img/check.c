/*
 * ferry img check: a format's consistency check (drv->check) with
 * qemu-img check's flags, report text, JSON names and exit codes:
 * 0 clean, 1 check could not complete, 2 corruptions, 3 leaks only,
 * 63 format without checks.  -r repairs through the same op with
 * BLOCK_FIX_*, then checks again and reports what is left.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <string.h>

#include "common/error.h"
#include "common/opts.h"
#include "tools/img/img.h"

#define CHECK_EXIT_CLEAN        0
#define CHECK_EXIT_FAILED       1
#define CHECK_EXIT_CORRUPT      2
#define CHECK_EXIT_LEAKS        3
#define CHECK_EXIT_UNSUPPORTED  63

/*
 * qemu-img's ImageCheck: optional counters are present only when non-zero.
 * Keys go in QAPI field order (img_print_json puts them in QDict order).
 */
static json_t *check_to_json(const BlockCheckResult *r, const char *filename,
                             const char *format)
{
    json_t *o = json_object();
    const struct {
        const char *key;
        int64_t val;
    } opt[] = {
        { "image-end-offset", r->image_end_offset },
        { "corruptions", r->corruptions },
        { "leaks", r->leaks },
        { "corruptions-fixed", r->corruptions_fixed },
        { "leaks-fixed", r->leaks_fixed },
        { "total-clusters", r->total_clusters },
        { "allocated-clusters", r->allocated_clusters },
        { "fragmented-clusters", r->fragmented_clusters },
        { "compressed-clusters", r->compressed_clusters },
    };

    json_object_set_new(o, "filename", json_string(filename));
    json_object_set_new(o, "format", json_string(format));
    json_object_set_new(o, "check-errors", json_integer(r->check_errors));
    for (size_t i = 0; i < G_N_ELEMENTS(opt); i++) {
        if (opt[i].val) {
            json_object_set_new(o, opt[i].key, json_integer(opt[i].val));
        }
    }
    return o;
}

static void print_human(const BlockCheckResult *r)
{
    if (!r->corruptions && !r->leaks && !r->check_errors) {
        printf("No errors were found on the image.\n");
    } else {
        if (r->corruptions) {
            printf("\n%" G_GINT64_FORMAT " errors were found on the image.\n"
                   "Data may be corrupted, or further writes to the image "
                   "may corrupt it.\n", r->corruptions);
        }
        if (r->leaks) {
            printf("\n%" G_GINT64_FORMAT " leaked clusters were found on the "
                   "image.\nThis means waste of disk space, but no harm to "
                   "data.\n", r->leaks);
        }
        if (r->check_errors) {
            printf("\n%" G_GINT64_FORMAT " internal errors have occurred "
                   "during the check.\n", r->check_errors);
        }
    }
    if (r->total_clusters && r->allocated_clusters) {
        printf("%" G_GINT64_FORMAT "/%" G_GINT64_FORMAT " = %0.2f%% allocated, "
               "%0.2f%% fragmented, %0.2f%% compressed clusters\n",
               r->allocated_clusters, r->total_clusters,
               r->allocated_clusters * 100.0 / r->total_clusters,
               r->fragmented_clusters * 100.0 / r->allocated_clusters,
               r->compressed_clusters * 100.0 / r->allocated_clusters);
    }
    if (r->image_end_offset) {
        printf("Image end offset: %" G_GINT64_FORMAT "\n", r->image_end_offset);
    }
}

static bool parse_repair(const char *arg, uint32_t *fix)
{
    if (!strcmp(arg, "leaks")) {
        *fix = BLOCK_FIX_LEAKS;
    } else if (!strcmp(arg, "all")) {
        *fix = BLOCK_FIX_LEAKS | BLOCK_FIX_ERRORS;
    } else {
        return false;
    }
    return true;
}

/* Run the driver's check once; false (errp set) if it could not run. */
static bool run_check(BlockNode *bs, uint32_t fix, BlockCheckResult *res,
                      GError **errp)
{
    bool ok;

    memset(res, 0, sizeof(*res));
    block_node_drain_begin(bs);
    ok = bs->drv->check(bs, res, fix, errp);
    block_node_drain_end(bs);
    return ok;
}

int img_check(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "format", required_argument, NULL, 'f' },
        { "repair", required_argument, NULL, 'r' },
        { "output", required_argument, NULL, IMG_OPT_OUTPUT },
        { "object", required_argument, NULL, IMG_OPT_OBJECT },
        { "image-opts", no_argument, NULL, IMG_OPT_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL, *cache = NULL, *filename;
    bool json = false, quiet = false, image_opts = false, force_share = false;
    g_autoptr(BlockBackend) blk = NULL;
    BlockCheckResult res;
    GError *err = NULL;
    uint32_t fix = 0;
    BlockNode *bs;
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "f:hr:T:qU", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'T': cache = optarg; break;
        case 'q': quiet = true; break;
        case 'U': force_share = true; break;
        case 'r':
            if (!parse_repair(optarg, &fix)) {
                return img_usage_error("check", "unknown option value for -r "
                                       "(expecting 'leaks' or 'all'): %s",
                                       optarg);
            }
            break;
        case IMG_OPT_OUTPUT:
            if (!img_parse_output(optarg, &json, &err)) {
                return img_fail(err);
            }
            break;
        case IMG_OPT_IMAGE_OPTS: image_opts = true; break;
        case IMG_OPT_OBJECT:
            return img_usage_error("check", "--object is not supported yet");
        default:
            return img_usage_error("check", "invalid option");
        }
    }
    if (optind != argc - 1) {
        return img_usage_error("check", "expecting one image file name");
    }
    filename = argv[optind];
    if (fix && force_share) {
        img_error("--force-share (-U) cannot be used with -r: repairs need "
                  "the image to themselves");
        return CHECK_EXIT_FAILED;
    }
    blk = img_open(filename, fmt, image_opts,
                   BLOCK_O_CHECK | (fix ? BLOCK_O_RDWR : 0) |
                   (force_share ? BLOCK_O_FORCE_SHARE : 0), cache, &err);
    if (!blk) {
        return img_fail(err);
    }
    bs = blk_node(blk);
    if (!bs->drv->check) {
        if (img_qemu_format_has(block_node_format(bs), IMG_QEMU_CHECK)) {
            /* QEMU checks this format: "no checks" would be a false 63 */
            img_error("format '%s' does not support checks yet",
                      block_node_format(bs));
            return CHECK_EXIT_FAILED;
        }
        img_error("This image format does not support checks");
        return CHECK_EXIT_UNSUPPORTED;
    }
    if (!run_check(bs, fix, &res, &err)) {
        img_error("Check failed: %s", err->message);
        g_error_free(err);
        return CHECK_EXIT_FAILED;
    }
    if (res.corruptions_fixed || res.leaks_fixed) {
        int64_t leaks_fixed = res.leaks_fixed;
        int64_t corruptions_fixed = res.corruptions_fixed;

        if (!json && !quiet) {
            printf("The following inconsistencies were found and repaired:\n\n"
                   "    %" G_GINT64_FORMAT " leaked clusters\n"
                   "    %" G_GINT64_FORMAT " corruptions\n\n"
                   "Double checking the fixed image now...\n",
                   leaks_fixed, corruptions_fixed);
        }
        if (!run_check(bs, 0, &res, &err)) {
            img_error("Check failed: %s", err->message);
            g_error_free(err);
            return CHECK_EXIT_FAILED;
        }
        res.leaks_fixed = leaks_fixed;
        res.corruptions_fixed = corruptions_fixed;
    }
    if (!quiet) {
        if (json) {
            g_autoptr(json_t) o = check_to_json(&res, filename,
                                                block_node_format(bs));
            img_print_json(stdout, o);
        } else {
            print_human(&res);
        }
    }
    fflush(stdout);
    if (res.check_errors) {
        img_error("Check failed");
        return CHECK_EXIT_FAILED;
    }
    if (res.corruptions) {
        return CHECK_EXIT_CORRUPT;
    }
    return res.leaks ? CHECK_EXIT_LEAKS : CHECK_EXIT_CLEAN;
}
