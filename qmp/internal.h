/*
 * Private helpers shared by the command files of qmp/.
 */
#ifndef FERRY_QMP_INTERNAL_H
#define FERRY_QMP_INTERNAL_H

#include <glib.h>
#include <jansson.h>

#include "blockdev/block.h"
#include "qmp/qmp.h"

/* block-cmds.c */
/* A node by device name (a registered backend's root) or node-name, in
 * that order as QEMU; NULL if neither. */
BlockNode *qmp_lookup_node(const char *name);
/* The same, with QEMU's GenericError naming both. */
BlockNode *qmp_find_node(const char *name, GError **errp);
/*
 * blockdev-snapshot or blockdev-snapshot-sync (type) with its arguments;
 * on success *below (the old top) and *top (the overlay) carry a
 * reference each, for transaction's undo.
 */
/*
 * A new image for drive-mirror, drive-backup and blockdev-snapshot-sync:
 * created (mode absolute-paths, the default) with src's size and
 * backing's name as its backing file, then opened read-write under
 * node_name; mode existing opens what is there.  With attach_backing the
 * image opens without its backing file: the caller attaches backing.
 */
BlockNode *qmp_open_new_image(const char *file, const char *fmt,
                              const char *mode, const char *node_name,
                              BlockNode *src, BlockNode *backing,
                              bool attach_backing, GError **errp);
bool qmp_external_snapshot(const char *type, json_t *args, BlockNode **below,
                           BlockNode **top, GError **errp);
/* BlockDirtyInfo list of a node, or NULL if it has no bitmaps. */
json_t *qmp_bitmaps_info(BlockNode *bs);

#endif
