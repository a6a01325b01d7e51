/*
 * transaction: several actions, all or nothing (qapi/transaction.json;
 * specs/qmp-block-jobs.md 3).  Actions: abort, the block-dirty-bitmap-*
 * commands, blockdev-backup and drive-backup, as backup tools send them (a
 * new bitmap and a full backup at one point in time), and the external
 * snapshots blockdev-snapshot and blockdev-snapshot-sync (several disks
 * at one point in time, as libvirt takes them).  The users of every
 * node named are held while the actions run, so no write falls between
 * them; a failed action undoes the ones before it: bitmaps get their bits
 * and flags back, started backups are cancelled.
 */
#include "config.h"

#include <string.h>

#include "blockdev/bitmap.h"
#include "blockdev/job.h"
#include "qmp/commands.h"
#include "qmp/internal.h"

/* How to undo one action. */
typedef struct Undo {
    char *node;
    char *bitmap;                /* bitmap actions: the bitmap changed */
    bool existed;
    uint32_t granularity;
    bool enabled, persistent;
    uint64_t *bits;              /* copy, nb_words long */
    uint64_t nb_words;
    char *job_id;                /* blockdev-backup: the job started */
    BlockNode *overlay;          /* snapshots: the new top (a reference) */
    BlockNode *below;            /* and the node it went on top of */
} Undo;

static void undo_free(Undo *u)
{
    g_free(u->node);
    g_free(u->bitmap);
    g_free(u->bits);
    g_free(u->job_id);
    if (u->overlay) {
        block_node_unref(u->overlay);
        block_node_unref(u->below);
    }
    g_free(u);
}

static Undo *save_bitmap(const char *node, const char *name)
{
    Undo *u = g_new0(Undo, 1);
    BlockNode *bs = qmp_lookup_node(node);
    BlockDirtyBitmap *bm = bs && name ? block_dirty_bitmap_find(bs, name)
                                      : NULL;

    u->node = g_strdup(node);
    u->bitmap = g_strdup(name);
    if (bm) {
        u->existed = true;
        u->granularity = bm->granularity;
        u->enabled = bm->enabled;
        u->persistent = bm->persistent;
        u->nb_words = (bm->nb_bits + 63) / 64;
        u->bits = g_memdup2(bm->bits, u->nb_words * 8);
    }
    return u;
}

static void undo(Undo *u)
{
    BlockNode *bs = qmp_lookup_node(u->node);
    BlockDirtyBitmap *bm;

    if (u->overlay) {
        /* users back onto the old top, then the overlay lets go of it */
        GPtrArray *held = block_node_quiesce_users(u->overlay, NULL);
        block_node_set_backing(u->overlay, NULL, NULL);
        if (!block_node_replace(u->overlay, u->below, NULL, NULL)) {
            block_node_set_backing(u->overlay, u->below, NULL);
        }
        block_users_unquiesce(held);
        return;
    }
    if (u->job_id) {
        BlockJob *job = block_job_find(u->job_id);
        if (job) {
            block_job_user_cancel(job, true, NULL);
        }
        return;
    }
    if (!bs || !u->bitmap) {
        return;
    }
    bm = block_dirty_bitmap_find(bs, u->bitmap);
    if (!u->existed) {
        if (bm) {
            block_dirty_bitmap_release(bm);
        }
        return;
    }
    if (!bm) {
        bm = block_dirty_bitmap_create(bs, u->bitmap, u->granularity, NULL);
        if (!bm) {
            return;
        }
    }
    bm->enabled = u->enabled;
    bm->persistent = u->persistent;
    memcpy(bm->bits, u->bits, MIN(u->nb_words, (bm->nb_bits + 63) / 64) * 8);
}

/* The node an action works on (for holding its users), or NULL. */
static const char *action_node(const char *type, json_t *data)
{
    const char *dev = json_string_value(json_object_get(data, "device"));

    if (!strcmp(type, "blockdev-backup") || !strcmp(type, "drive-backup")) {
        return dev;
    }
    if (!strcmp(type, "blockdev-snapshot-sync")) {
        return dev ? dev : json_string_value(json_object_get(data,
                                                             "node-name"));
    }
    return json_string_value(json_object_get(data, "node"));
}

