/*
 * ferry img: subcommand table and the helpers the subcommands share
 * (opening images with qemu-img's cache modes, -o parsing, JSON output).
 */
#include "config.h"

#include <stdarg.h>
#include <string.h>

#include "common/error.h"
#include "common/log.h"
#include "common/opts.h"
#include "tools/ferry.h"
#include "tools/img/img.h"

static const ImgCommand img_commands[] = {
    { "create", img_create,
      "create [--object objectdef] [-q] [-f fmt] [-b backing_file [-F backing_fmt]]\n"
      "        [-u] [-o options] filename [size]" },
    { "info", img_info,
      "info [--object objectdef] [--image-opts] [-f fmt] [--output=ofmt]\n"
      "        [--backing-chain] [-U] filename" },
    { "convert", img_convert,
      "convert [--object objectdef] [--image-opts] [--target-image-opts]\n"
      "        [--target-is-zero] [--bitmaps] [-U] [-C] [-c] [-p] [-q] [-n]\n"
      "        [-f fmt] [-t cache] [-T src_cache] [-O output_fmt]\n"
      "        [-B backing_file [-F backing_fmt]] [-o options] [-l snapshot_param]\n"
      "        [-S sparse_size] [-r rate_limit] [-m num_coroutines] [-W]\n"
      "        [--salvage] [--progress=human|json] filename [filename2 [...]]\n"
      "        output_filename" },
    { "check", img_check,
      "check [--object objectdef] [--image-opts] [-q] [-f fmt] [--output=ofmt]\n"
      "        [-r [leaks | all]] [-T src_cache] [-U] filename" },
    { "map", img_map,
      "map [--object objectdef] [--image-opts] [-f fmt] [--start-offset=offset]\n"
      "        [--max-length=len] [--output=ofmt] [-U] filename" },
    { "compare", img_compare,
      "compare [--object objectdef] [--image-opts] [-f fmt] [-F fmt] [-T src_cache]\n"
      "        [-p] [--progress=json] [-q] [-s] [-U] filename1 filename2" },
    { "resize", img_resize,
      "resize [--object objectdef] [--image-opts] [-f fmt] [--preallocation=prealloc]\n"
      "        [-q] [--shrink] filename [+ | -]size" },
    { "measure", img_measure,
      "measure [--output=ofmt] [-O output_fmt] [-o options] [--size N |\n"
      "        [--object objectdef] [--image-opts] [-f fmt] [-l snapshot_param]\n"
      "        filename]" },
    { "commit", img_commit,
      "commit [--object objectdef] [--image-opts] [-q] [-f fmt] [-t cache]\n"
      "        [-b base] [-r rate_limit] [-d] [-p] [--progress=json] filename" },
    { "rebase", img_rebase,
      "rebase [--object objectdef] [--image-opts] [-U] [-q] [-f fmt] [-t cache]\n"
      "        [-T src_cache] [-p] [--progress=json] [-u] [-c] -b backing_file\n"
      "        [-F backing_fmt] filename" },
    { "snapshot", img_snapshot,
      "snapshot [--object objectdef] [--image-opts] [-U] [-q]\n"
      "        [-l | -a snapshot | -c snapshot | -d snapshot] filename" },
    { "bitmap", img_bitmap,
      "bitmap (--merge SOURCE | --add | --remove | --clear | --enable |\n"
      "        --disable)... [-b source_file [-F source_fmt]] [-g granularity]\n"
      "        [--object objectdef] [--image-opts | -f fmt] filename bitmap" },
    { "amend", img_amend,
      "amend [--object objectdef] [--image-opts] [-p] [-q] [-f fmt] [-t cache]\n"
      "        [--force] -o options filename" },
};

void img_error(const char *fmt, ...)
{
    va_list ap;
    g_autofree char *msg = NULL;

    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    fprintf(stderr, "ferry img: %s\n", msg);
}

int img_fail(GError *err)
{
    img_error("%s", err ? err->message : "unknown error");
    if (err) {
        g_error_free(err);
    }
    return IMG_EXIT_ERROR;
}

int img_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    g_autofree char *msg = NULL;

    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    fprintf(stderr, "ferry img %s: %s\nTry 'ferry img %s --help' for more "
            "information.\n", cmd, msg, cmd);
    return IMG_EXIT_ERROR;
}

bool img_parse_cache(const char *mode, uint32_t *flags, GError **errp)
{
    *flags &= ~(BLOCK_O_NOCACHE | BLOCK_O_NO_FLUSH);
    if (!mode || !strcmp(mode, "writeback")) {
        return true;
    }
    if (!strcmp(mode, "none") || !strcmp(mode, "off")) {
        *flags |= BLOCK_O_NOCACHE;
    } else if (!strcmp(mode, "unsafe")) {
        *flags |= BLOCK_O_NO_FLUSH;
    } else if (!strcmp(mode, "directsync")) {
        *flags |= BLOCK_O_NOCACHE;
    } else if (!strcmp(mode, "writethrough")) {
        /* every write is flushed by the caller's FUA; nothing to set */
    } else {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "invalid cache mode '%s' (none, writeback, unsafe, "
                        "directsync or writethrough)", mode);
        return false;
    }
    return true;
}

bool img_parse_output(const char *s, bool *json, GError **errp)
{
    if (!strcmp(s, "json")) {
        *json = true;
    } else if (!strcmp(s, "human")) {
        *json = false;
    } else {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "--output must be 'human' or 'json', not '%s'", s);
        return false;
    }
    return true;
}

