/*
 * testos virtio-blk driver, run from user mode (IOPL 3 for config ports,
 * the BAR mapped user-accessible): PCI capability walk, feature
 * negotiation, one split queue, synchronous requests polled on the used
 * ring (no interrupts).  Also the deliberately wrong programming the
 * reliability tests need.
 */
#include "testos.h"
#include "virtio-blk.h"

#define VQ_MAX 128

struct vring_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

static struct vring_desc desc[VQ_MAX] __attribute__((aligned(4096)));
static struct {
    uint16_t flags, idx, ring[VQ_MAX], used_event;
} avail __attribute__((aligned(4096)));
static struct {
    uint16_t flags, idx;
    struct { uint32_t id, len; } ring[VQ_MAX];
    uint16_t avail_event;
} used __attribute__((aligned(4096)));
static struct vring_desc indirect_table[4] __attribute__((aligned(16)));
static struct { uint32_t type, reserved; uint64_t sector; } hdr;
static volatile uint8_t status_byte;

uint32_t pci_read(int dev, int off)
{
    outl(0xcf8, 0x80000000u | (dev << 11) | (off & 0xfc));
    return inl(0xcfc);
}

void pci_write(int dev, int off, uint32_t v)
{
    outl(0xcf8, 0x80000000u | (dev << 11) | (off & 0xfc));
    outl(0xcfc, v);
}

#define R8(o)   (*(volatile uint8_t *)(b->common + (o)))
#define R16(o)  (*(volatile uint16_t *)(b->common + (o)))
#define R32(o)  (*(volatile uint32_t *)(b->common + (o)))

static void w64(VBlk *b, int off, uint64_t v)
{
    R32(off) = (uint32_t)v;
    R32(off + 4) = (uint32_t)(v >> 32);
}

int vblk_find(VBlk *b, int from)
{
    for (int dev = from; dev < 32; dev++) {
        uint32_t id = pci_read(dev, 0);
        if (id != 0x10421af4) {
            continue;
        }
        uint64_t bar = (pci_read(dev, 0x10) & ~0xfu) |
                       ((uint64_t)pci_read(dev, 0x14) << 32);
        int cap = pci_read(dev, 0x34) & 0xff;
        memset(b, 0, sizeof(*b));
        b->dev = dev;
        while (cap) {
            uint32_t h = pci_read(dev, cap);
            if ((h & 0xff) == 0x09) {
                int type = (h >> 24) & 0xff;
                uint32_t off = pci_read(dev, cap + 8);
                volatile uint8_t *p = (volatile uint8_t *)(bar + off);
                if (type == 1) {
                    b->common = p;
                } else if (type == 2) {
                    b->notify = p;
                    b->notify_mult = pci_read(dev, cap + 16);
                } else if (type == 4) {
                    b->devcfg = p;
                }
            }
            cap = (h >> 8) & 0xff;
        }
        if (b->common && b->notify && b->devcfg) {
            return dev;
        }
    }
    return -1;
}

uint8_t vblk_status(VBlk *b)
{
    return R8(20);
}

int vblk_init(VBlk *b, uint64_t extra_features, uint16_t qsize)
{
    uint64_t f, want;

    R8(20) = 0;
    while (R8(20) != 0) {
    }
    R8(20) = 1;
    R8(20) = 1 | 2;
    R32(0) = 0;
    f = R32(4);
    R32(0) = 1;
    f |= (uint64_t)R32(4) << 32;
    want = (1ull << 32) | (1ull << 9) | extra_features;   /* VERSION_1, FLUSH */
    b->features = want & f;
    R32(8) = 0;
    R32(12) = (uint32_t)b->features;
    R32(8) = 1;
    R32(12) = (uint32_t)(b->features >> 32);
    R8(20) = 1 | 2 | 8;
    if (!(R8(20) & 8)) {
        printf_("vblk: FEATURES_OK refused\n");
        return -1;
    }
    R16(22) = 0;
    b->kicks = 0;
    b->qsize = R16(24) < VQ_MAX ? R16(24) : VQ_MAX;
    if (qsize) {
        b->qsize = qsize;
    }
    R16(24) = b->qsize;
    R16(26) = 0xffff;                 /* no MSI-X vector: we poll */
    memset(desc, 0, sizeof(desc));
    memset(&avail, 0, sizeof(avail));
    memset(&used, 0, sizeof(used));
    b->avail_idx = 0;
    b->last_used = 0;
    b->use_indirect = 0;
    w64(b, 32, (uint64_t)desc);
    w64(b, 40, (uint64_t)&avail);
    w64(b, 48, (uint64_t)&used);
    R16(28) = 1;
    b->notify_off = R16(30);
    R8(20) = 1 | 2 | 8 | 4;
    b->capacity = *(volatile uint32_t *)b->devcfg |
                  ((uint64_t)*(volatile uint32_t *)(b->devcfg + 4) << 32);
    return (R8(20) & 0x40) ? -1 : 0;
}

