/*
 * Image information as qemu-img's ImageInfo, shared by info, check and
 * snapshot -l.
 */
#ifndef FERRY_TOOLS_IMG_INFO_H
#define FERRY_TOOLS_IMG_INFO_H

#include <jansson.h>

#include "blockdev/driver.h"
#include "qmp/image-info.h"     /* qmp_image_info(), qmp_snapshot_info() */

/* The "ID TAG VM SIZE DATE VM CLOCK ICOUNT" table. */
void img_print_snapshot_table(GString *out, json_t *snapshots);

#endif
