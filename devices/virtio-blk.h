/*
 * virtio-blk (Virtual I/O Device 1.2, 5.2) on a BlockBackend, with one
 * iothread per queue.
 */
#ifndef FERRY_DEVICES_VIRTIO_BLK_H
#define FERRY_DEVICES_VIRTIO_BLK_H

#include "blockdev/backend.h"
#include "devices/virtio.h"

typedef struct VirtioBlkConf {
    BlockBackend *blk;       /* the device holds a reference while it lives */
    bool read_only;          /* offer VIRTIO_BLK_F_RO, refuse writes */
    int num_queues;          /* 1..VIRTIO_MAX_QUEUES */
    uint16_t queue_size;     /* power of two, <= VIRTQUEUE_MAX_SIZE */
    const char *serial;      /* GET_ID answer, up to 20 bytes */
} VirtioBlkConf;

typedef struct VirtioBlk VirtioBlk;

VirtioBlk *virtio_blk_new(DevBus *bus, const VirtioBlkConf *conf,
                          GError **errp);
VirtioDevice *virtio_blk_vdev(VirtioBlk *b);
BlockBackend *virtio_blk_backend(VirtioBlk *b);
/* Stops the iothreads (finishing requests in flight) and frees. */
void virtio_blk_free(VirtioBlk *b);

/* Request types and status (5.2.6). */
#define VIRTIO_BLK_T_IN           0
#define VIRTIO_BLK_T_OUT          1
#define VIRTIO_BLK_T_FLUSH        4
#define VIRTIO_BLK_T_GET_ID       8
#define VIRTIO_BLK_T_DISCARD      11
#define VIRTIO_BLK_T_WRITE_ZEROES 13
#define VIRTIO_BLK_S_OK     0
#define VIRTIO_BLK_S_IOERR  1
#define VIRTIO_BLK_S_UNSUPP 2

#define VIRTIO_BLK_F_SEG_MAX      2
#define VIRTIO_BLK_F_RO           5
#define VIRTIO_BLK_F_BLK_SIZE     6
#define VIRTIO_BLK_F_FLUSH        9
#define VIRTIO_BLK_F_MQ           12
#define VIRTIO_BLK_F_DISCARD      13
#define VIRTIO_BLK_F_WRITE_ZEROES 14

#define VIRTIO_BLK_CONFIG_BYTES   60
#define VIRTIO_BLK_MAX_DWZ_SEGS   32

#endif
