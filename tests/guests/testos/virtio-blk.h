/*
 * testos virtio-blk driver (see virtio-blk.c).
 */
#ifndef TESTOS_VIRTIO_BLK_H
#define TESTOS_VIRTIO_BLK_H

#include "testos.h"

typedef struct VBlk {
    int dev;
    volatile uint8_t *common, *notify, *devcfg;
    uint32_t notify_mult;
    uint16_t notify_off;
    uint16_t qsize;
    uint16_t avail_idx, last_used;
    uint64_t features;
    uint64_t capacity;          /* sectors */
    int use_indirect;
    uint64_t kicks, requests;   /* doorbells rung, requests made */
} VBlk;

uint32_t pci_read(int dev, int off);
void pci_write(int dev, int off, uint32_t v);
int vblk_find(VBlk *b, int from);
int vblk_init(VBlk *b, uint64_t extra_features, uint16_t qsize);
uint8_t vblk_status(VBlk *b);
/* type 0 read, 1 write, 4 flush, 8 get-id; returns the status byte */
int vblk_rw(VBlk *b, uint32_t type, uint64_t sector, void *buf, uint32_t len);
int vblk_bad(VBlk *b, const char *what, uint64_t tsc_khz);
int vblk_reset_during_io(VBlk *b, void *buf, uint32_t len);

#endif
