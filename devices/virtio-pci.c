/*
 * virtio-pci modern transport: the common configuration structure, ISR,
 * device-specific config, notification doorbells and the PCI config access
 * capability (Virtual I/O Device 1.2, 4.1.4), all in BAR 0; MSI-X vectors
 * for queues and config changes.  No legacy (I/O BAR) interface.
 */
#include "config.h"

#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "devices/virtio-pci.h"

#define VIRTIO_PCI_CAP_COMMON_CFG 1
#define VIRTIO_PCI_CAP_NOTIFY_CFG 2
#define VIRTIO_PCI_CAP_ISR_CFG    3
#define VIRTIO_PCI_CAP_DEVICE_CFG 4
#define VIRTIO_PCI_CAP_PCI_CFG    5

struct VirtioPci {
    PciDevice pci;
    VirtioDevice *vdev;
    uint32_t dfselect;        /* guarded by vdev->lock */
    uint32_t gfselect;
    uint16_t queue_sel;
    uint8_t cfg_cap;          /* offset of the PCI_CFG capability */
    /* doorbells wired to eventfds (KVM ioeventfd), per queue */
    uint64_t ioeventfd_addr[VIRTIO_MAX_QUEUES];
    int ioeventfd_fd[VIRTIO_MAX_QUEUES];
};

static void vp_notify_vector(void *opaque, uint16_t vector)
{
    VirtioPci *vp = opaque;

    if (vector != VIRTIO_NO_VECTOR) {
        pci_msix_notify(&vp->pci, vector);
    }
}

/* -- doorbells wired to eventfds ---------------------------------------- */

static void vp_ioeventfd_del(VirtioPci *vp, int n)
{
    DevBus *bus = vp->vdev->bus;

    if (vp->ioeventfd_addr[n] && bus->del_ioeventfd) {
        bus->del_ioeventfd(bus->irq_opaque, vp->ioeventfd_addr[n], 2,
                           vp->ioeventfd_fd[n]);
    }
    vp->ioeventfd_addr[n] = 0;
}

static void vp_ioeventfd_update(VirtioPci *vp, int n)
{
    VirtioDevice *vdev = vp->vdev;
    DevBus *bus = vdev->bus;
    uint64_t bar = pci_bar_addr(&vp->pci, 0);
    uint64_t want = 0;
    int fd = vdev->ops->queue_fd ? vdev->ops->queue_fd(vdev, n) : -1;

    if (bar && fd >= 0 && vdev->vq[n].enabled && bus->add_ioeventfd) {
        want = bar + VIRTIO_PCI_NOTIFY_OFF + n * VIRTIO_PCI_NOTIFY_MULT;
    }
    if (want == vp->ioeventfd_addr[n]) {
        return;
    }
    vp_ioeventfd_del(vp, n);
    if (want && bus->add_ioeventfd(bus->irq_opaque, want, 2, fd)) {
        vp->ioeventfd_addr[n] = want;
        vp->ioeventfd_fd[n] = fd;
    }
}

static void vp_bar_mapped(PciDevice *d, int bar)
{
    VirtioPci *vp = (VirtioPci *)d;

    for (int n = 0; n < vp->vdev->nr_queues; n++) {
        vp_ioeventfd_update(vp, n);
    }
}

/* -- common configuration (4.1.4.3) ------------------------------------- */

static uint64_t common_read(VirtioPci *vp, uint64_t off, unsigned size)
{
    VirtioDevice *vdev = vp->vdev;
    VirtQueue *vq = vp->queue_sel < VIRTIO_MAX_QUEUES
                    ? &vdev->vq[vp->queue_sel] : NULL;
    uint64_t v = 0;

    switch (off) {
    case 0:  v = vp->dfselect; break;
    case 4:  v = vp->dfselect < 2
                 ? (uint32_t)(vdev->host_features >> (32 * vp->dfselect)) : 0;
             break;
    case 8:  v = vp->gfselect; break;
    case 12: v = vp->gfselect < 2
                 ? (uint32_t)(vdev->guest_features >> (32 * vp->gfselect)) : 0;
             break;
    case 16: v = vdev->config_vector; break;
    case 18: v = vdev->nr_queues; break;
    case 20: v = vdev->status; break;
    case 21: v = vdev->config_generation; break;
    case 22: v = vp->queue_sel; break;
    case 24: v = vq ? vq->size : 0; break;
    case 26: v = vq ? vq->msix_vector : VIRTIO_NO_VECTOR; break;
    case 28: v = vq ? vq->enabled : 0; break;
    case 30: v = vp->queue_sel; break;
    case 32: v = vq ? vq->desc_gpa : 0; break;
    case 36: v = vq ? vq->desc_gpa >> 32 : 0; break;
    case 40: v = vq ? vq->avail_gpa : 0; break;
    case 44: v = vq ? vq->avail_gpa >> 32 : 0; break;
    case 48: v = vq ? vq->used_gpa : 0; break;
    case 52: v = vq ? vq->used_gpa >> 32 : 0; break;
    default: v = 0; break;
    }
    if (size < 8) {
        v &= (1ull << (8 * size)) - 1;
    }
    return v;
}

