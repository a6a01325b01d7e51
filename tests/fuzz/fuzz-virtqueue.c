/*
 * libFuzzer harness for the virtqueue walker (devices/virtio.c): the input
 * is a guest's RAM image holding the rings and descriptor tables, led by a
 * small header choosing queue size, features and ring addresses.  Every
 * request is popped, its buffers touched end to end (ASan sees any escape
 * from RAM), pushed and notified, until the queue is empty or broken.
 *
 * Header (8 bytes): [0] log2 queue size, [1] feature bits (bit0 indirect,
 * bit1 event idx), [2..3] desc page, [4..5] avail page, [6..7] used page;
 * page numbers are 256-byte units inside the 64 KiB RAM.
 */
#include "config.h"

#include <string.h>

#include "common/log.h"
#include "devices/virtio.h"

#define FUZZ_RAM 65536

static const VirtioDeviceOps fuzz_ops = { .name = "fuzz", .device_id = 2 };

static void no_irq(void *opaque, uint16_t vector)
{
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t *ram;
    DevBus bus;
    VirtioDevice vdev;
    VirtQueueElement elem;
    uint64_t features = 1ull << VIRTIO_F_VERSION_1;
    volatile uint8_t sink = 0;

    if (size < 8) {
        return 0;
    }
    if (!ram) {
        ram = g_malloc(FUZZ_RAM);
        ferry_log_level = FERRY_LOG_ERROR;   /* warnings are expected */
    }
    memset(ram, 0, FUZZ_RAM);
    memcpy(ram, data + 8, MIN(size - 8, FUZZ_RAM));
    if (data[1] & 1) {
        features |= 1ull << VIRTIO_F_INDIRECT_DESC;
    }
    if (data[1] & 2) {
        features |= 1ull << VIRTIO_F_EVENT_IDX;
    }
    dev_bus_init(&bus);
    dev_bus_add_ram(&bus, 0, FUZZ_RAM, ram);
    virtio_device_init(&vdev, &fuzz_ops, &bus, 0, 1, 1024, 0);
    vdev.transport.notify_vector = no_irq;
    vdev.guest_features = features;
    vdev.status = VIRTIO_STATUS_DRIVER_OK | VIRTIO_STATUS_FEATURES_OK;
    vdev.vq[0].size = (uint16_t)(1u << (data[0] % 12));   /* 1..2048 */
    vdev.vq[0].desc_gpa = (uint64_t)(data[2] | data[3] << 8) * 256;
    vdev.vq[0].avail_gpa = (uint64_t)(data[4] | data[5] << 8) * 256;
    vdev.vq[0].used_gpa = (uint64_t)(data[6] | data[7] << 8) * 256;
    virtio_queue_enable(&vdev, 0);
    virtqueue_element_init(&elem);
    for (int n = 0; n < 256; n++) {
        int r = virtqueue_pop(&vdev.vq[0], &elem);
        if (r != 1) {
            break;
        }
        for (unsigned i = 0; i < elem.out_num; i++) {
            const uint8_t *p = elem.out[i].iov_base;
            for (size_t j = 0; j < elem.out[i].iov_len; j += 64) {
                sink ^= p[j];
            }
            if (elem.out[i].iov_len) {
                sink ^= p[elem.out[i].iov_len - 1];
            }
        }
        for (unsigned i = 0; i < elem.in_num; i++) {
            if (elem.in[i].iov_len) {
                memset(elem.in[i].iov_base, 0x5a, elem.in[i].iov_len);
            }
        }
        virtqueue_push(&vdev.vq[0], &elem, (uint32_t)elem.in_bytes);
        virtqueue_notify(&vdev.vq[0]);
        virtqueue_set_notification(&vdev.vq[0], n & 1);
    }
    (void)sink;
    virtqueue_element_free(&elem);
    virtio_device_cleanup(&vdev);
    dev_bus_destroy(&bus);
    return 0;
}
