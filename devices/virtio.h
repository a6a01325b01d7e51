/*
 * Virtio core: device status and feature negotiation, and the split
 * virtqueue (Virtual I/O Device 1.2, sections 2.1-2.7).  The transport
 * (virtio-pci) owns config access and interrupts; devices (blk, rng) own
 * what a request means.
 *
 * Every value the guest writes into rings or registers is hostile: the
 * walker bounds every index, length, address and chain, and any violation
 * marks the device NEEDS_RESET (2.1.2) with one log line instead of
 * touching memory it should not.  The device then does nothing until the
 * driver resets it.
 */
#ifndef FERRY_DEVICES_VIRTIO_H
#define FERRY_DEVICES_VIRTIO_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "devices/bus.h"
#include "devices/vmstate.h"

/* Device status bits (2.1). */
#define VIRTIO_STATUS_ACKNOWLEDGE  0x01
#define VIRTIO_STATUS_DRIVER       0x02
#define VIRTIO_STATUS_DRIVER_OK    0x04
#define VIRTIO_STATUS_FEATURES_OK  0x08
#define VIRTIO_STATUS_NEEDS_RESET  0x40
#define VIRTIO_STATUS_FAILED       0x80

/* Transport and ring features (6). */
#define VIRTIO_F_INDIRECT_DESC  28
#define VIRTIO_F_EVENT_IDX      29
#define VIRTIO_F_VERSION_1      32
#define VIRTIO_F_ACCESS_PLATFORM 33

#define VIRTQ_DESC_F_NEXT      1
#define VIRTQ_DESC_F_WRITE     2
#define VIRTQ_DESC_F_INDIRECT  4
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1
#define VIRTQ_USED_F_NO_NOTIFY     1

#define VIRTIO_MAX_QUEUES      16
#define VIRTQUEUE_MAX_SIZE     1024     /* what we offer (queue_size max) */
#define VIRTIO_NO_VECTOR       0xffff

/* The ring layout in guest memory (2.7). */
typedef struct VirtqDesc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
} VirtqDesc;

typedef struct VirtioDevice VirtioDevice;
typedef struct VirtQueue VirtQueue;

/* One popped request: its buffers, already checked to be guest RAM. */
typedef struct VirtQueueElement {
    uint16_t head;              /* descriptor index to return in used */
    unsigned out_num;           /* device-readable buffers, in order */
    unsigned in_num;            /* device-writable buffers, after them */
    uint64_t out_bytes, in_bytes;
    struct iovec *out;          /* VIRTQUEUE_MAX_SIZE entries each */
    struct iovec *in;
} VirtQueueElement;

struct VirtQueue {
    VirtioDevice *vdev;
    int index;
    /* guest-programmed (common config), guarded by vdev->lock */
    uint16_t size;              /* entries; power of two, <= max_size */
    uint16_t max_size;
    bool enabled;
    uint16_t msix_vector;
    uint64_t desc_gpa, avail_gpa, used_gpa;
    /* run-time state, touched only by the queue's handler (vq->lock) */
    GMutex lock;
    VirtqDesc *desc;            /* host pointers, valid while enabled */
    volatile uint16_t *avail;   /* flags, idx, ring[size], used_event */
    volatile uint16_t *used;    /* flags, idx, then {u32 id, u32 len}[size] */
    uint16_t last_avail_idx;
    uint16_t used_idx;
    uint16_t signalled_used;    /* used idx at the last interrupt */
    bool signalled_valid;
    bool notify_suppressed;
};

