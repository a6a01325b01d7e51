/*
 * ferry img snapshot: list, create, apply and delete a format's internal
 * snapshots through drv->snapshot_*, with qemu-img snapshot's flags,
 * messages and table (img_print_snapshot_table in info.c).
 */
#include "config.h"

#include <getopt.h>
#include <string.h>

#include "common/error.h"
#include "common/opts.h"
#include "tools/img/img.h"
#include "tools/img/info.h"

typedef enum {
    SNAP_NONE,
    SNAP_LIST,
    SNAP_CREATE,
    SNAP_APPLY,
    SNAP_DELETE,
} SnapAction;

/*
 * The op is missing: a format with snapshots in QEMU whose ferry driver
 * lacks them yet gets its own message; others answer as qemu-img does.
 */
static bool has_snapshots_in_qemu(BlockNode *bs)
{
    return (bs->drv->caps & BLOCK_CAP_SNAPSHOTS) ||
           img_qemu_format_has(block_node_format(bs), IMG_QEMU_SNAPSHOTS);
}

static int unsupported(BlockNode *bs, const char *verb, const char *name)
{
    if (has_snapshots_in_qemu(bs) || bs->drv->snapshot_list) {
        img_error("Could not %s snapshot '%s': format '%s' does not support "
                  "snapshots yet", verb, name, block_node_format(bs));
    } else {
        img_error("Could not %s snapshot '%s': format '%s' does not support "
                  "snapshots", verb, name, block_node_format(bs));
    }
    return IMG_EXIT_ERROR;
}

static int list_snapshots(BlockNode *bs)
{
    BlockSnapshotInfo *list = NULL;
    g_autoptr(json_t) arr = json_array();
    GString *out;
    GError *err = NULL;
    int n;

    if (!bs->drv->snapshot_list) {
        if (has_snapshots_in_qemu(bs)) {
            img_error("format '%s' does not support snapshots yet",
                      block_node_format(bs));
            return IMG_EXIT_ERROR;
        }
        return IMG_EXIT_OK;     /* qemu-img lists nothing for such formats */
    }
    n = bs->drv->snapshot_list(bs, &list, &err);
    if (n < 0) {
        return img_fail(err);
    }
    for (int i = 0; i < n; i++) {
        json_array_append_new(arr, qmp_snapshot_info(&list[i]));
        block_snapshot_info_clear(&list[i]);
    }
    g_free(list);
    if (n == 0) {
        return IMG_EXIT_OK;
    }
    out = g_string_new("Snapshot list:\n");
    img_print_snapshot_table(out, arr);
    fputs(out->str, stdout);
    g_string_free(out, TRUE);
    return IMG_EXIT_OK;
}

/* qemu-img 7.2 deletes by name only (an ID is not found), as here. */
static bool find_snapshot(BlockNode *bs, const char *name,
                          BlockSnapshotInfo *found, GError **errp)
{
    BlockSnapshotInfo *list = NULL;
    int n = bs->drv->snapshot_list(bs, &list, errp);
    int hit = -1;

    if (n < 0) {
        return false;
    }
    for (int i = 0; i < n && hit < 0; i++) {
        if (list[i].name && !strcmp(list[i].name, name)) {
            hit = i;
        }
    }
    for (int i = 0; i < n; i++) {
        if (i == hit) {
            *found = list[i];
        } else {
            block_snapshot_info_clear(&list[i]);
        }
    }
    g_free(list);
    if (hit < 0) {
        ferry_error_set(errp, FERRY_ERROR_NOT_FOUND, "snapshot not found");
        return false;
    }
    return true;
}

static int create_snapshot(BlockNode *bs, const char *name)
{
    BlockSnapshotInfo sn = { 0 };
    GError *err = NULL;
    gint64 now = g_get_real_time();
    int64_t len = block_node_getlength(bs);
    bool ok;

    if (!bs->drv->snapshot_create) {
        return unsupported(bs, "create", name);
    }
    sn.name = g_strdup(name);
    sn.date_sec = now / G_USEC_PER_SEC;
    sn.date_nsec = (now % G_USEC_PER_SEC) * 1000;
    sn.icount = 0;          /* as qemu-img records it: no VM ran */
    sn.disk_size = len > 0 ? len : 0;
    block_node_drain_begin(bs);
    ok = bs->drv->snapshot_create(bs, &sn, &err);
    block_node_drain_end(bs);
    block_snapshot_info_clear(&sn);
    if (!ok) {
        img_error("Could not create snapshot '%s': %s", name, err->message);
        g_error_free(err);
        return IMG_EXIT_ERROR;
    }
    return IMG_EXIT_OK;
}