static void set_gpa_half(uint64_t *gpa, uint64_t off, uint64_t val,
                         unsigned size)
{
    if (size == 8) {
        *gpa = val;
    } else if (off & 4) {
        *gpa = (*gpa & 0xffffffffu) | (val << 32);
    } else {
        *gpa = (*gpa & ~0xffffffffull) | (uint32_t)val;
    }
}

/* Called with vdev->lock held; returns what to do after unlocking. */
typedef enum { AFTER_NONE, AFTER_STATUS, AFTER_ENABLE } CommonAfter;

static CommonAfter common_write_locked(VirtioPci *vp, uint64_t off,
                                       uint64_t val, unsigned size)
{
    VirtioDevice *vdev = vp->vdev;
    bool qvalid = vp->queue_sel < vdev->nr_queues;
    VirtQueue *vq = qvalid ? &vdev->vq[vp->queue_sel] : NULL;
    bool qlocked = !vq || vq->enabled;    /* 4.1.4.3.2: no changes once on */
    uint16_t nr_vectors = vp->pci.msix.nr_vectors;

    switch (off) {
    case 0:  vp->dfselect = (uint32_t)val; break;
    case 8:  vp->gfselect = (uint32_t)val; break;
    case 12:
        if (vp->gfselect < 2 &&
            !(vdev->status & VIRTIO_STATUS_FEATURES_OK)) {
            uint64_t mask = 0xffffffffull << (32 * vp->gfselect);
            vdev->guest_features = (vdev->guest_features & ~mask) |
                                   ((uint64_t)(uint32_t)val << (32 * vp->gfselect));
        }
        break;
    case 16:
        vdev->config_vector = val < nr_vectors ? (uint16_t)val
                                               : VIRTIO_NO_VECTOR;
        break;
    case 20:
        return AFTER_STATUS;
    case 22: vp->queue_sel = (uint16_t)val; break;
    case 24:
        if (!qlocked) {
            vq->size = (uint16_t)val;
        }
        break;
    case 26:
        if (vq) {
            vq->msix_vector = val < nr_vectors ? (uint16_t)val
                                               : VIRTIO_NO_VECTOR;
        }
        break;
    case 28:
        if (vq && val == 1 && !vq->enabled) {
            return AFTER_ENABLE;
        }
        break;
    case 32: case 36:
        if (!qlocked) {
            set_gpa_half(&vq->desc_gpa, off, val, size);
        }
        break;
    case 40: case 44:
        if (!qlocked) {
            set_gpa_half(&vq->avail_gpa, off, val, size);
        }
        break;
    case 48: case 52:
        if (!qlocked) {
            set_gpa_half(&vq->used_gpa, off, val, size);
        }
        break;
    default:
        break;
    }
    return AFTER_NONE;
}

static void common_write(VirtioPci *vp, uint64_t off, uint64_t val,
                         unsigned size)
{
    VirtioDevice *vdev = vp->vdev;
    CommonAfter after;
    int q;

    g_mutex_lock(&vdev->lock);
    after = common_write_locked(vp, off, val, size);
    q = vp->queue_sel;
    g_mutex_unlock(&vdev->lock);
    if (after == AFTER_STATUS) {
        virtio_set_status(vdev, (uint8_t)val);
        if ((uint8_t)val == 0) {
            /* a virtio reset leaves PCI state (MSI-X table) alone */
            for (int n = 0; n < vdev->nr_queues; n++) {
                vp_ioeventfd_update(vp, n);
            }
        }
    } else if (after == AFTER_ENABLE) {
        virtio_queue_enable(vdev, q);
        vp_ioeventfd_update(vp, q);
    }
}