static bool is_bitmap_action(const char *type)
{
    return g_str_has_prefix(type, "block-dirty-bitmap-") &&
           strcmp(type, "block-dirty-bitmap-sha256");
}

static bool is_snapshot_action(const char *type)
{
    return !strcmp(type, "blockdev-snapshot") ||
           !strcmp(type, "blockdev-snapshot-sync");
}

static json_t *cmd_transaction(json_t *args, GError **errp)
{
    json_t *actions = json_object_get(args, "actions"), *a;
    g_autoptr(GPtrArray) held = g_ptr_array_new();
    g_autoptr(GPtrArray) undos = g_ptr_array_new_with_free_func(
        (GDestroyNotify)undo_free);
    size_t i;
    bool ok = true;

    /* Check every action's shape first; nothing runs on a malformed one. */
    json_array_foreach(actions, i, a) {
        const char *type = json_string_value(json_object_get(a, "type"));
        if (!json_is_object(a) || !type) {
            g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                        "Invalid parameter type for 'actions[%zu]', "
                        "expected: object with 'type'", i);
            return NULL;
        }
        if (strcmp(type, "abort") && strcmp(type, "blockdev-backup") &&
            strcmp(type, "drive-backup") && !is_snapshot_action(type) &&
            !is_bitmap_action(type)) {
            g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                        "Action '%s' is not supported in a transaction by "
                        "ferry", type);
            return NULL;
        }
    }
    json_array_foreach(actions, i, a) {
        const char *node = action_node(json_string_value(
            json_object_get(a, "type")), json_object_get(a, "data"));
        BlockNode *bs = node ? qmp_lookup_node(node) : NULL;
        if (bs) {
            g_ptr_array_add(held, block_node_quiesce_users(bs, NULL));
        }
    }
    json_array_foreach(actions, i, a) {
        const char *type = json_string_value(json_object_get(a, "type"));
        json_t *data = json_object_get(a, "data");
        json_t *ret;
        Undo *u = NULL;

        if (!strcmp(type, "abort")) {
            g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                        "Transaction aborted using Abort action");
            ok = false;
            break;
        }
        if (is_bitmap_action(type)) {
            const char *name = json_string_value(json_object_get(
                data, strcmp(type, "block-dirty-bitmap-merge") ? "name"
                                                               : "target"));
            const char *node = json_string_value(json_object_get(data, "node"));
            if (node) {
                u = save_bitmap(node, name);
            }
        }
        if (is_snapshot_action(type)) {
            u = g_new0(Undo, 1);
            if (!qmp_external_snapshot(type, data, &u->below, &u->overlay,
                                       errp)) {
                g_free(u);
                ok = false;
                break;
            }
            g_ptr_array_add(undos, u);
            continue;
        }
        ret = qmp_call(type, data, errp);
        if (!ret) {
            if (u) {
                undo_free(u);
            }
            ok = false;
            break;
        }
        json_decref(ret);
        if (!strcmp(type, "blockdev-backup") || !strcmp(type, "drive-backup")) {
            const char *id = json_string_value(json_object_get(data, "job-id"));
            u = g_new0(Undo, 1);
            u->job_id = g_strdup(id ? id : action_node(type, data));
        }
        if (u) {
            g_ptr_array_add(undos, u);
        }
    }
    if (!ok) {
        for (guint k = undos->len; k-- > 0;) {
            undo(undos->pdata[k]);
        }
    }
    for (guint k = held->len; k-- > 0;) {
        block_users_unquiesce(held->pdata[k]);
    }
    return ok ? json_object() : NULL;
}

void qmp_register_transaction_command(void)
{
    static const QmpCommand cmds[] = {
        { "transaction", "actions:array properties:object?", cmd_transaction },
    };
    qmp_register_commands(cmds, G_N_ELEMENTS(cmds));
}
