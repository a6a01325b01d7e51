/*
 * Image information as qemu-img's ImageInfo, shared by info, check and
 * snapshot -l.
 */
#ifndef FERRY_TOOLS_IMG_INFO_H
#define FERRY_TOOLS_IMG_INFO_H

#include <jansson.h>

#include "blockdev/driver.h"

/* The ImageInfo object qemu-img info --output=json prints for one node. */
json_t *img_image_info(BlockNode *bs, const char *display_name, GError **errp);
json_t *img_snapshot_to_json(const BlockSnapshotInfo *sn);
/* The "ID TAG VM SIZE DATE VM CLOCK ICOUNT" table. */
void img_print_snapshot_table(GString *out, json_t *snapshots);

#endif
