/*
 * Virtio core: status, features and the split virtqueue walker (Virtual
 * I/O Device 1.2, 2.1-2.7).  The walker copies each descriptor once before
 * using it, bounds every chain by the table it lives in (so a loop ends as
 * an error), and checks each buffer lies wholly in guest RAM.
 */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>

#include "common/log.h"
#include "devices/virtio.h"

const VmStateDesc virtio_device_vmstate = {
    .name = "virtio-device",
    .version = 1,
    .min_version = 1,
    .fields = (const VmStateField[]) {
        VMSTATE_U64_FIELD(VirtioDevice, guest_features),
        VMSTATE_U8_FIELD(VirtioDevice, status),
        VMSTATE_U8_FIELD(VirtioDevice, config_generation),
        VMSTATE_U16_FIELD(VirtioDevice, config_vector),
        VMSTATE_U8_FIELD(VirtioDevice, isr),
        VMSTATE_ARRAY_FIELD("vq.size", VirtioDevice, vq[0].size,
                            VMSTATE_U16, VIRTIO_MAX_QUEUES, sizeof(VirtQueue)),
        VMSTATE_ARRAY_FIELD("vq.enabled", VirtioDevice, vq[0].enabled,
                            VMSTATE_BOOL, VIRTIO_MAX_QUEUES, sizeof(VirtQueue)),
        VMSTATE_ARRAY_FIELD("vq.msix_vector", VirtioDevice, vq[0].msix_vector,
                            VMSTATE_U16, VIRTIO_MAX_QUEUES, sizeof(VirtQueue)),
        VMSTATE_ARRAY_FIELD("vq.desc", VirtioDevice, vq[0].desc_gpa,
                            VMSTATE_U64, VIRTIO_MAX_QUEUES, sizeof(VirtQueue)),
        VMSTATE_ARRAY_FIELD("vq.avail", VirtioDevice, vq[0].avail_gpa,
                            VMSTATE_U64, VIRTIO_MAX_QUEUES, sizeof(VirtQueue)),
        VMSTATE_ARRAY_FIELD("vq.used", VirtioDevice, vq[0].used_gpa,
                            VMSTATE_U64, VIRTIO_MAX_QUEUES, sizeof(VirtQueue)),
        VMSTATE_ARRAY_FIELD("vq.last_avail_idx", VirtioDevice,
                            vq[0].last_avail_idx, VMSTATE_U16,
                            VIRTIO_MAX_QUEUES, sizeof(VirtQueue)),
        VMSTATE_ARRAY_FIELD("vq.used_idx", VirtioDevice, vq[0].used_idx,
                            VMSTATE_U16, VIRTIO_MAX_QUEUES, sizeof(VirtQueue)),
        VMSTATE_END,
    },
};

void virtio_device_init(VirtioDevice *vdev, const VirtioDeviceOps *ops,
                        DevBus *bus, uint64_t features, int nr_queues,
                        uint16_t queue_size, uint32_t config_len)
{
    memset(vdev, 0, sizeof(*vdev));
    vdev->ops = ops;
    vdev->bus = bus;
    vdev->host_features = features | (1ull << VIRTIO_F_VERSION_1) |
                          (1ull << VIRTIO_F_INDIRECT_DESC) |
                          (1ull << VIRTIO_F_EVENT_IDX);
    vdev->nr_queues = MIN(nr_queues, VIRTIO_MAX_QUEUES);
    vdev->config_len = config_len;
    vdev->config_vector = VIRTIO_NO_VECTOR;
    g_strlcpy(vdev->name, ops->name, sizeof(vdev->name));
    g_mutex_init(&vdev->lock);
    for (int i = 0; i < VIRTIO_MAX_QUEUES; i++) {
        VirtQueue *vq = &vdev->vq[i];
        vq->vdev = vdev;
        vq->index = i;
        vq->max_size = i < vdev->nr_queues ? queue_size : 0;
        vq->size = vq->max_size;
        vq->msix_vector = VIRTIO_NO_VECTOR;
        g_mutex_init(&vq->lock);
    }
}

void virtio_device_cleanup(VirtioDevice *vdev)
{
    for (int i = 0; i < VIRTIO_MAX_QUEUES; i++) {
        g_mutex_clear(&vdev->vq[i].lock);
    }
    g_mutex_clear(&vdev->lock);
}

bool virtio_has_feature(VirtioDevice *vdev, unsigned bit)
{
    return (__atomic_load_n(&vdev->guest_features, __ATOMIC_RELAXED) >> bit) & 1;
}

bool virtio_broken(VirtioDevice *vdev)
{
    return __atomic_load_n(&vdev->status, __ATOMIC_ACQUIRE) &
           VIRTIO_STATUS_NEEDS_RESET;
}

