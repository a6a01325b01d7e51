/*
 * ferry img info: what an image is, in qemu-img info's words (human and
 * --output=json), optionally for the whole backing chain.
 */
#include "config.h"

#include <getopt.h>
#include <string.h>
#include <time.h>

#include "common/error.h"
#include "common/opts.h"
#include "common/units.h"
#include "tools/img/img.h"
#include "tools/img/info.h"

/* "compression-type" -> "compression type", as qemu-img's human dump. */
static void dump_value(GString *out, json_t *v, int indent);

static void dump_object(GString *out, json_t *obj, int indent)
{
    const char *key;
    json_t *v;

    json_object_foreach(obj, key, v) {
        g_autofree char *name = g_strdup(key);
        for (char *p = name; *p; p++) {
            if (*p == '-') {
                *p = ' ';
            }
        }
        g_string_append_printf(out, "%*s%s:", indent, "", name);
        if (json_is_object(v) || json_is_array(v)) {
            g_string_append_c(out, '\n');
            dump_value(out, v, indent + 4);
        } else {
            g_string_append_c(out, ' ');
            dump_value(out, v, 0);
            g_string_append_c(out, '\n');
        }
    }
}

static void dump_value(GString *out, json_t *v, int indent)
{
    size_t i;
    json_t *e;

    switch (json_typeof(v)) {
    case JSON_OBJECT:
        dump_object(out, v, indent);
        break;
    case JSON_ARRAY:
        json_array_foreach(v, i, e) {
            g_string_append_printf(out, "%*s[%zu]:", indent, "", i);
            if (json_is_object(e) || json_is_array(e)) {
                g_string_append_c(out, '\n');
                dump_value(out, e, indent + 4);
            } else {
                g_string_append_c(out, ' ');
                dump_value(out, e, 0);
                g_string_append_c(out, '\n');
            }
        }
        break;
    case JSON_STRING:
        g_string_append(out, json_string_value(v));
        break;
    case JSON_INTEGER:
        g_string_append_printf(out, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        break;
    case JSON_REAL:
        g_string_append_printf(out, "%g", json_real_value(v));
        break;
    case JSON_TRUE:
        g_string_append(out, "true");
        break;
    case JSON_FALSE:
        g_string_append(out, "false");
        break;
    default:
        g_string_append(out, "null");
        break;
    }
}

static void print_human(json_t *info)
{
    GString *out = g_string_new(NULL);
    json_t *v;
    g_autofree char *vsize = ferry_size_to_str(
        json_integer_value(json_object_get(info, "virtual-size")));

    g_string_append_printf(out, "image: %s\n",
                           json_string_value(json_object_get(info, "filename")));
    g_string_append_printf(out, "file format: %s\n",
                           json_string_value(json_object_get(info, "format")));
    g_string_append_printf(out, "virtual size: %s (%" JSON_INTEGER_FORMAT " bytes)\n",
                           vsize,
                           json_integer_value(json_object_get(info, "virtual-size")));
    if ((v = json_object_get(info, "actual-size"))) {
        g_autofree char *s = ferry_size_to_str(json_integer_value(v));
        g_string_append_printf(out, "disk size: %s\n", s);
    } else {
        g_string_append(out, "disk size: unavailable\n");
    }
    if ((v = json_object_get(info, "cluster-size"))) {
        g_string_append_printf(out, "cluster_size: %" JSON_INTEGER_FORMAT "\n",
                               json_integer_value(v));
    }
    if (json_is_true(json_object_get(info, "encrypted"))) {
        g_string_append(out, "encrypted: yes\n");
    }
    if ((v = json_object_get(info, "backing-filename"))) {
        const char *full = json_string_value(json_object_get(info,
                                             "full-backing-filename"));
        g_string_append_printf(out, "backing file: %s", json_string_value(v));
        if (full && strcmp(full, json_string_value(v))) {
            g_string_append_printf(out, " (actual path: %s)", full);
        }
        g_string_append_c(out, '\n');
    }
    if ((v = json_object_get(info, "backing-filename-format"))) {
        g_string_append_printf(out, "backing file format: %s\n",
                               json_string_value(v));
    }
    if (json_is_true(json_object_get(info, "dirty-flag"))) {
        g_string_append(out, "cleanly shut down: no\n");
    }
    if ((v = json_object_get(info, "snapshots"))) {
        g_string_append(out, "Snapshot list:\n");
        img_print_snapshot_table(out, v);
    }
    if ((v = json_object_get(info, "format-specific"))) {
        g_string_append(out, "Format specific information:\n");
        dump_object(out, json_object_get(v, "data"), 4);
    }
    fputs(out->str, stdout);
    g_string_free(out, TRUE);
}

int img_info(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "format", required_argument, NULL, 'f' },
        { "output", required_argument, NULL, IMG_OPT_OUTPUT },
        { "backing-chain", no_argument, NULL, IMG_OPT_BACKING_CHAIN },
        { "image-opts", no_argument, NULL, IMG_OPT_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { "object", required_argument, NULL, IMG_OPT_OBJECT },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL, *filename;
    bool json = false, chain = false, image_opts = false, force_share = false;
    g_autoptr(BlockBackend) blk = NULL;
    g_autoptr(json_t) all = json_array();
    GError *err = NULL;
    BlockNode *bs;
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "f:hU", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'U': force_share = true; break;
        case IMG_OPT_OUTPUT:
            if (!img_parse_output(optarg, &json, &err)) {
                return img_fail(err);
            }
            break;
        case IMG_OPT_BACKING_CHAIN: chain = true; break;
        case IMG_OPT_IMAGE_OPTS: image_opts = true; break;
        default:
            return img_usage_error("info", "invalid option");
        }
    }
    if (optind != argc - 1) {
        return img_usage_error("info", "expecting one image name");
    }
    filename = argv[optind];
    blk = img_open(filename, fmt, image_opts,
                   (force_share ? BLOCK_O_FORCE_SHARE : 0) | BLOCK_O_CHECK |
                   (chain ? 0 : BLOCK_O_NO_BACKING),
                   NULL, &err);
    if (!blk) {
        return img_fail(err);
    }
    bs = blk_node(blk);
    for (BlockNode *cur = bs; cur; cur = chain ? block_node_backing(cur) : NULL) {
        json_t *info = qmp_image_info(cur, cur == bs ? filename : cur->filename,
                                      &err);
        if (!info) {
            return img_fail(err);
        }
        json_array_append_new(all, info);
    }
    if (json) {
        img_print_json(stdout, chain ? all : json_array_get(all, 0));
    } else {
        size_t i;
        json_t *info;
        json_array_foreach(all, i, info) {
            if (i) {
                printf("\n");
            }
            print_human(info);
        }
    }
    return IMG_EXIT_OK;
}
