/*
 * virtio-rng (Virtual I/O Device 1.2, 5.4): one queue the driver fills
 * with writable buffers; the device fills them from getrandom(2).
 */
#ifndef FERRY_DEVICES_VIRTIO_RNG_H
#define FERRY_DEVICES_VIRTIO_RNG_H

#include "devices/virtio.h"

typedef struct VirtioRng VirtioRng;

VirtioRng *virtio_rng_new(DevBus *bus);
VirtioDevice *virtio_rng_vdev(VirtioRng *r);
void virtio_rng_free(VirtioRng *r);

#endif
