/*
 * ferry img measure: how much host space an image of format -O needs, for
 * a new image of --size N or for converting an existing image, through the
 * target driver's measure op.  Output as qemu-img measure: "required size",
 * "fully allocated size" and, when the target can hold bitmaps, "bitmaps
 * size"; JSON keys required, fully-allocated, bitmaps.
 */
#include "config.h"

#include <getopt.h>
#include <string.h>

#include "common/error.h"
#include "common/opts.h"
#include "common/units.h"
#include "tools/img/img.h"

static void print_result(const BlockMeasureInfo *info, bool json)
{
    if (json) {
        g_autoptr(json_t) o = json_object();
        json_object_set_new(o, "required", json_integer(info->required));
        json_object_set_new(o, "fully-allocated",
                            json_integer(info->fully_allocated));
        if (info->has_bitmaps) {
            json_object_set_new(o, "bitmaps", json_integer(info->bitmaps));
        }
        img_print_json(stdout, o);
        return;
    }
    printf("required size: %" G_GUINT64_FORMAT "\n", info->required);
    printf("fully allocated size: %" G_GUINT64_FORMAT "\n",
           info->fully_allocated);
    if (info->has_bitmaps) {
        printf("bitmaps size: %" G_GUINT64_FORMAT "\n", info->bitmaps);
    }
}

int img_measure(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "image-opts", no_argument, NULL, IMG_OPT_IMAGE_OPTS },
        { "object", required_argument, NULL, IMG_OPT_OBJECT },
        { "output", required_argument, NULL, IMG_OPT_OUTPUT },
        { "size", required_argument, NULL, 'S' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL, *out_fmt = "raw", *filename = NULL, *snap = NULL;
    bool json = false, image_opts = false, force_share = false;
    g_autoptr(GPtrArray) o_args = g_ptr_array_new();
    g_autoptr(BlockBackend) in_blk = NULL;
    g_autoptr(json_t) opts = NULL;
    BlockMeasureInfo info = { 0 };
    const BlockDriver *drv;
    uint64_t size = 0;
    bool has_size = false;
    GError *err = NULL;
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "hf:O:o:l:U", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'O': out_fmt = optarg; break;
        case 'o': g_ptr_array_add(o_args, optarg); break;
        case 'l': snap = optarg; break;
        case 'U': force_share = true; break;
        case IMG_OPT_IMAGE_OPTS: image_opts = true; break;
        case IMG_OPT_OUTPUT:
            if (!img_parse_output(optarg, &json, &err)) {
                return img_fail(err);
            }
            break;
        case 'S':
            if (!ferry_parse_size(optarg, "image size", &size, &err)) {
                return img_fail(err);
            }
            has_size = true;
            break;
        case IMG_OPT_OBJECT:
            return img_usage_error("measure", "--object is not supported yet");
        default:
            return img_usage_error("measure", "invalid option");
        }
    }
    if (argc - optind > 1) {
        img_error("At most one filename argument is allowed.");
        return IMG_EXIT_ERROR;
    }
    if (argc - optind == 1) {
        filename = argv[optind];
    }
    if (!filename && (image_opts || fmt || snap)) {
        img_error("--image-opts, -f, and -l require a filename argument.");
        return IMG_EXIT_ERROR;
    }
    if (filename && has_size) {
        img_error("--size N cannot be used together with a filename.");
        return IMG_EXIT_ERROR;
    }
    if (!filename && !has_size) {
        img_error("Either --size N or one filename must be specified.");
        return IMG_EXIT_ERROR;
    }
    if (img_opts_wants_help(o_args)) {
        img_print_create_opts_help(out_fmt);
        return IMG_EXIT_OK;
    }
    if (filename) {
        int64_t len;
        in_blk = img_open(filename, fmt, image_opts,
                          force_share ? BLOCK_O_FORCE_SHARE : 0, NULL, &err);
        if (!in_blk) {
            return img_fail(err);
        }
        if (snap) {
            img_error("-l %s: measuring a snapshot is not supported yet "
                      "(ferry cannot read a snapshot without applying it)",
                      snap);
            return IMG_EXIT_ERROR;
        }
        len = blk_getlength(in_blk);
        if (len < 0) {
            img_error("cannot get the size of '%s': %s", filename,
                      g_strerror((int)-len));
            return IMG_EXIT_ERROR;
        }
        size = len;
    }
    drv = block_driver_find(out_fmt);
    if (!drv) {
        img_error("Unknown file format '%s'", out_fmt);
        return IMG_EXIT_ERROR;
    }
    if (!drv->create) {
        img_error("Format driver '%s' does not support image creation",
                  out_fmt);
        return IMG_EXIT_ERROR;
    }
    opts = img_parse_create_opts(o_args, &err);
    if (!opts || !img_check_create_opts(out_fmt, opts, &err)) {
        return img_fail(err);
    }
    if (!filename) {
        json_object_set_new(opts, "size", json_integer(size));
    }
    if (!drv->measure) {
        img_error("Block driver '%s' does not support size measurement",
                  out_fmt);
        return IMG_EXIT_ERROR;
    }
    if (!drv->measure(opts, in_blk ? blk_node(in_blk) : NULL, size, &info,
                      &err)) {
        return img_fail(err);
    }
    print_result(&info, json);
    return IMG_EXIT_OK;
}