/*
 * Ring the doorbell unless the device said it is watching the ring (event
 * idx: avail_event; else NO_NOTIFY in used.flags).  Each doorbell is a VM
 * exit, ~100 us on the paravirtual KVM here.
 */
static void kick(VBlk *b)
{
    uint16_t new_idx = b->avail_idx, old_idx = (uint16_t)(new_idx - 1);

    mb();
    if (b->features & (1ull << 29)) {
        uint16_t ev = *(volatile uint16_t *)&used.avail_event;
        if ((uint16_t)(new_idx - ev - 1) >= (uint16_t)(new_idx - old_idx)) {
            return;
        }
    } else if (*(volatile uint16_t *)&used.flags & 1) {
        return;
    }
    b->kicks++;
    *(volatile uint16_t *)(b->notify + b->notify_off * b->notify_mult) = 0;
}

static void publish(VBlk *b, uint16_t head)
{
    avail.ring[b->avail_idx % b->qsize] = head;
    barrier();
    b->avail_idx++;
    *(volatile uint16_t *)&avail.idx = b->avail_idx;
}

/* Wait for one used entry; -1 if the device went NEEDS_RESET or timed out. */
static int wait_used(VBlk *b, uint64_t timeout_tsc)
{
    uint64_t t0 = rdtsc(), next_check = t0 + (1u << 24);

    while (*(volatile uint16_t *)&used.idx == b->last_used) {
        uint64_t now = rdtsc();
        /* the status register is MMIO: an exit, so look only now and then */
        if (now > next_check) {
            if (R8(20) & 0x40) {
                return -1;
            }
            next_check = now + (1u << 24);
        }
        if (timeout_tsc && now - t0 > timeout_tsc) {
            return -1;
        }
        __asm__ volatile("pause");
    }
    b->last_used++;
    return 0;
}

int vblk_rw(VBlk *b, uint32_t type, uint64_t sector, void *buf, uint32_t len)
{
    struct vring_desc *d = desc;
    int n = 0;

    hdr.type = type;
    hdr.reserved = 0;
    hdr.sector = sector;
    status_byte = 0xff;
    if (b->use_indirect) {
        d = indirect_table;
    }
    d[n] = (struct vring_desc){ (uint64_t)&hdr, 16, 1, (uint16_t)(n + 1) };
    n++;
    if (len) {
        d[n] = (struct vring_desc){ (uint64_t)buf, len,
                                    (uint16_t)(1 | (type == 0 || type == 8 ? 2 : 0)),
                                    (uint16_t)(n + 1) };
        n++;
    }
    d[n] = (struct vring_desc){ (uint64_t)&status_byte, 1, 2, 0 };
    n++;
    if (b->use_indirect) {
        desc[0] = (struct vring_desc){ (uint64_t)indirect_table,
                                       (uint32_t)(n * 16), 4, 0 };
    }
    publish(b, 0);
    kick(b);
    b->requests++;
    if (wait_used(b, 0) < 0) {
        return -2;
    }
    return status_byte;
}

/* -- deliberately wrong programming (reliability tests) ------------------ */

