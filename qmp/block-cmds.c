/*
 * Block graph commands: blockdev-add, blockdev-del, query-named-block-nodes,
 * query-block, block_resize (qapi/block-core.json; summary in
 * specs/qmp-block-jobs.md 4).  Nodes added here are owned by the monitor
 * until blockdev-del; jobs and exports take references of their own.
 */
#include "config.h"

#include <string.h>

#include "blockdev/bitmap.h"
#include "blockdev/block.h"
#include "blockdev/driver.h"
#include "blockdev/job.h"
#include "common/error.h"
#include "common/opts.h"
#include "qmp/commands.h"
#include "qmp/image-info.h"
#include "qmp/internal.h"

static GHashTable *monitor_nodes;  /* node-name -> BlockNode* (a reference) */

typedef struct BlockDevice {
    char *name;                   /* QEMU's BlockBackend name: "device" */
    char *qdev;                   /* the guest device's id or path */
    BlockBackend *blk;            /* not a reference: the owner removes it */
} BlockDevice;

static GPtrArray *devices;        /* BlockDevice*, in order; main thread */

static BlockDevice *find_device(const char *name)
{
    for (guint i = 0; name && devices && i < devices->len; i++) {
        BlockDevice *d = devices->pdata[i];
        if (!strcmp(d->name, name)) {
            return d;
        }
    }
    return NULL;
}

static void device_free(BlockDevice *d)
{
    g_free(d->name);
    g_free(d->qdev);
    g_free(d);
}

void qmp_block_device_add(const char *name, const char *qdev,
                          BlockBackend *blk)
{
    BlockDevice *d = g_new0(BlockDevice, 1);

    g_assert(!find_device(name));
    if (!devices) {
        devices = g_ptr_array_new_with_free_func((GDestroyNotify)device_free);
    }
    d->name = g_strdup(name);
    d->qdev = g_strdup(qdev);
    d->blk = blk;
    g_ptr_array_add(devices, d);
}

void qmp_block_device_remove(const char *name)
{
    BlockDevice *d = find_device(name);

    if (d) {
        g_ptr_array_remove(devices, d);
    }
}

BlockNode *qmp_lookup_node(const char *name)
{
    BlockDevice *d = find_device(name);

    if (d) {
        return blk_node(d->blk);
    }
    return name ? block_node_find(name) : NULL;
}

BlockNode *qmp_find_node(const char *name, GError **errp)
{
    BlockNode *bs = qmp_lookup_node(name);

    if (!bs) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Cannot find device='%s' nor node-name='%s'",
                    name ? name : "", name ? name : "");
    }
    return bs;
}

json_t *qmp_bitmaps_info(BlockNode *bs)
{
    json_t *list;

    g_mutex_lock(&bs->bitmaps_lock);
    if (!bs->bitmaps) {
        g_mutex_unlock(&bs->bitmaps_lock);
        return NULL;
    }
    list = json_array();
    for (GList *l = bs->bitmaps; l; l = l->next) {
        BlockDirtyBitmap *bm = l->data;
        json_t *o = json_object();
        if (bm->name) {
            json_object_set_new(o, "name", json_string(bm->name));
        }
        json_object_set_new(o, "recording", json_boolean(bm->enabled));
        json_object_set_new(o, "persistent", json_boolean(bm->persistent));
        json_object_set_new(o, "busy", json_boolean(bm->busy));
        json_object_set_new(o, "granularity", json_integer(bm->granularity));
        json_object_set_new(o, "count",
                            json_integer(block_dirty_bitmap_count(bm)));
        if (bm->inconsistent) {
            json_object_set_new(o, "inconsistent", json_true());
        }
        json_array_append_new(list, o);
    }
    g_mutex_unlock(&bs->bitmaps_lock);
    return list;
}

/* ImageInfo down the backing chain ("backing-image"), unless flat. */
static json_t *image_info(BlockNode *bs, bool flat, GError **errp)
{
    json_t *info = qmp_image_info(bs, bs->filename ? bs->filename : "", errp);
    BlockNode *backing = block_node_backing(bs);

    if (info && !flat && backing) {
        json_t *b = image_info(backing, false, errp);
        if (!b) {
            json_decref(info);
            return NULL;
        }
        json_object_set_new(info, "backing-image", b);
    }
    return info;
}

