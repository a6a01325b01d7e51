/*
 * ferry img bitmap: add, remove, clear, enable, disable and merge the
 * persistent dirty bitmaps of an image, in the order given on the command
 * line, as qemu-img bitmap does.  The bitmaps live on the node
 * (blockdev/bitmap.h); the format driver loaded them at open and stores
 * them through its bitmap ops (bitmaps_store) before we close.
 */
#include "config.h"

#include <getopt.h>
#include <string.h>

#include "blockdev/bitmap.h"
#include "common/error.h"
#include "common/units.h"
#include "tools/img/img.h"

typedef enum {
    BITMAP_ADD,
    BITMAP_REMOVE,
    BITMAP_CLEAR,
    BITMAP_ENABLE,
    BITMAP_DISABLE,
    BITMAP_MERGE,
} BitmapOp;

typedef struct BitmapAction {
    BitmapOp op;
    const char *src;            /* --merge: the source bitmap's name */
} BitmapAction;

static const char *const op_names[] = {
    [BITMAP_ADD] = "add", [BITMAP_REMOVE] = "remove",
    [BITMAP_CLEAR] = "clear", [BITMAP_ENABLE] = "enable",
    [BITMAP_DISABLE] = "disable", [BITMAP_MERGE] = "merge",
};

/* QEMU's default: the cluster size, kept between 4 KiB and 64 KiB. */
static uint32_t default_granularity(BlockNode *bs)
{
    BlockImageInfo info = { 0 };
    int64_t cs = 0;

    if (bs->drv->get_info && bs->drv->get_info(bs, &info, NULL)) {
        cs = info.cluster_size;
        json_decref(info.format_specific);
    }
    if (cs <= 0) {
        return BLOCK_BITMAP_DEFAULT_GRANULARITY;
    }
    return (uint32_t)MIN(MAX(cs, 4096), 65536);
}

/* A bitmap we may change: present, not in use, consistent. */
static BlockDirtyBitmap *usable(BlockNode *bs, const char *name, GError **errp)
{
    BlockDirtyBitmap *bm = block_dirty_bitmap_find(bs, name);

    if (!bm) {
        ferry_error_set(errp, FERRY_ERROR_NOT_FOUND,
                        "Dirty bitmap '%s' not found", name);
        return NULL;
    }
    if (bm->busy) {
        ferry_error_set(errp, FERRY_ERROR_LOCKED,
                        "Bitmap '%s' is currently in use by another operation "
                        "and cannot be used", name);
        return NULL;
    }
    if (bm->inconsistent) {
        ferry_error_set(errp, FERRY_ERROR_CORRUPT,
                        "Bitmap '%s' is inconsistent and cannot be used: "
                        "remove it with --remove", name);
        return NULL;
    }
    return bm;
}

static bool do_add(BlockNode *bs, const char *name, uint64_t granularity,
                   GError **errp)
{
    uint32_t g = granularity ? (uint32_t)granularity : default_granularity(bs);
    BlockDirtyBitmap *bm;

    if (block_dirty_bitmap_find(bs, name)) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "Bitmap already exists: %s", name);
        return false;
    }
    if (granularity > UINT32_MAX) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "granularity %" G_GUINT64_FORMAT " is too large",
                        granularity);
        return false;
    }
    if (bs->drv->bitmap_can_store &&
        !bs->drv->bitmap_can_store(bs, name, g, errp)) {
        return false;
    }
    bm = block_dirty_bitmap_create(bs, name, g, errp);
    if (!bm) {
        return false;
    }
    bm->persistent = true;
    return true;
}

static bool do_merge(BlockNode *bs, const char *name, BlockNode *src_bs,
                     const char *src_name, GError **errp)
{
    BlockDirtyBitmap *dst = usable(bs, name, errp), *src;

    if (!dst) {
        return false;
    }
    src = block_dirty_bitmap_find(src_bs, src_name);
    if (!src) {
        ferry_error_set(errp, FERRY_ERROR_NOT_FOUND,
                        "Dirty bitmap '%s' not found", src_name);
        return false;
    }
    if (src->inconsistent) {
        ferry_error_set(errp, FERRY_ERROR_CORRUPT,
                        "Bitmap '%s' is inconsistent and cannot be used",
                        src_name);
        return false;
    }
    if (src->size != dst->size) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "Bitmaps are incompatible and can't be merged: '%s' "
                        "covers %" G_GINT64_FORMAT " bytes, '%s' %"
                        G_GINT64_FORMAT, src_name, src->size, name, dst->size);
        return false;
    }
    return block_dirty_bitmap_merge(dst, src, errp);
}

static bool do_action(BlockNode *bs, const BitmapAction *act,
                      const char *name, uint64_t granularity,
                      BlockNode *src_bs, GError **errp)
{
    BlockDirtyBitmap *bm;

    switch (act->op) {
    case BITMAP_ADD:
        return do_add(bs, name, granularity, errp);
    case BITMAP_REMOVE:
        if (!block_dirty_bitmap_find(bs, name)) {
            ferry_error_set(errp, FERRY_ERROR_NOT_FOUND,
                            "Dirty bitmap '%s' not found", name);
            return false;
        }
        return block_dirty_bitmap_remove(bs, name, errp);
    case BITMAP_CLEAR:
        if (!(bm = usable(bs, name, errp))) {
            return false;
        }
        block_dirty_bitmap_clear(bm);
        return true;
    case BITMAP_ENABLE:
    case BITMAP_DISABLE:
        if (!(bm = usable(bs, name, errp))) {
            return false;
        }
        bm->enabled = act->op == BITMAP_ENABLE;
        return true;
    case BITMAP_MERGE:
        return do_merge(bs, name, src_bs, act->src, errp);
    }
    return false;
}