void virtio_error(VirtioDevice *vdev, const char *fmt, ...)
{
    g_autofree char *msg = NULL;
    va_list ap;
    uint8_t old;
    uint16_t vector;

    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_mutex_lock(&vdev->lock);
    old = vdev->status;
    vdev->status |= VIRTIO_STATUS_NEEDS_RESET;
    vdev->isr |= 2;
    vdev->errors++;
    vector = vdev->config_vector;
    g_mutex_unlock(&vdev->lock);
    if (!(old & VIRTIO_STATUS_NEEDS_RESET)) {
        ferry_warn("%s: %s; device needs reset", vdev->name, msg);
        if (vdev->transport.notify_vector) {
            vdev->transport.notify_vector(vdev->transport.opaque, vector);
        }
    }
}

void virtio_reset(VirtioDevice *vdev)
{
    if (vdev->ops->reset) {
        vdev->ops->reset(vdev);    /* in-flight requests finish first */
    }
    for (int i = 0; i < VIRTIO_MAX_QUEUES; i++) {
        VirtQueue *vq = &vdev->vq[i];
        g_mutex_lock(&vq->lock);
        g_mutex_lock(&vdev->lock);
        vq->enabled = false;
        vq->size = vq->max_size;
        vq->msix_vector = VIRTIO_NO_VECTOR;
        vq->desc_gpa = vq->avail_gpa = vq->used_gpa = 0;
        vq->desc = NULL;
        vq->avail = vq->used = NULL;
        vq->last_avail_idx = vq->used_idx = 0;
        vq->signalled_valid = false;
        vq->notify_suppressed = false;
        g_mutex_unlock(&vdev->lock);
        g_mutex_unlock(&vq->lock);
    }
    g_mutex_lock(&vdev->lock);
    vdev->guest_features = 0;
    vdev->config_vector = VIRTIO_NO_VECTOR;
    vdev->isr = 0;
    __atomic_store_n(&vdev->status, 0, __ATOMIC_RELEASE);
    g_mutex_unlock(&vdev->lock);
}

void virtio_set_status(VirtioDevice *vdev, uint8_t status)
{
    uint8_t old;

    if (status == 0) {
        virtio_reset(vdev);
        return;
    }
    g_mutex_lock(&vdev->lock);
    old = vdev->status;
    if ((status & VIRTIO_STATUS_FEATURES_OK) &&
        !(old & VIRTIO_STATUS_FEATURES_OK)) {
        /* 3.1.1: refuse features we did not offer, and legacy drivers */
        if ((vdev->guest_features & ~vdev->host_features) ||
            !((vdev->guest_features >> VIRTIO_F_VERSION_1) & 1)) {
            status &= ~VIRTIO_STATUS_FEATURES_OK;
        }
    }
    /* NEEDS_RESET is the device's to set; the driver cannot clear it */
    status = (status & ~VIRTIO_STATUS_NEEDS_RESET) |
             (old & VIRTIO_STATUS_NEEDS_RESET);
    __atomic_store_n(&vdev->status, status, __ATOMIC_RELEASE);
    g_mutex_unlock(&vdev->lock);
    if ((status & VIRTIO_STATUS_DRIVER_OK) &&
        !(old & VIRTIO_STATUS_DRIVER_OK) && vdev->ops->driver_ok) {
        vdev->ops->driver_ok(vdev);
    }
}

void virtio_queue_enable(VirtioDevice *vdev, int n)
{
    VirtQueue *vq = &vdev->vq[n];
    uint16_t size;
    void *desc, *avail, *used;

    g_mutex_lock(&vq->lock);
    g_mutex_lock(&vdev->lock);
    size = vq->size;
    if (vq->enabled || n >= vdev->nr_queues) {
        g_mutex_unlock(&vdev->lock);
        g_mutex_unlock(&vq->lock);
        return;
    }
    if (size == 0 || size > vq->max_size || (size & (size - 1))) {
        g_mutex_unlock(&vdev->lock);
        g_mutex_unlock(&vq->lock);
        virtio_error(vdev, "queue %d: size %u is not a power of two up to %u",
                     n, size, vq->max_size);
        return;
    }
    desc = (vq->desc_gpa & 15) ? NULL
           : dev_bus_ram_ptr(vdev->bus, vq->desc_gpa, 16ull * size);
    avail = (vq->avail_gpa & 1) ? NULL
            : dev_bus_ram_ptr(vdev->bus, vq->avail_gpa, 6 + 2ull * size);
    used = (vq->used_gpa & 3) ? NULL
           : dev_bus_ram_ptr(vdev->bus, vq->used_gpa, 6 + 8ull * size);
    if (!desc || !avail || !used) {
        uint64_t d = vq->desc_gpa, a = vq->avail_gpa, u = vq->used_gpa;
        g_mutex_unlock(&vdev->lock);
        g_mutex_unlock(&vq->lock);
        virtio_error(vdev, "queue %d: rings desc=0x%" G_GINT64_MODIFIER
                     "x avail=0x%" G_GINT64_MODIFIER "x used=0x%"
                     G_GINT64_MODIFIER "x are misaligned or outside RAM",
                     n, d, a, u);
        return;
    }
    vq->desc = desc;
    vq->avail = avail;
    vq->used = used;
    vq->last_avail_idx = 0;
    vq->used_idx = 0;
    vq->signalled_valid = false;
    vq->enabled = true;
    g_mutex_unlock(&vdev->lock);
    g_mutex_unlock(&vq->lock);
}

