/*
 * ferry img resize: grow or shrink an image's virtual size through
 * blk_truncate, with qemu-img resize's rules: "+N"/"-N" are relative, a
 * shrink needs --shrink, preallocation only applies when growing, and the
 * size is taken off the end of the command line before option parsing so
 * "-1G" is not read as an option.
 */
#include "config.h"

#include <getopt.h>
#include <string.h>

#include "common/error.h"
#include "common/units.h"
#include "tools/img/img.h"

int img_resize(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "format", required_argument, NULL, 'f' },
        { "object", required_argument, NULL, IMG_OPT_OBJECT },
        { "image-opts", no_argument, NULL, IMG_OPT_IMAGE_OPTS },
        { "preallocation", required_argument, NULL, 'P' },
        { "shrink", no_argument, NULL, IMG_OPT_SHRINK },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL, *filename, *size_arg;
    bool quiet = false, image_opts = false, shrink = false;
    BlockPrealloc prealloc = BLOCK_PREALLOC_OFF;
    g_autoptr(BlockBackend) blk = NULL;
    int64_t current, total;
    GError *err = NULL;
    uint64_t n;
    int relative = 0;
    int c;

    if (argc < 3) {
        return img_usage_error("resize", "not enough arguments: expecting an "
                               "image file name and a size");
    }
    size_arg = argv[--argc];
    optind = 1;
    while ((c = getopt_long(argc, argv, "f:hq", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'q': quiet = true; break;
        case IMG_OPT_IMAGE_OPTS: image_opts = true; break;
        case IMG_OPT_SHRINK: shrink = true; break;
        case 'P':
            if (!block_parse_prealloc(optarg, &prealloc, &err)) {
                return img_fail(err);
            }
            break;
        case IMG_OPT_OBJECT:
            return img_usage_error("resize", "--object is not supported yet");
        default:
            return img_usage_error("resize", "invalid option");
        }
    }
    if (optind != argc - 1) {
        return img_usage_error("resize", "expecting image file name and size");
    }
    filename = argv[optind];
    if (size_arg[0] == '+' || size_arg[0] == '-') {
        relative = size_arg[0] == '+' ? 1 : -1;
        size_arg++;
    }
    if (!ferry_parse_size(size_arg, "size", &n, &err)) {
        return img_fail(err);
    }
    blk = img_open(filename, fmt, image_opts, BLOCK_O_RDWR, NULL, &err);
    if (!blk) {
        return img_fail(err);
    }
    current = blk_getlength(blk);
    if (current < 0) {
        img_error("cannot get the current size of '%s': %s", filename,
                  g_strerror((int)-current));
        return IMG_EXIT_ERROR;
    }
    if (relative > 0 && n > (uint64_t)(INT64_MAX - current)) {
        img_error("new image size is too large");
        return IMG_EXIT_ERROR;
    }
    total = relative ? current + relative * (int64_t)n : (int64_t)n;
    if (total <= 0) {
        img_error("New image size must be positive");
        return IMG_EXIT_ERROR;
    }
    if (total <= current && prealloc != BLOCK_PREALLOC_OFF) {
        img_error("Preallocation can only be used for growing images");
        return IMG_EXIT_ERROR;
    }
    if (total < current && !shrink) {
        img_error("Use the --shrink option to perform a shrink operation.");
        img_error("warning: Shrinking an image will delete all data beyond "
                  "the shrunken image's end. Before performing such an "
                  "operation, make sure there is no important data there.");
        return IMG_EXIT_ERROR;
    }
    if (!blk_truncate(blk, total, true, prealloc, &err)) {
        g_prefix_error(&err, "cannot resize '%s': ", filename);
        return img_fail(err);
    }
    if (!quiet) {
        printf("Image resized.\n");
    }
    return IMG_EXIT_OK;
}
