/*
 * ferry img amend: change the options of an existing image (qcow2's compat
 * level, lazy_refcounts, refcount_bits, ...) through drv->amend, with
 * qemu-img amend's flags and messages.  Validating the options is the
 * driver's job: it knows which can change in place.
 */
#include "config.h"

#include <getopt.h>
#include <string.h>

#include "common/error.h"
#include "common/opts.h"
#include "tools/img/img.h"

int img_amend(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, IMG_OPT_OBJECT },
        { "image-opts", no_argument, NULL, IMG_OPT_IMAGE_OPTS },
        { "force", no_argument, NULL, IMG_OPT_FORCE },
        { "progress", required_argument, NULL, IMG_OPT_PROGRESS },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL, *cache = NULL, *filename;
    bool progress = false, quiet = false, image_opts = false, force = false;
    FerryProgressMode pmode = FERRY_PROGRESS_NONE;
    g_autoptr(GPtrArray) o_args = g_ptr_array_new();
    g_autoptr(BlockBackend) blk = NULL;
    g_autoptr(json_t) opts = NULL;
    FerryProgress *prog;
    GError *err = NULL;
    BlockNode *bs;
    bool ok;
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "ho:f:t:pq", longopts, NULL)) != -1) {
        switch (c) {
        case 'o': g_ptr_array_add(o_args, optarg); break;
        case 'f': fmt = optarg; break;
        case 't': cache = optarg; break;
        case 'p': progress = true; break;
        case 'q': quiet = true; break;
        case IMG_OPT_IMAGE_OPTS: image_opts = true; break;
        case IMG_OPT_FORCE: force = true; break;
        case IMG_OPT_PROGRESS:
            if (!ferry_progress_parse_mode(optarg, &pmode)) {
                return img_usage_error("amend", "--progress must be human, "
                                       "json or none, not '%s'", optarg);
            }
            break;
        case IMG_OPT_OBJECT:
            return img_usage_error("amend", "--object is not supported yet");
        default:
            return img_usage_error("amend", "invalid option");
        }
    }
    if (o_args->len == 0) {
        return img_usage_error("amend", "Must specify options (-o)");
    }
    if (quiet) {
        progress = false;
        pmode = FERRY_PROGRESS_NONE;
    }
    if (fmt && img_opts_wants_help(o_args)) {
        img_print_create_opts_help(fmt);
        return IMG_EXIT_OK;
    }
    if (optind != argc - 1) {
        return img_usage_error("amend", "expecting one image file name");
    }
    filename = argv[optind];
    blk = img_open(filename, fmt, image_opts, BLOCK_O_RDWR, cache, &err);
    if (!blk) {
        return img_fail(err);
    }
    bs = blk_node(blk);
    if (img_opts_wants_help(o_args)) {
        img_print_create_opts_help(block_node_format(bs));
        return IMG_EXIT_OK;
    }
    if (!bs->drv->amend) {
        img_error("Format driver '%s' does not support option amendment%s",
                  block_node_format(bs),
                  img_qemu_format_has(block_node_format(bs), IMG_QEMU_AMEND)
                  ? " yet" : "");
        return IMG_EXIT_ERROR;
    }
    opts = img_parse_create_opts(o_args, &err);
    if (!opts) {
        return img_fail(err);
    }
    prog = img_progress_new(progress, pmode, "amend", 1);
    block_node_drain_begin(bs);
    ok = bs->drv->amend(bs, opts, force, &err);
    block_node_drain_end(bs);
    if (!ok) {
        ferry_progress_abort(prog);
        return img_fail(err);
    }
    ferry_progress_finish(prog);
    return IMG_EXIT_OK;
}