bool virtqueue_ready(VirtQueue *vq)
{
    return vq->enabled && vq->desc && !virtio_broken(vq->vdev);
}

/* -- ring access --------------------------------------------------------- */

static inline uint16_t avail_idx(VirtQueue *vq)
{
    return __atomic_load_n(&vq->avail[1], __ATOMIC_ACQUIRE);
}

static inline uint16_t avail_ring(VirtQueue *vq, uint16_t i)
{
    return __atomic_load_n(&vq->avail[2 + i], __ATOMIC_RELAXED);
}

static inline uint16_t used_event(VirtQueue *vq)
{
    return __atomic_load_n(&vq->avail[2 + vq->size], __ATOMIC_RELAXED);
}

static inline void set_avail_event(VirtQueue *vq, uint16_t v)
{
    /* used->ring[size] sits after 4 bytes of header and size 8-byte slots */
    __atomic_store_n(&vq->used[2 + 4 * vq->size], v, __ATOMIC_RELAXED);
}

void virtqueue_element_init(VirtQueueElement *e)
{
    memset(e, 0, sizeof(*e));
    e->out = g_new(struct iovec, VIRTQUEUE_MAX_SIZE);
    e->in = g_new(struct iovec, VIRTQUEUE_MAX_SIZE);
}

void virtqueue_element_free(VirtQueueElement *e)
{
    g_free(e->out);
    g_free(e->in);
    e->out = e->in = NULL;
}

int virtqueue_pop(VirtQueue *vq, VirtQueueElement *elem)
{
    VirtioDevice *vdev = vq->vdev;
    const VirtqDesc *table;
    unsigned max, visited = 0, i;
    uint16_t pending, head;
    bool indirect = false;

    if (!virtqueue_ready(vq)) {
        return 0;
    }
    pending = (uint16_t)(avail_idx(vq) - vq->last_avail_idx);
    if (pending == 0) {
        return 0;
    }
    if (pending > vq->size) {
        virtio_error(vdev, "queue %d: avail index is %u ahead of the device "
                     "with %u entries", vq->index, pending, vq->size);
        return -EIO;
    }
    head = avail_ring(vq, vq->last_avail_idx & (vq->size - 1));
    if (head >= vq->size) {
        virtio_error(vdev, "queue %d: avail ring names descriptor %u of %u",
                     vq->index, head, vq->size);
        return -EIO;
    }
    elem->head = head;
    elem->out_num = elem->in_num = 0;
    elem->out_bytes = elem->in_bytes = 0;
    table = vq->desc;
    max = vq->size;
    i = head;
    for (;;) {
        VirtqDesc d;
        memcpy(&d, &table[i], sizeof(d));     /* read once */
        if (d.flags & VIRTQ_DESC_F_INDIRECT) {
            if (indirect || visited > 0) {
                virtio_error(vdev, "queue %d: indirect descriptor %u %s",
                             vq->index, i, indirect ? "inside a table"
                             : "after the chain's head");
                return -EIO;
            }
            if (!virtio_has_feature(vdev, VIRTIO_F_INDIRECT_DESC) ||
                (d.flags & VIRTQ_DESC_F_NEXT) || d.len == 0 ||
                d.len % sizeof(VirtqDesc) ||
                d.len / sizeof(VirtqDesc) > VIRTQUEUE_MAX_SIZE) {
                virtio_error(vdev, "queue %d: bad indirect descriptor %u "
                             "(len %u flags 0x%x)", vq->index, i, d.len,
                             d.flags);
                return -EIO;
            }
            table = dev_bus_ram_ptr(vdev->bus, d.addr, d.len);
            if (!table) {
                virtio_error(vdev, "queue %d: indirect table at 0x%"
                             G_GINT64_MODIFIER "x+%u is outside RAM",
                             vq->index, d.addr, d.len);
                return -EIO;
            }
            indirect = true;
            max = d.len / sizeof(VirtqDesc);
            i = 0;
            continue;
        }
        if (++visited > max) {
            virtio_error(vdev, "queue %d: descriptor chain from %u is longer "
                         "than its table of %u (a loop)", vq->index, head, max);
            return -EIO;
        }
        void *hva = d.len ? dev_bus_ram_ptr(vdev->bus, d.addr, d.len) : NULL;
        if (d.len && !hva) {
            virtio_error(vdev, "queue %d: buffer 0x%" G_GINT64_MODIFIER
                         "x+%u in chain %u is outside RAM", vq->index,
                         d.addr, d.len, head);
            return -EIO;
        }
        if (d.flags & VIRTQ_DESC_F_WRITE) {
            elem->in[elem->in_num++] = (struct iovec){ hva, d.len };
            elem->in_bytes += d.len;
        } else {
            if (elem->in_num) {
                virtio_error(vdev, "queue %d: readable buffer after a "
                             "writable one in chain %u", vq->index, head);
                return -EIO;
            }
            elem->out[elem->out_num++] = (struct iovec){ hva, d.len };
            elem->out_bytes += d.len;
        }
        if (!(d.flags & VIRTQ_DESC_F_NEXT)) {
            break;
        }
        i = d.next;
        if (i >= max) {
            virtio_error(vdev, "queue %d: next index %u outside a table of %u",
                         vq->index, i, max);
            return -EIO;
        }
    }
    vq->last_avail_idx++;
    return 1;
}

