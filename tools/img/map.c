/*
 * ferry img map: where an image's data lives, from block status through the
 * backing chain, in qemu-img map's two forms: --output=json (one line per
 * extent: start, length, depth, present, zero, data, offset; byte for byte
 * as qemu-img prints it) and the human table of data extents.  Adjacent
 * extents with the same status and contiguous host offsets are merged.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <string.h>

#include "common/error.h"
#include "common/units.h"
#include "tools/img/img.h"

typedef struct MapEntry {
    int64_t start;          /* guest bytes */
    int64_t length;         /* bytes */
    int64_t offset;         /* host bytes in *filename; valid if has_offset */
    int depth;              /* layer that answered; 0 = the image itself */
    bool present;           /* some layer allocated it */
    bool zero;
    bool data;
    bool has_offset;
    const char *filename;   /* borrowed from the node; NULL without offset */
} MapEntry;

static int get_entry(BlockNode *bs, int64_t offset, int64_t bytes,
                     MapEntry *e)
{
    BlockNode *file = NULL;
    int64_t pnum = 0, map = 0;
    int depth = 0;
    int ret;

    ret = block_node_block_status_above(bs, NULL, offset, bytes, &pnum, &map,
                                        &file, &depth);
    if (ret < 0) {
        return ret;
    }
    if (pnum <= 0) {
        return -EIO;    /* no progress: the node's length changed under us */
    }
    *e = (MapEntry){
        .start = offset,
        .length = pnum,
        .depth = depth,
        .present = ret & BLOCK_STATUS_ALLOCATED,
        .zero = ret & BLOCK_STATUS_ZERO,
        .data = ret & BLOCK_STATUS_DATA,
        .has_offset = ret & BLOCK_STATUS_OFFSET_VALID,
        .offset = map,
    };
    if (e->has_offset && file) {
        e->filename = file->filename ? file->filename : "";
    }
    return 0;
}

static bool mergeable(const MapEntry *a, const MapEntry *b)
{
    if (a->length == 0 || a->zero != b->zero || a->data != b->data ||
        a->depth != b->depth || a->present != b->present ||
        !a->filename != !b->filename || a->has_offset != b->has_offset) {
        return false;
    }
    if (a->filename && strcmp(a->filename, b->filename)) {
        return false;
    }
    return !a->has_offset || a->offset + a->length == b->offset;
}

/*
 * Print one extent.  The human table shows data extents only, and treats
 * every non-data extent alike, so it folds `next` into "zero" to merge more.
 */
static int print_entry(bool json, const MapEntry *e, MapEntry *next)
{
    if (!json) {
        if (e->data && !e->has_offset) {
            img_error("File contains external, encrypted or compressed "
                      "clusters.");
            return -1;
        }
        if (e->data && !e->zero) {
            printf("%#-16" G_GINT64_MODIFIER "x%#-16" G_GINT64_MODIFIER "x%#-16"
                   G_GINT64_MODIFIER "x%s\n", e->start, e->length,
                   e->has_offset ? e->offset : 0,
                   e->filename ? e->filename : "");
        }
        if (next && (!next->data || next->zero)) {
            next->data = false;
            next->zero = true;
        }
        return 0;
    }
    printf("{ \"start\": %" G_GINT64_FORMAT ", \"length\": %" G_GINT64_FORMAT
           ", \"depth\": %d, \"present\": %s, \"zero\": %s, \"data\": %s",
           e->start, e->length, e->depth, e->present ? "true" : "false",
           e->zero ? "true" : "false", e->data ? "true" : "false");
    if (e->has_offset) {
        printf(", \"offset\": %" G_GINT64_FORMAT, e->offset);
    }
    putchar('}');
    if (next) {
        puts(",");
    }
    return 0;
}

static int do_map(BlockNode *bs, const char *filename, int64_t start,
                  int64_t end, bool json)
{
    MapEntry cur = { .start = start }, next;

    if (json) {
        putchar('[');
    } else {
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
    }
    while (cur.start + cur.length < end) {
        int64_t offset = cur.start + cur.length;
        int ret = get_entry(bs, offset, end - offset, &next);

        if (ret < 0) {
            fflush(stdout);
            img_error("could not read the metadata of '%s' at offset %"
                      G_GINT64_FORMAT ": %s", filename, offset,
                      g_strerror(-ret));
            return IMG_EXIT_ERROR;
        }
        if (mergeable(&cur, &next)) {
            cur.length += next.length;
            continue;
        }
        if (cur.length > 0 && print_entry(json, &cur, &next) < 0) {
            return IMG_EXIT_ERROR;
        }
        cur = next;
    }
    if (print_entry(json, &cur, NULL) < 0) {
        return IMG_EXIT_ERROR;
    }
    if (json) {
        puts("]");
    }
    return IMG_EXIT_OK;
}

int img_map(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "format", required_argument, NULL, 'f' },
        { "output", required_argument, NULL, IMG_OPT_OUTPUT },
        { "object", required_argument, NULL, IMG_OPT_OBJECT },
        { "image-opts", no_argument, NULL, IMG_OPT_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { "start-offset", required_argument, NULL, IMG_OPT_START_OFFSET },
        { "max-length", required_argument, NULL, IMG_OPT_MAX_LENGTH },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL, *filename;
    bool json = false, image_opts = false, force_share = false;
    g_autoptr(BlockBackend) blk = NULL;
    uint64_t start = 0, max_length = 0;
    bool has_max_length = false;
    GError *err = NULL;
    int64_t end;
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
        case IMG_OPT_IMAGE_OPTS: image_opts = true; break;
        case IMG_OPT_START_OFFSET:
            if (!ferry_parse_size(optarg, "start offset", &start, &err)) {
                return img_fail(err);
            }
            break;
        case IMG_OPT_MAX_LENGTH:
            if (!ferry_parse_size(optarg, "max length", &max_length, &err)) {
                return img_fail(err);
            }
            has_max_length = true;
            break;
        case IMG_OPT_OBJECT:
            return img_usage_error("map", "--object is not supported yet");
        default:
            return img_usage_error("map", "invalid option");
        }
    }
    if (optind != argc - 1) {
        return img_usage_error("map", "expecting one image file name");
    }
    filename = argv[optind];
    blk = img_open(filename, fmt, image_opts,
                   force_share ? BLOCK_O_FORCE_SHARE : 0, NULL, &err);
    if (!blk) {
        return img_fail(err);
    }
    end = blk_getlength(blk);
    if (end < 0) {
        img_error("cannot get the size of '%s': %s", filename,
                  g_strerror((int)-end));
        return IMG_EXIT_ERROR;
    }
    if (has_max_length && max_length < (uint64_t)INT64_MAX - start) {
        end = MIN(end, (int64_t)(start + max_length));
    }
    return do_map(blk_node(blk), filename, (int64_t)start, end, json);
}