static int apply_snapshot(BlockNode *bs, const char *name)
{
    GError *err = NULL;
    bool ok;

    if (!bs->drv->snapshot_goto) {
        return unsupported(bs, "apply", name);
    }
    block_node_drain_begin(bs);
    ok = bs->drv->snapshot_goto(bs, name, &err);
    block_node_drain_end(bs);
    if (!ok) {
        img_error("Could not apply snapshot '%s': %s", name, err->message);
        g_error_free(err);
        return IMG_EXIT_ERROR;
    }
    return IMG_EXIT_OK;
}

static int delete_snapshot(BlockNode *bs, const char *name)
{
    BlockSnapshotInfo sn = { 0 };
    GError *err = NULL;
    bool ok;

    if (!bs->drv->snapshot_delete || !bs->drv->snapshot_list) {
        return unsupported(bs, "delete", name);
    }
    if (!find_snapshot(bs, name, &sn, &err)) {
        img_error("Could not delete snapshot '%s': %s", name, err->message);
        g_error_free(err);
        return IMG_EXIT_ERROR;
    }
    block_node_drain_begin(bs);
    ok = bs->drv->snapshot_delete(bs, sn.id, sn.name, &err);
    block_node_drain_end(bs);
    block_snapshot_info_clear(&sn);
    if (!ok) {
        img_error("Could not delete snapshot '%s': %s", name, err->message);
        g_error_free(err);
        return IMG_EXIT_ERROR;
    }
    return IMG_EXIT_OK;
}

int img_snapshot(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, IMG_OPT_OBJECT },
        { "image-opts", no_argument, NULL, IMG_OPT_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL, *name = NULL, *filename;
    bool image_opts = false, force_share = false;
    g_autoptr(BlockBackend) blk = NULL;
    SnapAction action = SNAP_NONE;
    GError *err = NULL;
    uint32_t flags;
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "la:c:d:f:hqU", longopts, NULL)) != -1) {
        SnapAction a = SNAP_NONE;
        switch (c) {
        case 'l': a = SNAP_LIST; break;
        case 'a': a = SNAP_APPLY; break;
        case 'c': a = SNAP_CREATE; break;
        case 'd': a = SNAP_DELETE; break;
        case 'f': fmt = optarg; break;
        case 'q': break;        /* nothing to be quiet about */
        case 'U': force_share = true; break;
        case IMG_OPT_IMAGE_OPTS: image_opts = true; break;
        case IMG_OPT_OBJECT:
            return img_usage_error("snapshot", "--object is not supported yet");
        default:
            return img_usage_error("snapshot", "invalid option");
        }
        if (a != SNAP_NONE) {
            if (action != SNAP_NONE) {
                return img_usage_error("snapshot", "Cannot mix '-l', '-a', "
                                       "'-c', '-d'");
            }
            action = a;
            name = optarg;
        }
    }
    if (optind != argc - 1) {
        return img_usage_error("snapshot", "expecting one image file name");
    }
    filename = argv[optind];
    if (action == SNAP_NONE) {
        return img_usage_error("snapshot", "expecting one of -l, -a, -c, -d");
    }
    flags = action == SNAP_LIST ? 0 : BLOCK_O_RDWR;
    if (force_share) {
        if (action != SNAP_LIST) {
            img_error("--force-share (-U) is only allowed with -l: changing "
                      "snapshots needs the image to itself");
            return IMG_EXIT_ERROR;
        }
        flags |= BLOCK_O_FORCE_SHARE;
    }
    blk = img_open(filename, fmt, image_opts, flags, NULL, &err);
    if (!blk) {
        return img_fail(err);
    }
    switch (action) {
    case SNAP_LIST:
        return list_snapshots(blk_node(blk));
    case SNAP_CREATE:
        return create_snapshot(blk_node(blk), name);
    case SNAP_APPLY:
        return apply_snapshot(blk_node(blk), name);
    case SNAP_DELETE:
        return delete_snapshot(blk_node(blk), name);
    default:
        return IMG_EXIT_ERROR;
    }
}