void virtqueue_push(VirtQueue *vq, const VirtQueueElement *elem, uint32_t len)
{
    uint16_t slot;
    volatile uint32_t *ent;

    if (!vq->used) {
        return;       /* reset while the request ran: drop it */
    }
    slot = vq->used_idx & (vq->size - 1);
    ent = (volatile uint32_t *)((volatile uint8_t *)vq->used + 4 + 8 * slot);
    ent[0] = elem->head;
    ent[1] = len;
    vq->used_idx++;
    __atomic_store_n(&vq->used[1], vq->used_idx, __ATOMIC_RELEASE);
}

void virtqueue_notify(VirtQueue *vq)
{
    VirtioDevice *vdev = vq->vdev;
    uint16_t new_idx, old_idx;
    bool valid;

    if (!vq->avail) {
        return;
    }
    /* order our used idx store before reading the driver's wishes */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (virtio_has_feature(vdev, VIRTIO_F_EVENT_IDX)) {
        new_idx = vq->used_idx;
        old_idx = vq->signalled_used;
        valid = vq->signalled_valid;
        vq->signalled_used = new_idx;
        vq->signalled_valid = true;
        /* 2.7.10: interrupt if used_event lies in (old, new] */
        if (valid && (uint16_t)(new_idx - used_event(vq) - 1) >=
                     (uint16_t)(new_idx - old_idx)) {
            return;
        }
    } else if (__atomic_load_n(&vq->avail[0], __ATOMIC_RELAXED) &
               VIRTQ_AVAIL_F_NO_INTERRUPT) {
        return;
    }
    g_mutex_lock(&vdev->lock);
    vdev->isr |= 1;
    g_mutex_unlock(&vdev->lock);
    if (vdev->transport.notify_vector) {
        vdev->transport.notify_vector(vdev->transport.opaque, vq->msix_vector);
    }
}

bool virtqueue_set_notification(VirtQueue *vq, bool enable)
{
    if (!vq->used) {
        return false;
    }
    if (virtio_has_feature(vq->vdev, VIRTIO_F_EVENT_IDX)) {
        if (enable) {
            set_avail_event(vq, avail_idx(vq));
        }
    } else {
        __atomic_store_n(&vq->used[0], enable ? 0 : VIRTQ_USED_F_NO_NOTIFY,
                         __ATOMIC_RELAXED);
    }
    vq->notify_suppressed = !enable;
    if (!enable) {
        return false;
    }
    /* a request that raced with re-enabling must not be missed */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return avail_idx(vq) != vq->last_avail_idx;
}

size_t iov_to_buf(const struct iovec *iov, unsigned n, size_t offset,
                  void *buf, size_t len)
{
    size_t done = 0;

    for (unsigned i = 0; i < n && done < len; i++) {
        if (offset >= iov[i].iov_len) {
            offset -= iov[i].iov_len;
            continue;
        }
        size_t c = MIN(iov[i].iov_len - offset, len - done);
        memcpy((uint8_t *)buf + done, (uint8_t *)iov[i].iov_base + offset, c);
        done += c;
        offset = 0;
    }
    return done;
}

size_t iov_from_buf(const struct iovec *iov, unsigned n, size_t offset,
                    const void *buf, size_t len)
{
    size_t done = 0;

    for (unsigned i = 0; i < n && done < len; i++) {
        if (offset >= iov[i].iov_len) {
            offset -= iov[i].iov_len;
            continue;
        }
        size_t c = MIN(iov[i].iov_len - offset, len - done);
        memcpy((uint8_t *)iov[i].iov_base + offset, (const uint8_t *)buf + done, c);
        done += c;
        offset = 0;
    }
    return done;
}
