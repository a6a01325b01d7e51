/*
 * Dirty bitmap commands: block-dirty-bitmap-add/remove/clear/enable/disable/
 * merge and x-debug-block-dirty-bitmap-sha256 (specs/qmp-block-jobs.md 5).
 * Bits live in blockdev/bitmap.c; persistence is the format driver's
 * (bitmap_can_store at add, bitmaps_store at close).
 */
#include "config.h"

#include <string.h>

#include "blockdev/bitmap.h"
#include "blockdev/driver.h"
#include "common/error.h"
#include "qmp/commands.h"
#include "qmp/internal.h"

/* Node and bitmap from {node, name}; errors as QEMU words them. */
static BlockDirtyBitmap *find_bitmap(const char *node, const char *name,
                                     bool for_change, GError **errp)
{
    BlockNode *bs = qmp_find_node(node, errp);
    BlockDirtyBitmap *bm;

    if (!bs) {
        return NULL;
    }
    bm = name ? block_dirty_bitmap_find(bs, name) : NULL;
    if (!bm) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Dirty bitmap '%s' not found", name ? name : "");
        return NULL;
    }
    if (for_change && bm->busy) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Bitmap '%s' is currently in use by another operation "
                    "and cannot be used", name);
        return NULL;
    }
    if (for_change && bm->readonly) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Bitmap '%s' is readonly and cannot be modified", name);
        return NULL;
    }
    if (for_change && bm->inconsistent) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Bitmap '%s' is inconsistent and cannot be used; try "
                    "block-dirty-bitmap-remove to delete it", name);
        return NULL;
    }
    return bm;
}

static json_t *cmd_add(json_t *args, GError **errp)
{
    const char *name = qmp_arg_str(args, "name");
    BlockNode *bs = qmp_find_node(qmp_arg_str(args, "node"), errp);
    int64_t gran = qmp_arg_int(args, "granularity",
                               BLOCK_BITMAP_DEFAULT_GRANULARITY);
    bool persistent = qmp_arg_bool(args, "persistent", false);
    BlockDirtyBitmap *bm;
    GError *err = NULL;

    if (!bs) {
        return NULL;
    }
    if (!*name) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Bitmap name cannot be empty");
        return NULL;
    }
    if (strlen(name) > 1023) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Bitmap name is too long");
        return NULL;
    }
    if (gran < 512 || gran > (INT64_C(1) << 31) || (gran & (gran - 1))) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Granularity must be power of 2 and at least 512");
        return NULL;
    }
    if (block_dirty_bitmap_find(bs, name)) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Bitmap already exists: %s", name);
        return NULL;
    }
    if (persistent) {
        if (!bs->drv->bitmap_can_store) {
            g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                        "Cannot store dirty bitmaps in %s format",
                        block_node_format(bs));
            return NULL;
        }
        if (!bs->drv->bitmap_can_store(bs, name, (uint32_t)gran, &err)) {
            g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                        "Cannot store dirty bitmap '%s' in node '%s': %s",
                        name, bs->node_name, err->message);
            g_error_free(err);
            return NULL;
        }
    }
    bm = block_dirty_bitmap_create(bs, name, (uint32_t)gran, errp);
    if (!bm) {
        return NULL;
    }
    bm->persistent = persistent;
    bm->enabled = !qmp_arg_bool(args, "disabled", false);
    return json_object();
}

static json_t *cmd_remove(json_t *args, GError **errp)
{
    const char *node = qmp_arg_str(args, "node");
    BlockDirtyBitmap *bm = find_bitmap(node, qmp_arg_str(args, "name"), false,
                                       errp);

    if (!bm) {
        return NULL;
    }
    if (bm->busy) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Bitmap '%s' is currently in use by another operation "
                    "and cannot be used", bm->name);
        return NULL;
    }
    if (!block_dirty_bitmap_remove(bm->node, bm->name, errp)) {
        return NULL;
    }
    return json_object();
}

static json_t *cmd_clear(json_t *args, GError **errp)
{
    BlockDirtyBitmap *bm = find_bitmap(qmp_arg_str(args, "node"),
                                       qmp_arg_str(args, "name"), true, errp);
    if (!bm) {
        return NULL;
    }
    block_dirty_bitmap_clear(bm);
    return json_object();
}