typedef struct VirtioDeviceOps {
    const char *name;           /* "virtio-blk" */
    uint16_t device_id;         /* 2 block, 4 entropy (5) */
    /* the queue's doorbell rang; called on the notifying thread */
    void (*notify)(VirtioDevice *vdev, VirtQueue *vq);
    /* device config space: read/write bytes at off (bounds checked) */
    void (*get_config)(VirtioDevice *vdev, uint8_t *config);
    void (*set_config)(VirtioDevice *vdev, const uint8_t *config,
                       uint32_t off, uint32_t len);
    /* quiesce and forget requests: queues are reset after this */
    void (*reset)(VirtioDevice *vdev);
    /* the driver set DRIVER_OK */
    void (*driver_ok)(VirtioDevice *vdev);
    /*
     * Optional: an eventfd that wakes queue n's handler; the transport may
     * wire the doorbell straight to it (KVM ioeventfd) instead of calling
     * notify.  -1: always call notify.
     */
    int (*queue_fd)(VirtioDevice *vdev, int n);
} VirtioDeviceOps;

/* How the core reaches the transport. */
typedef struct VirtioTransport {
    void *opaque;
    void (*notify_vector)(void *opaque, uint16_t vector);
} VirtioTransport;

struct VirtioDevice {
    const VirtioDeviceOps *ops;
    DevBus *bus;
    VirtioTransport transport;
    char name[48];              /* for log lines: "virtio-blk@00:03.0" */
    GMutex lock;                /* status, features, queue registers */
    uint64_t host_features;
    uint64_t guest_features;
    uint8_t status;
    uint8_t config_generation;
    uint16_t config_vector;
    uint32_t config_len;        /* bytes of device config space */
    uint8_t isr;                /* bit 0 queue, bit 1 config (read clears) */
    int nr_queues;
    VirtQueue vq[VIRTIO_MAX_QUEUES];
    uint64_t errors;            /* NEEDS_RESET events, for tests and stats */
};

void virtio_device_init(VirtioDevice *vdev, const VirtioDeviceOps *ops,
                        DevBus *bus, uint64_t features, int nr_queues,
                        uint16_t queue_size, uint32_t config_len);
void virtio_device_cleanup(VirtioDevice *vdev);

/* Driver wrote the status register (0 resets). */
void virtio_set_status(VirtioDevice *vdev, uint8_t status);
void virtio_reset(VirtioDevice *vdev);
bool virtio_has_feature(VirtioDevice *vdev, unsigned bit);

/*
 * The driver enabled queue n: checks size and ring addresses, caches host
 * pointers.  On a bad value the device goes NEEDS_RESET.
 */
void virtio_queue_enable(VirtioDevice *vdev, int n);

/*
 * Mark the device broken: sets NEEDS_RESET, logs once, sends a config
 * interrupt.  Any thread.
 */
void virtio_error(VirtioDevice *vdev, const char *fmt, ...)
    G_GNUC_PRINTF(2, 3);
bool virtio_broken(VirtioDevice *vdev);

/* Element storage for virtqueue_pop (iovec arrays). */
void virtqueue_element_init(VirtQueueElement *e);
void virtqueue_element_free(VirtQueueElement *e);

/*
 * Take the next available request: 1 with elem filled, 0 if none, -EIO if
 * the ring is bad (the device is now NEEDS_RESET).  Caller holds vq->lock.
 */
int virtqueue_pop(VirtQueue *vq, VirtQueueElement *elem);
/* Return a request with len bytes written into its in-buffers. */
void virtqueue_push(VirtQueue *vq, const VirtQueueElement *elem, uint32_t len);
/* Interrupt the driver if it wants one (event idx / NO_INTERRUPT). */
void virtqueue_notify(VirtQueue *vq);
/* Ask for (true) or suppress doorbells; returns true if more arrived. */
bool virtqueue_set_notification(VirtQueue *vq, bool enable);
bool virtqueue_ready(VirtQueue *vq);

/* iovec helpers: copy between an iovec list (from offset) and a buffer. */
size_t iov_to_buf(const struct iovec *iov, unsigned n, size_t offset,
                  void *buf, size_t len);
size_t iov_from_buf(const struct iovec *iov, unsigned n, size_t offset,
                    const void *buf, size_t len);

extern const VmStateDesc virtio_device_vmstate;

#endif