/* -- BAR 0 -------------------------------------------------------------- */

static uint64_t vp_bar_read(void *opaque, uint64_t off, unsigned size)
{
    VirtioPci *vp = opaque;
    VirtioDevice *vdev = vp->vdev;
    uint64_t v = 0;

    if (off < VIRTIO_PCI_COMMON_OFF + 0x40) {
        g_mutex_lock(&vdev->lock);
        v = common_read(vp, off, size);
        g_mutex_unlock(&vdev->lock);
    } else if (off == VIRTIO_PCI_ISR_OFF) {
        g_mutex_lock(&vdev->lock);
        v = vdev->isr;
        vdev->isr = 0;           /* 4.1.4.5: reading clears */
        g_mutex_unlock(&vdev->lock);
    } else if (off >= VIRTIO_PCI_DEVICE_OFF &&
               off - VIRTIO_PCI_DEVICE_OFF < vdev->config_len &&
               size <= vdev->config_len - (off - VIRTIO_PCI_DEVICE_OFF)) {
        uint8_t cfg[256] = { 0 };
        vdev->ops->get_config(vdev, cfg);
        memcpy(&v, cfg + (off - VIRTIO_PCI_DEVICE_OFF), size);
    } else if (off >= VIRTIO_PCI_MSIX_TABLE) {
        v = pci_msix_read(&vp->pci, off, size);
    }
    return v;
}

static void vp_bar_write(void *opaque, uint64_t off, uint64_t val,
                         unsigned size)
{
    VirtioPci *vp = opaque;
    VirtioDevice *vdev = vp->vdev;

    if (off < VIRTIO_PCI_COMMON_OFF + 0x40) {
        common_write(vp, off, val, size);
    } else if (off >= VIRTIO_PCI_NOTIFY_OFF &&
               off < VIRTIO_PCI_NOTIFY_OFF +
                     VIRTIO_MAX_QUEUES * VIRTIO_PCI_NOTIFY_MULT) {
        int n = (off - VIRTIO_PCI_NOTIFY_OFF) / VIRTIO_PCI_NOTIFY_MULT;
        if (n < vdev->nr_queues && vdev->ops->notify) {
            vdev->ops->notify(vdev, &vdev->vq[n]);
        }
    } else if (off >= VIRTIO_PCI_DEVICE_OFF &&
               off - VIRTIO_PCI_DEVICE_OFF < vdev->config_len &&
               size <= vdev->config_len - (off - VIRTIO_PCI_DEVICE_OFF)) {
        if (vdev->ops->set_config) {
            uint8_t b[8];
            memcpy(b, &val, size);
            vdev->ops->set_config(vdev, b, off - VIRTIO_PCI_DEVICE_OFF, size);
        }
    } else if (off >= VIRTIO_PCI_MSIX_TABLE) {
        pci_msix_write(&vp->pci, off, val, size);
    }
}

static const IoOps vp_bar_ops = { .read = vp_bar_read, .write = vp_bar_write };

/* -- the PCI config access capability (4.1.4.9) ------------------------- */

static void vp_cfg_window(VirtioPci *vp, bool is_write)
{
    uint8_t *cap = vp->pci.config + vp->cfg_cap;
    uint32_t off = pci_get_long(cap + 8);
    uint32_t len = pci_get_long(cap + 12);
    uint64_t val = 0;

    if (cap[4] != 0 || (len != 1 && len != 2 && len != 4) ||
        off >= VIRTIO_PCI_BAR_SIZE || len > VIRTIO_PCI_BAR_SIZE - off) {
        return;
    }
    if (is_write) {
        val = pci_get_long(cap + 16);
        vp_bar_write(vp, off, val, len);
    } else {
        val = vp_bar_read(vp, off, len);
        pci_set_long(cap + 16, (uint32_t)val);
    }
}

static void vp_config_read(PciDevice *d, uint32_t off, unsigned len)
{
    VirtioPci *vp = (VirtioPci *)d;

    if (off + len > vp->cfg_cap + 16u && off < vp->cfg_cap + 20u) {
        vp_cfg_window(vp, false);
    }
}

static void vp_config_write(PciDevice *d, uint32_t off, uint32_t val,
                            unsigned len)
{
    VirtioPci *vp = (VirtioPci *)d;

    if (off + len > vp->cfg_cap + 16u && off < vp->cfg_cap + 20u) {
        vp_cfg_window(vp, true);
    }
}