static json_t *set_enabled(json_t *args, bool on, GError **errp)
{
    BlockDirtyBitmap *bm = find_bitmap(qmp_arg_str(args, "node"),
                                       qmp_arg_str(args, "name"), true, errp);
    if (!bm) {
        return NULL;
    }
    bm->enabled = on;
    return json_object();
}

static json_t *cmd_enable(json_t *args, GError **errp)
{
    return set_enabled(args, true, errp);
}

static json_t *cmd_disable(json_t *args, GError **errp)
{
    return set_enabled(args, false, errp);
}

static json_t *cmd_merge(json_t *args, GError **errp)
{
    const char *node = qmp_arg_str(args, "node");
    BlockDirtyBitmap *dst = find_bitmap(node, qmp_arg_str(args, "target"),
                                        true, errp);
    json_t *srcs = json_object_get(args, "bitmaps"), *v;
    g_autoptr(GPtrArray) from = g_ptr_array_new();
    size_t i;

    if (!dst) {
        return NULL;
    }
    /* Resolve every source first: a merge is all or nothing. */
    json_array_foreach(srcs, i, v) {
        BlockDirtyBitmap *src;
        if (json_is_string(v)) {
            src = find_bitmap(node, json_string_value(v), false, errp);
        } else if (json_is_object(v) &&
                   json_is_string(json_object_get(v, "node")) &&
                   json_is_string(json_object_get(v, "name"))) {
            src = find_bitmap(json_string_value(json_object_get(v, "node")),
                              json_string_value(json_object_get(v, "name")),
                              false, errp);
        } else {
            g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                        "Invalid parameter type for 'bitmaps[%zu]', "
                        "expected: BlockDirtyBitmapOrStr", i);
            return NULL;
        }
        if (!src) {
            return NULL;
        }
        if (src->size != dst->size) {
            g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                        "Bitmaps are of different sizes (destination is %"
                        G_GINT64_FORMAT ", source is %" G_GINT64_FORMAT
                        ") and can't be merged", dst->size, src->size);
            return NULL;
        }
        g_ptr_array_add(from, src);
    }
    for (guint k = 0; k < from->len; k++) {
        if (from->pdata[k] != dst &&
            !block_dirty_bitmap_merge(dst, from->pdata[k], errp)) {
            return NULL;
        }
    }
    return json_object();
}

/* SHA-256 of the bitmap's bits as little-endian 64-bit words. */
static json_t *cmd_sha256(json_t *args, GError **errp)
{
    BlockDirtyBitmap *bm = find_bitmap(qmp_arg_str(args, "node"),
                                       qmp_arg_str(args, "name"), false, errp);
    g_autoptr(GChecksum) sum = NULL;
    uint64_t words;

    if (!bm) {
        return NULL;
    }
    sum = g_checksum_new(G_CHECKSUM_SHA256);
    words = (bm->nb_bits + 63) / 64;
    for (uint64_t w = 0; w < words; w++) {
        uint64_t le = GUINT64_TO_LE(__atomic_load_n(&bm->bits[w],
                                                    __ATOMIC_RELAXED));
        g_checksum_update(sum, (const guchar *)&le, sizeof(le));
    }
    return json_pack("{s:s}", "sha256", g_checksum_get_string(sum));
}

void qmp_register_bitmap_commands(void)
{
    static const QmpCommand cmds[] = {
        { "block-dirty-bitmap-add", "node:str name:str granularity:int? "
          "persistent:bool? disabled:bool?", cmd_add },
        { "block-dirty-bitmap-remove", "node:str name:str", cmd_remove },
        { "block-dirty-bitmap-clear", "node:str name:str", cmd_clear },
        { "block-dirty-bitmap-enable", "node:str name:str", cmd_enable },
        { "block-dirty-bitmap-disable", "node:str name:str", cmd_disable },
        { "block-dirty-bitmap-merge", "node:str target:str bitmaps:array",
          cmd_merge },
        { "x-debug-block-dirty-bitmap-sha256", "node:str name:str",
          cmd_sha256 },
    };
    qmp_register_commands(cmds, G_N_ELEMENTS(cmds));
}