/* BlockDeviceInfo, with QEMU 7.2's members (throttling is always off). */
static json_t *node_info(BlockNode *bs, bool flat, GError **errp)
{
    json_t *image = image_info(bs, flat, errp);
    json_t *o, *bitmaps;
    BlockNode *backing = block_node_backing(bs);
    static const char *const zero_fields[] = {
        "iops_rd", "iops_wr", "iops", "bps_wr", "bps", "bps_rd",
        "write_threshold",
    };

    if (!image) {
        return NULL;
    }
    o = json_object();
    bitmaps = qmp_bitmaps_info(bs);
    for (size_t i = 0; i < G_N_ELEMENTS(zero_fields); i++) {
        json_object_set_new(o, zero_fields[i], json_integer(0));
    }
    json_object_set_new(o, "detect_zeroes", json_string("off"));
    json_object_set_new(o, "image", image);
    json_object_set_new(o, "ro", json_boolean(!(bs->open_flags & BLOCK_O_RDWR)));
    json_object_set_new(o, "node-name", json_string(bs->node_name));
    json_object_set_new(o, "backing_file_depth",
                        json_integer(block_node_chain_length(bs)));
    json_object_set_new(o, "drv", json_string(block_node_format(bs)));
    json_object_set_new(o, "encrypted", json_false());
    json_object_set_new(o, "cache", json_pack(
        "{s:b,s:b,s:b}", "no-flush", !!(bs->open_flags & BLOCK_O_NO_FLUSH),
        "direct", !!(bs->open_flags & BLOCK_O_NOCACHE), "writeback", 1));
    json_object_set_new(o, "file", json_string(bs->filename ? bs->filename : ""));
    if (backing && backing->filename) {
        json_object_set_new(o, "backing_file", json_string(backing->filename));
    }
    if (bitmaps) {
        json_object_set_new(o, "dirty-bitmaps", bitmaps);
    }
    return o;
}

static json_t *cmd_query_named_block_nodes(json_t *args, GError **errp)
{
    g_autoptr(GPtrArray) nodes = block_node_list();
    bool flat = qmp_arg_bool(args, "flat", false);
    json_t *list = json_array();

    for (guint i = 0; i < nodes->len; i++) {
        json_t *info = list ? node_info(nodes->pdata[i], flat, errp) : NULL;
        if (info) {
            json_array_append_new(list, info);
        } else if (list) {
            json_decref(g_steal_pointer(&list));   /* QEMU fails it too */
        }
        block_node_unref(nodes->pdata[i]);
    }
    return list;
}

/*
 * BlockInfo of each named backend, QEMU 7.2's members for a virtio-blk
 * disk: not removable, so no tray; io-status because the device reports
 * errors to the guest (ferry never stops a VM on one: always "ok").
 */
static json_t *cmd_query_block(json_t *args, GError **errp)
{
    json_t *list = json_array();

    for (guint i = 0; devices && i < devices->len; i++) {
        BlockDevice *d = devices->pdata[i];
        BlockNode *bs = blk_node(d->blk);
        json_t *o = json_pack("{s:s,s:s,s:s,s:b,s:b,s:s}", "device", d->name,
                              "qdev", d->qdev, "type", "unknown",
                              "removable", 0, "locked", 0,
                              "io-status", "ok");
        json_t *inserted = bs ? node_info(bs, false, errp) : NULL;
        if (bs && !inserted) {
            json_decref(o);
            json_decref(list);
            return NULL;
        }
        if (inserted) {
            json_object_set_new(o, "inserted", inserted);
        }
        json_array_append_new(list, o);
    }
    return list;
}

