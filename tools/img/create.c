/*
 * ferry img create: a new image of any format that can be created, with
 * qemu-img's -f/-b/-F/-u/-o flags and its "Formatting ..." line.
 */
#include "config.h"

#include <getopt.h>
#include <string.h>

#include "common/error.h"
#include "common/opts.h"
#include "common/units.h"
#include "tools/img/img.h"

/* "Formatting 'x', fmt=qcow2 key=value ... size=N" as qemu-img prints it. */
static void print_formatting(const char *filename, const char *fmt,
                             json_t *opts)
{
    GString *line = g_string_new(NULL);
    const char *key;
    json_t *val;

    g_string_append_printf(line, "Formatting '%s', fmt=%s", filename, fmt);
    json_object_foreach(opts, key, val) {
        g_autofree char *s = ferry_opt_to_string(val);
        if (strcmp(key, "size")) {
            g_string_append_printf(line, " %s=%s", key, s);
        }
    }
    {
        g_autofree char *s = ferry_opt_to_string(json_object_get(opts, "size"));
        g_string_append_printf(line, " size=%s", s);
    }
    printf("%s\n", line->str);
    g_string_free(line, TRUE);
}

int img_create(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, IMG_OPT_OBJECT },
        { NULL, 0, NULL, 0 },
    };
    g_autoptr(GPtrArray) o_args = g_ptr_array_new();
    g_autoptr(json_t) opts = NULL;
    const char *fmt = "raw", *backing = NULL, *backing_fmt = NULL;
    const char *filename;
    bool quiet = false, unsafe = false;
    GError *err = NULL;
    uint64_t size = 0;
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "F:b:f:ho:qu", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'b': backing = optarg; break;
        case 'F': backing_fmt = optarg; break;
        case 'o': g_ptr_array_add(o_args, optarg); break;
        case 'q': quiet = true; break;
        case 'u': unsafe = true; break;
        case IMG_OPT_OBJECT:
            return img_usage_error("create", "--object is not supported yet");
        default:
            return img_usage_error("create", "invalid option");
        }
    }
    if (img_opts_wants_help(o_args)) {
        img_print_create_opts_help(fmt);
        return IMG_EXIT_OK;
    }
    if (optind >= argc) {
        return img_usage_error("create", "expecting a filename");
    }
    filename = argv[optind++];
    opts = img_parse_create_opts(o_args, &err);
    if (!opts) {
        return img_fail(err);
    }
    if (optind < argc) {
        if (!ferry_parse_size(argv[optind], "image size", &size, &err)) {
            return img_fail(err);
        }
        json_object_set_new(opts, "size", json_integer(size));
        optind++;
    }
    if (optind < argc) {
        return img_usage_error("create", "unexpected argument '%s'", argv[optind]);
    }
    if (backing) {
        json_object_set_new(opts, "backing_file", json_string(backing));
    }
    if (backing_fmt) {
        json_object_set_new(opts, "backing_fmt", json_string(backing_fmt));
    }
    backing = ferry_opt_str(opts, "backing_file");
    backing_fmt = ferry_opt_str(opts, "backing_fmt");
    if (backing && !backing_fmt) {
        img_error("a backing file needs its format: add -F (for example "
                  "-F qcow2 or -F raw); ferry does not probe backing files "
                  "at create time");
        return IMG_EXIT_ERROR;
    }
    if (backing && !unsafe) {
        /* Check the backing file opens, and take its size if none given. */
        g_autofree char *path = block_backing_path(filename, backing);
        g_autoptr(BlockBackend) bb = img_open(path, backing_fmt, false,
                                              BLOCK_O_NO_BITMAPS, NULL, &err);
        if (!bb) {
            g_prefix_error(&err, "backing file: ");
            return img_fail(err);
        }
        if (!json_object_get(opts, "size")) {
            int64_t len = blk_getlength(bb);
            if (len < 0) {
                img_error("cannot get the size of backing file '%s'", backing);
                return IMG_EXIT_ERROR;
            }
            json_object_set_new(opts, "size", json_integer(len));
        }
    }
    if (!json_object_get(opts, "size")) {
        if (backing) {
            img_error("image size is required with -u");
        } else {
            img_error("image size is required: ferry img create %s %s SIZE",
                      fmt, filename);
        }
        return IMG_EXIT_ERROR;
    }
    if (!img_check_create_opts(fmt, opts, &err)) {
        return img_fail(err);
    }
    if (!quiet) {
        print_formatting(filename, fmt, opts);
    }
    if (!block_create(fmt, filename, opts, &err)) {
        g_prefix_error(&err, "%s: ", filename);
        return img_fail(err);
    }
    return IMG_EXIT_OK;
}