static const PciDeviceOps vp_pci_ops = {
    .config_read = vp_config_read,
    .config_write = vp_config_write,
    .bar_mapped = vp_bar_mapped,
};

static uint8_t add_vendor_cap(VirtioPci *vp, uint8_t type, uint8_t len,
                              uint32_t offset, uint32_t length)
{
    uint8_t c = pci_add_capability(&vp->pci, PCI_CAP_ID_VNDR, len);
    uint8_t *p = vp->pci.config + c;

    p[2] = len;
    p[3] = type;
    p[4] = 0;                 /* BAR 0 */
    pci_set_long(p + 8, offset);
    pci_set_long(p + 12, length);
    return c;
}

VirtioPci *virtio_pci_new(PciBus *pb, VirtioDevice *vdev, GError **errp)
{
    VirtioPci *vp = g_new0(VirtioPci, 1);
    uint16_t id = vdev->ops->device_id;
    uint32_t class_code = id == 2 ? 0x018000 : 0x00ff00;
    uint8_t c;

    vp->vdev = vdev;
    if (!pci_device_init(&vp->pci, pb, &vp_pci_ops, vdev->ops->name, 0x1af4,
                         0x1040 + id, class_code, 1, errp)) {
        g_free(vp);
        return NULL;
    }
    g_strlcpy(vdev->name, vp->pci.name, sizeof(vdev->name));
    pci_set_word(vp->pci.config + PCI_SUBSYSTEM_VENDOR, 0x1af4);
    pci_set_word(vp->pci.config + PCI_SUBSYSTEM_ID, 0x40 + id);
    pci_register_bar(&vp->pci, 0, VIRTIO_PCI_BAR_SIZE, false, true,
                     &vp_bar_ops, vp);
    add_vendor_cap(vp, VIRTIO_PCI_CAP_COMMON_CFG, 16, VIRTIO_PCI_COMMON_OFF,
                   0x38);
    add_vendor_cap(vp, VIRTIO_PCI_CAP_ISR_CFG, 16, VIRTIO_PCI_ISR_OFF, 1);
    add_vendor_cap(vp, VIRTIO_PCI_CAP_DEVICE_CFG, 16, VIRTIO_PCI_DEVICE_OFF,
                   MAX(vdev->config_len, 4));
    c = add_vendor_cap(vp, VIRTIO_PCI_CAP_NOTIFY_CFG, 20,
                       VIRTIO_PCI_NOTIFY_OFF,
                       VIRTIO_MAX_QUEUES * VIRTIO_PCI_NOTIFY_MULT);
    pci_set_long(vp->pci.config + c + 16, VIRTIO_PCI_NOTIFY_MULT);
    vp->cfg_cap = add_vendor_cap(vp, VIRTIO_PCI_CAP_PCI_CFG, 20, 0, 0);
    /* the window's bar, offset, length and data are the driver's to set */
    vp->pci.wmask[vp->cfg_cap + 4] = 0xff;
    pci_set_long(vp->pci.wmask + vp->cfg_cap + 8, 0xffffffffu);
    pci_set_long(vp->pci.wmask + vp->cfg_cap + 12, 0xffffffffu);
    pci_set_long(vp->pci.wmask + vp->cfg_cap + 16, 0xffffffffu);
    pci_msix_init(&vp->pci, vdev->nr_queues + 1, 0, VIRTIO_PCI_MSIX_TABLE,
                  VIRTIO_PCI_MSIX_PBA);
    vdev->transport = (VirtioTransport){ .opaque = vp,
                                         .notify_vector = vp_notify_vector };
    return vp;
}

PciDevice *virtio_pci_device(VirtioPci *vp)
{
    return &vp->pci;
}

void virtio_pci_reset(VirtioPci *vp)
{
    virtio_reset(vp->vdev);
    for (int n = 0; n < vp->vdev->nr_queues; n++) {
        vp_ioeventfd_update(vp, n);
    }
    pci_device_reset(&vp->pci);
}

void virtio_pci_free(VirtioPci *vp)
{
    if (!vp) {
        return;
    }
    for (int n = 0; n < vp->vdev->nr_queues; n++) {
        vp_ioeventfd_del(vp, n);
    }
    pci_device_unplug(&vp->pci);
    g_free(vp);
}