static json_t *cmd_blockdev_add(json_t *args, GError **errp)
{
    const char *name = ferry_opt_str(args, "node-name");
    uint32_t flags = BLOCK_O_RDWR;
    GError *err = NULL;
    BlockNode *bs;

    if (!json_object_get(args, "driver")) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Parameter 'driver' is missing");
        return NULL;
    }
    if (!json_is_string(json_object_get(args, "driver"))) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Invalid parameter type for 'driver', expected: string");
        return NULL;
    }
    if (!name) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "'node-name' must be specified for the root node");
        return NULL;
    }
    bs = block_node_open_opts(args, flags, 0, BLOCK_PERM_ALL, &err);
    if (!bs) {
        g_propagate_error(errp, err);
        return NULL;
    }
    if (!monitor_nodes) {
        monitor_nodes = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                              NULL);
    }
    g_hash_table_insert(monitor_nodes, g_strdup(bs->node_name), bs);
    return json_object();
}

static json_t *cmd_blockdev_del(json_t *args, GError **errp)
{
    const char *name = qmp_arg_str(args, "node-name");
    BlockNode *bs = block_node_find(name);

    if (!bs) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Failed to find node with node-name='%s'", name);
        return NULL;
    }
    if (!monitor_nodes || !g_hash_table_contains(monitor_nodes, name)) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Node %s is not owned by the monitor", name);
        return NULL;
    }
    block_graph_lock();
    if (bs->refcnt > 1 || bs->users->len) {
        block_graph_unlock();
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC, "Node %s is in use",
                    name);
        return NULL;
    }
    block_graph_unlock();
    g_hash_table_remove(monitor_nodes, name);
    block_node_unref(bs);
    return json_object();
}

static json_t *cmd_block_resize(json_t *args, GError **errp)
{
    const char *device = qmp_arg_str(args, "device");
    const char *node = qmp_arg_str(args, "node-name");
    int64_t size = qmp_arg_int(args, "size", 0);
    BlockUser user = { .what = (char *)"block_resize",
                       .perm = BLOCK_PERM_RESIZE, .shared = BLOCK_PERM_ALL };
    BlockNode *bs;
    bool ok;

    /* QEMU's lookup: a device, or else a node name. */
    bs = device ? (find_device(device) ? blk_node(find_device(device)->blk)
                                       : NULL)
                : node ? block_node_find(node) : NULL;
    if (!bs) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Cannot find device='%s' nor node-name='%s'",
                    device ? device : "", device ? "" : node ? node : "");
        return NULL;
    }
    if (size < 0) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Parameter 'size' expects a >0 size");
        return NULL;
    }
    if (!block_node_add_user(bs, &user, errp)) {
        return NULL;
    }
    ok = block_node_truncate(bs, size, false, BLOCK_PREALLOC_OFF, errp);
    block_node_remove_user(bs, &user);
    return ok ? json_object() : NULL;
}

/*
 * External snapshots (QEMU's external_snapshot_prepare): the overlay gets
 * node as its backing child, then every user of node (backends, exports,
 * a VM's disk, other parents) moves to the overlay, with their requests
 * held meanwhile, so no write lands on node after the switch.  The
 * overlay's image header is not rewritten: blockdev-snapshot expects it
 * made with the right backing name (as libvirt does), and
 * blockdev-snapshot-sync creates it so.
 */
static bool snapshot_install(BlockNode *bs, BlockNode *overlay, GError **errp)
{
    GPtrArray *held;
    bool ok;

    if (overlay == bs) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "The overlay and the node are the same");
        return false;
    }
    if (!(overlay->drv->caps & BLOCK_CAP_BACKING)) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "The overlay does not support backing images");
        return false;
    }
    if (overlay->backing) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "The overlay already has a backing image");
        return false;
    }
    if (overlay->users->len) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "The overlay is already in use");
        return false;
    }
    if (!(overlay->open_flags & BLOCK_O_RDWR)) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "The overlay '%s' is read-only", overlay->node_name);
        return false;
    }
    /*
     * Users first, then the backing edge: while a user of bs still writes
     * it, the edge (a reader that shares no writes) cannot attach.  Their
     * requests are held meanwhile, so none sees the overlay without it.
     */
    held = block_node_quiesce_users(bs, NULL);
    ok = block_node_replace(bs, overlay, NULL, errp);
    if (ok && !block_node_set_backing(overlay, bs, errp)) {
        block_node_replace(overlay, bs, NULL, NULL);
        ok = false;
    }
    block_users_unquiesce(held);
    return ok;
}