/* Formats with bitmaps in QEMU whose ferry driver cannot store them yet. */
static bool can_persist(BlockNode *bs)
{
    if (bs->drv->bitmaps_store) {
        return true;
    }
    if ((bs->drv->caps & BLOCK_CAP_BITMAPS) ||
        img_qemu_format_has(block_node_format(bs), IMG_QEMU_BITMAPS)) {
        img_error("format '%s' does not support persistent bitmaps yet",
                  block_node_format(bs));
    } else {
        img_error("Can't store persistent bitmaps in a '%s' image: the "
                  "format has no bitmaps", block_node_format(bs));
    }
    return false;
}

static int run_actions(BlockNode *bs, GArray *actions, const char *name,
                       uint64_t granularity, BlockNode *src_bs)
{
    GError *err = NULL;
    bool ok;

    for (guint i = 0; i < actions->len; i++) {
        const BitmapAction *act = &g_array_index(actions, BitmapAction, i);
        if (!do_action(bs, act, name, granularity, src_bs, &err)) {
            img_error("Operation %s on bitmap %s failed: %s",
                      op_names[act->op], name, err->message);
            g_error_free(err);
            return IMG_EXIT_ERROR;
        }
    }
    block_node_drain_begin(bs);
    ok = bs->drv->bitmaps_store(bs, &err);
    block_node_drain_end(bs);
    if (!ok) {
        g_prefix_error(&err, "cannot store the bitmaps of '%s': ",
                       bs->filename);
        return img_fail(err);
    }
    return IMG_EXIT_OK;
}

int img_bitmap(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, IMG_OPT_OBJECT },
        { "image-opts", no_argument, NULL, IMG_OPT_IMAGE_OPTS },
        { "add", no_argument, NULL, IMG_OPT_ADD },
        { "remove", no_argument, NULL, IMG_OPT_REMOVE },
        { "clear", no_argument, NULL, IMG_OPT_CLEAR },
        { "enable", no_argument, NULL, IMG_OPT_ENABLE },
        { "disable", no_argument, NULL, IMG_OPT_DISABLE },
        { "merge", required_argument, NULL, IMG_OPT_MERGE },
        { "granularity", required_argument, NULL, 'g' },
        { "source-file", required_argument, NULL, 'b' },
        { "source-format", required_argument, NULL, 'F' },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL, *src_file = NULL, *src_fmt = NULL;
    const char *filename, *name;
    bool image_opts = false, add = false, merge = false;
    g_autoptr(GArray) actions = g_array_new(FALSE, TRUE, sizeof(BitmapAction));
    g_autoptr(BlockBackend) blk = NULL;
    g_autoptr(BlockBackend) src = NULL;
    uint64_t granularity = 0;
    GError *err = NULL;
    BlockNode *bs;
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "b:f:F:g:h", longopts, NULL)) != -1) {
        BitmapAction act = { 0 };
        switch (c) {
        case 'b': src_file = optarg; continue;
        case 'f': fmt = optarg; continue;
        case 'F': src_fmt = optarg; continue;
        case 'g':
            if (!ferry_parse_size(optarg, "granularity", &granularity, &err)) {
                return img_fail(err);
            }
            continue;
        case IMG_OPT_IMAGE_OPTS: image_opts = true; continue;
        case IMG_OPT_ADD: act.op = BITMAP_ADD; add = true; break;
        case IMG_OPT_REMOVE: act.op = BITMAP_REMOVE; break;
        case IMG_OPT_CLEAR: act.op = BITMAP_CLEAR; break;
        case IMG_OPT_ENABLE: act.op = BITMAP_ENABLE; break;
        case IMG_OPT_DISABLE: act.op = BITMAP_DISABLE; break;
        case IMG_OPT_MERGE:
            act.op = BITMAP_MERGE;
            act.src = optarg;
            merge = true;
            break;
        case IMG_OPT_OBJECT:
            return img_usage_error("bitmap", "--object is not supported yet");
        default:
            return img_usage_error("bitmap", "invalid option");
        }
        g_array_append_val(actions, act);
    }
    if (actions->len == 0) {
        img_error("Need at least one of --add, --remove, --clear, --enable, "
                  "--disable, or --merge");
        return IMG_EXIT_ERROR;
    }
    if (granularity && !add) {
        img_error("granularity only supported with --add");
        return IMG_EXIT_ERROR;
    }
    if (src_fmt && !src_file) {
        img_error("-F only supported with -b");
        return IMG_EXIT_ERROR;
    }
    if (src_file && !merge) {
        img_error("Merge bitmap source file only supported with --merge");
        return IMG_EXIT_ERROR;
    }
    if (optind != argc - 2) {
        img_error("Expecting filename and bitmap name");
        return IMG_EXIT_ERROR;
    }
    filename = argv[optind];
    name = argv[optind + 1];
    /* Bitmaps belong to this image alone: no backing chain. */
    blk = img_open(filename, fmt, image_opts,
                   BLOCK_O_RDWR | BLOCK_O_NO_BACKING, NULL, &err);
    if (!blk) {
        return img_fail(err);
    }
    bs = blk_node(blk);
    if (!can_persist(bs)) {
        return IMG_EXIT_ERROR;
    }
    if (src_file) {
        src = img_open(src_file, src_fmt, false, BLOCK_O_NO_BACKING, NULL,
                       &err);
        if (!src) {
            return img_fail(err);
        }
    }
    return run_actions(bs, actions, name, granularity,
                       src ? blk_node(src) : bs);
}
