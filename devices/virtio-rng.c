/*
 * virtio-rng: each writable buffer is filled from the host's getrandom(2)
 * on the notifying vCPU's thread (requests are small and rare).  At most
 * 64 KiB per request, so a guest cannot make one doorbell take long.
 */
#include "config.h"

#include <sys/random.h>

#include "devices/virtio-rng.h"

#define RNG_MAX_PER_REQUEST 65536

struct VirtioRng {
    VirtioDevice vdev;
    VirtQueueElement elem;
};

static void rng_notify(VirtioDevice *vdev, VirtQueue *vq)
{
    VirtioRng *r = (VirtioRng *)vdev;
    bool any = false;

    g_mutex_lock(&vq->lock);
    while (virtqueue_pop(vq, &r->elem) == 1) {
        uint32_t done = 0;
        for (unsigned i = 0; i < r->elem.in_num && done < RNG_MAX_PER_REQUEST;
             i++) {
            size_t want = MIN(r->elem.in[i].iov_len,
                              RNG_MAX_PER_REQUEST - done);
            size_t got = 0;
            while (got < want) {
                ssize_t n = getrandom((uint8_t *)r->elem.in[i].iov_base + got,
                                      want - got, 0);
                if (n <= 0) {
                    break;
                }
                got += n;
            }
            done += got;
        }
        virtqueue_push(vq, &r->elem, done);
        any = true;
    }
    if (any) {
        virtqueue_notify(vq);
    }
    g_mutex_unlock(&vq->lock);
}

static void rng_get_config(VirtioDevice *vdev, uint8_t *config)
{
}

static const VirtioDeviceOps virtio_rng_ops = {
    .name       = "virtio-rng",
    .device_id  = 4,
    .notify     = rng_notify,
    .get_config = rng_get_config,
};

VirtioRng *virtio_rng_new(DevBus *bus)
{
    VirtioRng *r = g_new0(VirtioRng, 1);

    virtio_device_init(&r->vdev, &virtio_rng_ops, bus, 0, 1, 256, 0);
    virtqueue_element_init(&r->elem);
    return r;
}

VirtioDevice *virtio_rng_vdev(VirtioRng *r)
{
    return &r->vdev;
}

void virtio_rng_free(VirtioRng *r)
{
    if (r) {
        virtqueue_element_free(&r->elem);
        virtio_device_cleanup(&r->vdev);
        g_free(r);
    }
}