static bool snapshot_plain(json_t *args, BlockNode **below,
                           BlockNode **top, GError **errp)
{
    const char *node = qmp_arg_str(args, "node");
    const char *over = qmp_arg_str(args, "overlay");
    BlockNode *bs, *overlay;

    if (!node || !over) {
        /* a transaction's action data skips the command's argument check */
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Parameter '%s' is missing", node ? "overlay" : "node");
        return false;
    }
    bs = qmp_find_node(node, errp);
    if (!bs) {
        return false;
    }
    overlay = qmp_find_node(over, errp);
    if (!overlay || !snapshot_install(bs, overlay, errp)) {
        return false;
    }
    *below = bs;
    *top = overlay;
    block_node_ref(bs);
    block_node_ref(overlay);
    return true;
}

static bool snapshot_sync(json_t *args, BlockNode **below, BlockNode **top,
                          GError **errp)
{
    const char *device = qmp_arg_str(args, "device");
    const char *node = qmp_arg_str(args, "node-name");
    const char *file = qmp_arg_str(args, "snapshot-file");
    const char *fmt = qmp_arg_str(args, "format");
    BlockNode *bs, *overlay;

    if (!device && !node) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Cannot find device='' nor node-name=''");
        return false;
    }
    if (!file) {
        /* a transaction's action data skips the command's argument check */
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Parameter 'snapshot-file' is missing");
        return false;
    }
    bs = qmp_find_node(device ? device : node, errp);
    if (!bs) {
        return false;
    }
    overlay = qmp_open_new_image(file, fmt ? fmt : "qcow2",
                                 qmp_arg_str(args, "mode"),
                                 qmp_arg_str(args, "snapshot-node-name"), bs,
                                 bs, true, errp);
    if (!overlay) {
        return false;
    }
    if (!snapshot_install(bs, overlay, errp)) {
        block_node_unref(overlay);      /* closes it */
        return false;
    }
    *below = bs;
    *top = overlay;                     /* our reference, now the caller's */
    block_node_ref(bs);
    return true;
}

bool qmp_external_snapshot(const char *type, json_t *args, BlockNode **below,
                           BlockNode **top, GError **errp)
{
    return strcmp(type, "blockdev-snapshot-sync")
           ? snapshot_plain(args, below, top, errp)
           : snapshot_sync(args, below, top, errp);
}

static json_t *snapshot_command(const char *type, json_t *args,
                                GError **errp)
{
    BlockNode *below, *top;

    if (!qmp_external_snapshot(type, args, &below, &top, errp)) {
        return NULL;
    }
    block_node_unref(below);
    block_node_unref(top);
    return json_object();
}

static json_t *cmd_blockdev_snapshot(json_t *args, GError **errp)
{
    return snapshot_command("blockdev-snapshot", args, errp);
}

static json_t *cmd_blockdev_snapshot_sync(json_t *args, GError **errp)
{
    return snapshot_command("blockdev-snapshot-sync", args, errp);
}

void qmp_register_block_commands(void)
{
    static const QmpCommand cmds[] = {
        { "blockdev-add", NULL, cmd_blockdev_add },
        { "blockdev-del", "node-name:str", cmd_blockdev_del },
        { "query-named-block-nodes", "flat:bool?", cmd_query_named_block_nodes },
        { "query-block", "", cmd_query_block },
        { "block_resize", "device:str? node-name:str? size:int",
          cmd_block_resize },
        { "blockdev-snapshot", "node:str overlay:str", cmd_blockdev_snapshot },
        { "blockdev-snapshot-sync", "device:str? node-name:str? "
          "snapshot-file:str snapshot-node-name:str? format:str? mode:str?",
          cmd_blockdev_snapshot_sync },
    };
    qmp_register_commands(cmds, G_N_ELEMENTS(cmds));
}

void qmp_block_commands_shutdown(void)
{
    GHashTableIter it;
    gpointer value;

    block_job_cancel_all_sync();
    if (!monitor_nodes) {
        return;
    }
    g_hash_table_iter_init(&it, monitor_nodes);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        block_node_unref(value);
    }
    g_hash_table_destroy(monitor_nodes);
    monitor_nodes = NULL;
}