int vblk_bad(VBlk *b, const char *what, uint64_t tsc_khz)
{
    uint64_t second = tsc_khz * 1000;

    hdr.type = 0;
    hdr.sector = 0;
    if (!memcmp(what, "loop", 4)) {
        desc[0] = (struct vring_desc){ (uint64_t)&hdr, 16, 1, 1 };
        desc[1] = (struct vring_desc){ (uint64_t)&hdr, 16, 1, 0 };
    } else if (!memcmp(what, "addr", 4)) {
        desc[0] = (struct vring_desc){ (uint64_t)&hdr, 16, 1, 1 };
        desc[1] = (struct vring_desc){ 0x7f0000000000ull, 4096, 3, 2 };
        desc[2] = (struct vring_desc){ (uint64_t)&status_byte, 1, 2, 0 };
    } else if (!memcmp(what, "indirect", 8)) {
        desc[0] = (struct vring_desc){ (uint64_t)indirect_table, 20, 4, 0 };
    } else if (!memcmp(what, "avail", 5)) {
        desc[0] = (struct vring_desc){ (uint64_t)&hdr, 16, 0, 0 };
        b->avail_idx += 1000;
    } else if (!memcmp(what, "head", 4)) {
        avail.ring[b->avail_idx % b->qsize] = 0x7777;
        b->avail_idx++;
        *(volatile uint16_t *)&avail.idx = b->avail_idx;
        kick(b);
        return wait_used(b, second) < 0 && (R8(20) & 0x40) ? 0 : -1;
    } else if (!memcmp(what, "qsize", 5)) {
        /* a queue size that is not a power of two, then enable */
        R8(20) = 0;
        R8(20) = 1 | 2;
        R32(8) = 1;
        R32(12) = 1;
        R8(20) = 1 | 2 | 8;
        R16(22) = 0;
        R16(24) = 100;
        w64(b, 32, (uint64_t)desc);
        w64(b, 40, (uint64_t)&avail);
        w64(b, 48, (uint64_t)&used);
        R16(28) = 1;
        return (R8(20) & 0x40) ? 0 : -1;
    } else if (!memcmp(what, "ring", 4)) {
        /* rings outside RAM */
        R8(20) = 0;
        R8(20) = 1 | 2;
        R32(8) = 1;
        R32(12) = 1;
        R8(20) = 1 | 2 | 8;
        R16(22) = 0;
        w64(b, 32, 0x7f0000000000ull);
        w64(b, 40, (uint64_t)&avail);
        w64(b, 48, (uint64_t)&used);
        R16(28) = 1;
        return (R8(20) & 0x40) ? 0 : -1;
    } else {
        return -1;
    }
    publish(b, 0);
    if (!memcmp(what, "avail", 5)) {
        *(volatile uint16_t *)&avail.idx = b->avail_idx;
    }
    kick(b);
    /* the device must refuse: NEEDS_RESET, and no used entry */
    return wait_used(b, second) < 0 && (R8(20) & 0x40) ? 0 : -1;
}

/* Queue many reads, reset the device while they run. */
int vblk_reset_during_io(VBlk *b, void *buf, uint32_t len)
{
    int n = b->qsize / 3;

    for (int i = 0; i < n; i++) {
        desc[3 * i] = (struct vring_desc){ (uint64_t)&hdr, 16, 1,
                                           (uint16_t)(3 * i + 1) };
        desc[3 * i + 1] = (struct vring_desc){ (uint64_t)buf, len, 3,
                                               (uint16_t)(3 * i + 2) };
        desc[3 * i + 2] = (struct vring_desc){ (uint64_t)&status_byte, 1, 2, 0 };
        avail.ring[(b->avail_idx + i) % b->qsize] = (uint16_t)(3 * i);
    }
    hdr.type = 0;
    hdr.sector = 0;
    barrier();
    b->avail_idx += n;
    *(volatile uint16_t *)&avail.idx = b->avail_idx;
    kick(b);
    R8(20) = 0;                      /* reset while the device works */
    while (R8(20) != 0) {
    }
    return n;
}
