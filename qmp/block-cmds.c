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
#include "qmp/internal.h"

static GHashTable *monitor_nodes;  /* node-name -> BlockNode* (a reference) */

BlockNode *qmp_find_node(const char *name, GError **errp)
{
    BlockNode *bs = name ? block_node_find(name) : NULL;

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

json_t *qmp_image_info(BlockNode *bs, bool flat)
{
    json_t *info = json_object();
    int64_t size = block_node_getlength(bs);
    int64_t actual = block_node_allocated_size(bs);
    BlockImageInfo di = { 0 };
    BlockNode *backing = block_node_backing(bs);
    GError *err = NULL;

    json_object_set_new(info, "virtual-size", json_integer(MAX(size, 0)));
    json_object_set_new(info, "filename",
                        json_string(bs->filename ? bs->filename : ""));
    if (bs->drv->get_info && bs->drv->get_info(bs, &di, &err) &&
        di.cluster_size > 0) {
        json_object_set_new(info, "cluster-size", json_integer(di.cluster_size));
    }
    g_clear_error(&err);
    json_object_set_new(info, "format", json_string(block_node_format(bs)));
    if (actual >= 0) {
        json_object_set_new(info, "actual-size", json_integer(actual));
    }
    if (di.encrypted) {
        json_object_set_new(info, "encrypted", json_true());
    }
    if (bs->backing_file) {
        g_autofree char *full = block_backing_path(bs->filename,
                                                   bs->backing_file);
        json_object_set_new(info, "backing-filename",
                            json_string(bs->backing_file));
        json_object_set_new(info, "full-backing-filename",
                            json_string(backing && backing->filename
                                        ? backing->filename : full));
        if (bs->backing_format) {
            json_object_set_new(info, "backing-filename-format",
                                json_string(bs->backing_format));
        }
    }
    if (di.format_specific) {
        json_object_set_new(info, "format-specific", di.format_specific);
    }
    json_object_set_new(info, "dirty-flag", json_boolean(di.dirty_flag));
    if (!flat && backing) {
        json_object_set_new(info, "backing-image",
                            qmp_image_info(backing, false));
    }
    return info;
}

/* BlockDeviceInfo, with QEMU 7.2's members (throttling is always off). */
static json_t *node_info(BlockNode *bs, bool flat)
{
    json_t *o = json_object();
    BlockNode *backing = block_node_backing(bs);
    json_t *bitmaps = qmp_bitmaps_info(bs);
    static const char *const zero_fields[] = {
        "iops_rd", "iops_wr", "iops", "bps_wr", "bps", "bps_rd",
        "write_threshold",
    };

    for (size_t i = 0; i < G_N_ELEMENTS(zero_fields); i++) {
        json_object_set_new(o, zero_fields[i], json_integer(0));
    }
    json_object_set_new(o, "detect_zeroes", json_string("off"));
    json_object_set_new(o, "image", qmp_image_info(bs, flat));
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
        json_array_append_new(list, node_info(nodes->pdata[i], flat));
        block_node_unref(nodes->pdata[i]);
    }
    return list;
}

/* ferry's storage daemon has no named block backends (devices). */
static json_t *cmd_query_block(json_t *args, GError **errp)
{
    return json_array();
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

    /* QEMU's lookup: a device (none here) or else a node name. */
    bs = device ? NULL : node ? block_node_find(node) : NULL;
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

void qmp_register_block_commands(void)
{
    static const QmpCommand cmds[] = {
        { "blockdev-add", NULL, cmd_blockdev_add },
        { "blockdev-del", "node-name:str", cmd_blockdev_del },
        { "query-named-block-nodes", "flat:bool?", cmd_query_named_block_nodes },
        { "query-block", "", cmd_query_block },
        { "block_resize", "device:str? node-name:str? size:int",
          cmd_block_resize },
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
