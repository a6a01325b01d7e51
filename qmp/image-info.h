/*
 * ImageInfo, the object qemu-img info --output=json prints for one node and
 * QMP's query-block / query-named-block-nodes nest under "image": one
 * builder for both, as QEMU's bdrv_query_image_info serves both.
 */
#ifndef FERRY_QMP_IMAGE_INFO_H
#define FERRY_QMP_IMAGE_INFO_H

#include <jansson.h>

#include "blockdev/driver.h"

/* One node's ImageInfo (no backing-image), "filename" as display_name. */
json_t *qmp_image_info(BlockNode *bs, const char *display_name,
                       GError **errp);
/* SnapshotInfo of one internal snapshot. */
json_t *qmp_snapshot_info(const BlockSnapshotInfo *sn);

#endif
