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
/* A node by node-name (QEMU also accepts a device name; ferry has none
 * outside ferry run).  GenericError naming both, as QEMU. */
BlockNode *qmp_find_node(const char *name, GError **errp);
/* BlockDirtyInfo list of a node, or NULL if it has no bitmaps. */
json_t *qmp_bitmaps_info(BlockNode *bs);
/* ImageInfo of a node (and its backing chain unless flat). */
json_t *qmp_image_info(BlockNode *bs, bool flat);

#endif