BlockBackend *img_open(const char *spec, const char *fmt, bool image_opts,
                       uint32_t flags, const char *cache, GError **errp)
{
    g_autoptr(json_t) opts = NULL;
    uint32_t perm, shared;
    BlockBackend *blk;
    BlockNode *bs;

    if (!img_parse_cache(cache, &flags, errp)) {
        return NULL;
    }
    if (image_opts && fmt) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "--image-opts and a format (-f) cannot go together: "
                        "put driver=%s in the options", fmt);
        return NULL;
    }
    opts = block_spec_to_opts(spec, image_opts, errp);
    if (!opts) {
        return NULL;
    }
    if (fmt && !json_object_get(opts, "driver")) {
        json_object_set_new(opts, "driver", json_string(fmt));
    }
    blk_perm_for_flags(flags, &perm, &shared);
    bs = block_node_open_opts(opts, flags, perm, shared, errp);
    if (!bs) {
        g_prefix_error(errp, "could not open '%s': ", spec);
        return NULL;
    }
    blk_perm_for_flags(bs->open_flags, &perm, &shared);
    blk = blk_new(NULL, perm, shared);
    if (!blk_insert_node(blk, bs, errp)) {
        g_prefix_error(errp, "could not open '%s': ", spec);
        blk_unref(blk);
        blk = NULL;
    }
    block_node_unref(bs);
    return blk;
}

bool img_opts_wants_help(GPtrArray *o_args)
{
    for (guint i = 0; o_args && i < o_args->len; i++) {
        g_auto(GStrv) parts = g_strsplit(o_args->pdata[i], ",", -1);
        for (char **p = parts; *p; p++) {
            if (!strcmp(*p, "help") || !strcmp(*p, "?")) {
                return true;
            }
        }
    }
    return false;
}

json_t *img_parse_create_opts(GPtrArray *o_args, GError **errp)
{
    json_t *all = json_object();

    for (guint i = 0; o_args && i < o_args->len; i++) {
        json_t *one = ferry_opts_parse(o_args->pdata[i], NULL, errp);
        if (!one) {
            json_decref(all);
            return NULL;
        }
        ferry_opts_merge(all, one);
        json_decref(one);
    }
    return all;
}

static const char *opt_type_name(BlockOptType t)
{
    switch (t) {
    case BLOCK_OPT_SIZE: return "size";
    case BLOCK_OPT_BOOL: return "bool (on/off)";
    case BLOCK_OPT_NUMBER: return "num";
    default: return "str";
    }
}

void img_print_create_opts_help(const char *fmt)
{
    const BlockDriver *drv = block_driver_find(fmt);

    if (!drv || !drv->create_opts) {
        printf("Format '%s' has no creation options\n", fmt);
        return;
    }
    printf("Supported options:\n");
    for (const BlockCreateOpt *o = drv->create_opts; o->name; o++) {
        printf("  %-24s - %s (%s)\n", o->name, o->help, opt_type_name(o->type));
    }
}

bool img_check_create_opts(const char *fmt, json_t *opts, GError **errp)
{
    const BlockDriver *drv = block_driver_find(fmt);
    const char *key;
    json_t *val;

    if (!drv) {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "unknown file format '%s'",
                        fmt);
        return false;
    }
    json_object_foreach(opts, key, val) {
        bool known = false;
        for (const BlockCreateOpt *o = drv->create_opts; o && o->name && !known; o++) {
            known = !strcmp(o->name, key);
        }
        if (!known) {
            ferry_error_set(errp, FERRY_ERROR_INVALID,
                            "invalid parameter '%s' for format %s (see '-o "
                            "help')", key, fmt);
            return false;
        }
    }
    return true;
}

void img_print_json(FILE *out, json_t *json)
{
    g_autofree char *s = img_json_to_qemu_text(json);

    fprintf(out, "%s\n", s);
}

FerryProgress *img_progress_new(bool enabled, FerryProgressMode mode,
                                const char *op, uint64_t total)
{
    if (!enabled && mode == FERRY_PROGRESS_NONE) {
        return NULL;
    }
    if (mode == FERRY_PROGRESS_NONE) {
        mode = FERRY_PROGRESS_HUMAN;
    }
    return ferry_progress_new(mode, op, total);
}

static void img_usage(FILE *out)
{
    fprintf(out, "usage: ferry img <command> [command options]\n"
                 "QEMU disk image utility, qemu-img compatible\n\nCommands:\n");
    for (size_t i = 0; i < G_N_ELEMENTS(img_commands); i++) {
        fprintf(out, "  %s\n", img_commands[i].synopsis);
    }
    fprintf(out, "\nSupported formats:");
    for (const BlockDriver *const *d = block_drivers; *d; d++) {
        fprintf(out, " %s", (*d)->name);
    }
    fprintf(out, "\n\nSee 'ferry img <command> --help' for one command.\n");
}

int img_main(int argc, char **argv)
{
    ferry_log_init("ferry img");
    if (argc < 2) {
        img_usage(stderr);
        return IMG_EXIT_ERROR;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
        !strcmp(argv[1], "help")) {
        img_usage(stdout);
        return IMG_EXIT_OK;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V")) {
        printf("ferry img version %s (qemu-img compatible)\n", PACKAGE_VERSION);
        return IMG_EXIT_OK;
    }
    for (size_t i = 0; i < G_N_ELEMENTS(img_commands); i++) {
        if (!strcmp(argv[1], img_commands[i].name)) {
            for (int a = 2; a < argc; a++) {
                if (!strcmp(argv[a], "--help") || !strcmp(argv[a], "-h")) {
                    printf("usage: ferry img %s\n", img_commands[i].synopsis);
                    return IMG_EXIT_OK;
                }
                if (!strcmp(argv[a], "--")) {
                    break;
                }
            }
            return img_commands[i].run(argc - 1, argv + 1);
        }
    }
    img_error("unknown command '%s'; see 'ferry img --help'", argv[1]);
    return IMG_EXIT_ERROR;
}
