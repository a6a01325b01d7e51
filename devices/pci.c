/*
 * The PCI bus: type-1 configuration ports, config space with write masks,
 * BAR mapping, capabilities and MSI-X.  Config space is guarded by the bus
 * lock; the MSI-X table by its own lock, since iothreads send interrupts
 * while vCPUs program the table.
 */
#include "config.h"

#include <string.h>

#include "common/error.h"
#include "common/log.h"
#include "devices/pci.h"

#define PCI_MSIX_FLAGS_ENABLE  0x8000
#define PCI_MSIX_FLAGS_MASKALL 0x4000
#define PCI_MSIX_ENTRY_BYTES   16

struct PciBus {
    DevBus *bus;
    GMutex lock;                 /* config space of every device, addr */
    PciDevice *slots[PCI_SLOTS];
    uint32_t addr;               /* the 0xcf8 latch */
    IoRegion addr_region;
    IoRegion data_region;
    PciDevice host;              /* 00:00.0 */
    uint64_t mmio_next;
    uint32_t io_next;
    void (*rcr)(void *opaque, uint8_t v);   /* port 0xcf9 writes */
    void *rcr_opaque;
};

void pci_bus_set_reset_hook(PciBus *pb, void (*fn)(void *opaque, uint8_t v),
                            void *opaque)
{
    pb->rcr = fn;
    pb->rcr_opaque = opaque;
}

const VmStateDesc pci_device_vmstate = {
    .name = "pci-device",
    .version = 1,
    .min_version = 1,
    .fields = (const VmStateField[]) {
        VMSTATE_BYTES_FIELD(PciDevice, config, PCI_CONFIG_BYTES),
        VMSTATE_END,
    },
};

static uint16_t get_word(const uint8_t *p)
{
    return p[0] | (p[1] << 8);
}

uint64_t pci_bar_addr(PciDevice *d, int n)
{
    PciBar *b = &d->bars[n];
    return b->region.mapped ? b->region.addr : 0;
}

/* Where the guest's BAR registers put bar n, or 0 if nowhere usable. */
static uint64_t bar_target(PciDevice *d, int n)
{
    PciBar *b = &d->bars[n];
    uint16_t cmd = get_word(d->config + PCI_COMMAND);
    uint32_t lo = pci_get_long(d->config + PCI_BAR0 + 4 * n);
    uint64_t addr;

    if (b->io) {
        if (!(cmd & PCI_COMMAND_IO)) {
            return 0;
        }
        addr = lo & ~0x3u;
        return addr && addr + b->size <= 0x10000 ? addr : 0;
    }
    if (!(cmd & PCI_COMMAND_MEMORY)) {
        return 0;
    }
    addr = lo & ~0xfu;
    if (b->is64) {
        addr |= (uint64_t)pci_get_long(d->config + PCI_BAR0 + 4 * n + 4) << 32;
    }
    /* not while sizing (all ones), not over RAM's end of the world */
    if (addr == 0 || addr >= (1ull << 46) || addr + b->size < addr) {
        return 0;
    }
    if (addr < 4ull << 30 && addr + b->size > PCI_MMIO_END) {
        return 0;
    }
    return addr;
}

static void pci_update_bars(PciDevice *d)
{
    for (int n = 0; n < PCI_NR_BARS; n++) {
        PciBar *b = &d->bars[n];
        uint64_t want;
        if (!b->size) {
            continue;
        }
        want = bar_target(d, n);
        if (b->region.mapped && b->region.addr == want) {
            continue;
        }
        if (!b->region.mapped && !want) {
            continue;
        }
        if (b->region.mapped) {
            dev_bus_unmap(d->bus->bus, &b->region);
        }
        if (want) {
            dev_bus_map(d->bus->bus, &b->region, want);
        }
        if (d->ops && d->ops->bar_mapped) {
            d->ops->bar_mapped(d, n);
        }
    }
}

uint32_t pci_config_read(PciDevice *d, uint32_t off, unsigned len)
{
    uint32_t v = 0;

    if (off >= PCI_CONFIG_BYTES || len > PCI_CONFIG_BYTES - off) {
        return 0xffffffffu;
    }
    if (d->ops && d->ops->config_read) {
        d->ops->config_read(d, off, len);
    }
    for (unsigned i = 0; i < len; i++) {
        v |= (uint32_t)d->config[off + i] << (8 * i);
    }
    return v;
}

static void msix_deliver_pending(PciDevice *d);

void pci_config_write(PciDevice *d, uint32_t off, uint32_t val, unsigned len)
{
    bool bars = false, msix = false;

    if (off >= PCI_CONFIG_BYTES || len > PCI_CONFIG_BYTES - off) {
        return;
    }
    for (unsigned i = 0; i < len; i++) {
        uint32_t o = off + i;
        uint8_t b = (uint8_t)(val >> (8 * i));
        d->config[o] = (d->config[o] & ~d->wmask[o]) | (b & d->wmask[o]);
        if (o == PCI_COMMAND || (o >= PCI_BAR0 && o < PCI_BAR0 + 24)) {
            bars = true;
        }
        if (d->msix.nr_vectors && o >= d->msix.cap && o < d->msix.cap + 4) {
            msix = true;
        }
    }
    if (bars) {
        pci_update_bars(d);
    }
    if (msix) {
        msix_deliver_pending(d);
    }
    if (d->ops && d->ops->config_write) {
        d->ops->config_write(d, off, val, len);
    }
}

/* -- type-1 configuration mechanism ------------------------------------- */

static PciDevice *pci_addressed(PciBus *pb, uint32_t *reg)
{
    uint32_t a = pb->addr;

    if (!(a & 0x80000000u) || ((a >> 16) & 0xff) != 0 || ((a >> 8) & 7)) {
        return NULL;      /* disabled, another bus, or a function > 0 */
    }
    *reg = a & 0xfc;
    return pb->slots[(a >> 11) & 0x1f];
}

static uint64_t cf8_read(void *opaque, uint64_t off, unsigned size)
{
    PciBus *pb = opaque;
    uint32_t v;

    g_mutex_lock(&pb->lock);
    v = pb->addr;
    g_mutex_unlock(&pb->lock);
    return size == 4 && off == 0 ? v : 0xffffffffu;
}

static void cf8_write(void *opaque, uint64_t off, uint64_t val, unsigned size)
{
    PciBus *pb = opaque;

    if (size == 1 && off == 1 && pb->rcr) {
        pb->rcr(pb->rcr_opaque, (uint8_t)val);
        return;
    }
    /* only a 32-bit write latches (Linux probes with a byte at 0xcfb) */
    if (size == 4 && off == 0) {
        g_mutex_lock(&pb->lock);
        pb->addr = (uint32_t)val;
        g_mutex_unlock(&pb->lock);
    }
}

static uint64_t cfc_read(void *opaque, uint64_t off, unsigned size)
{
    PciBus *pb = opaque;
    PciDevice *d;
    uint32_t reg = 0, v = 0xffffffffu;

    g_mutex_lock(&pb->lock);
    d = pci_addressed(pb, &reg);
    if (d && off + size <= 4) {
        v = pci_config_read(d, reg + off, size);
    }
    g_mutex_unlock(&pb->lock);
    return v;
}

static void cfc_write(void *opaque, uint64_t off, uint64_t val, unsigned size)
{
    PciBus *pb = opaque;
    PciDevice *d;
    uint32_t reg = 0;

    g_mutex_lock(&pb->lock);
    d = pci_addressed(pb, &reg);
    if (d && off + size <= 4) {
        pci_config_write(d, reg + off, (uint32_t)val, size);
    }
    g_mutex_unlock(&pb->lock);
}

static const IoOps cf8_ops = { .read = cf8_read, .write = cf8_write };
static const IoOps cfc_ops = { .read = cfc_read, .write = cfc_write };

PciBus *pci_bus_new(DevBus *bus)
{
    PciBus *pb = g_new0(PciBus, 1);

    pb->bus = bus;
    g_mutex_init(&pb->lock);
    pb->mmio_next = PCI_MMIO_BASE;
    pb->io_next = PCI_IO_BASE;
    pb->addr_region = (IoRegion){ .name = "pci-addr", .size = 4,
                                  .ops = &cf8_ops, .opaque = pb, .pio = true };
    pb->data_region = (IoRegion){ .name = "pci-data", .size = 4,
                                  .ops = &cfc_ops, .opaque = pb, .pio = true };
    dev_bus_map(bus, &pb->addr_region, 0xcf8);
    dev_bus_map(bus, &pb->data_region, 0xcfc);
    /* 00:00.0 host bridge, class 0x0600 (Linux's sanity check wants one) */
    pci_device_init(&pb->host, pb, NULL, "host-bridge", 0x8086, 0x29c0,
                    0x060000, 0, NULL);
    return pb;
}

void pci_bus_free(PciBus *pb)
{
    if (!pb) {
        return;
    }
    dev_bus_unmap(pb->bus, &pb->addr_region);
    dev_bus_unmap(pb->bus, &pb->data_region);
    g_mutex_clear(&pb->lock);
    g_free(pb);
}

DevBus *pci_bus_dev_bus(PciBus *pb)
{
    return pb->bus;
}

bool pci_device_init(PciDevice *d, PciBus *pb, const PciDeviceOps *ops,
                     const char *name, uint16_t vendor, uint16_t device,
                     uint32_t class_code, uint8_t revision, GError **errp)
{
    int slot = -1;

    for (int i = 0; i < PCI_SLOTS; i++) {
        if (!pb->slots[i]) {
            slot = i;
            break;
        }
    }
    if (slot < 0) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "no free PCI slot for %s (32 per bus)", name);
        return false;
    }
    d->bus = pb;
    d->ops = ops;
    d->slot = slot;
    g_snprintf(d->name, sizeof(d->name), "%s@00:%02x.0", name, slot);
    memset(d->config, 0, sizeof(d->config));
    memset(d->wmask, 0, sizeof(d->wmask));
    pci_set_word(d->config + PCI_VENDOR_ID, vendor);
    pci_set_word(d->config + PCI_DEVICE_ID, device);
    d->config[PCI_REVISION_ID] = revision;
    d->config[PCI_CLASS_PROG] = class_code & 0xff;
    pci_set_word(d->config + 0x0a, class_code >> 8);
    d->config[PCI_HEADER_TYPE] = 0;
    pci_set_word(d->wmask + PCI_COMMAND,
                 PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER |
                 0x400 /* INTx disable */);
    d->wmask[PCI_INTERRUPT_LINE] = 0xff;
    d->next_cap = 0x40;
    g_mutex_init(&d->msix.lock);
    g_mutex_lock(&pb->lock);
    pb->slots[slot] = d;
    g_mutex_unlock(&pb->lock);
    return true;
}

void pci_device_unplug(PciDevice *d)
{
    g_mutex_lock(&d->bus->lock);
    d->bus->slots[d->slot] = NULL;
    g_mutex_unlock(&d->bus->lock);
    for (int n = 0; n < PCI_NR_BARS; n++) {
        if (d->bars[n].region.mapped) {
            dev_bus_unmap(d->bus->bus, &d->bars[n].region);
        }
    }
    g_free(d->msix.table);
    g_free(d->msix.pba);
    g_mutex_clear(&d->msix.lock);
}

void pci_device_reset(PciDevice *d)
{
    /* Firmware-assigned BARs and decoding stay; MSI-X goes off and masked. */
    if (d->msix.nr_vectors) {
        g_mutex_lock(&d->msix.lock);
        pci_set_word(d->config + d->msix.cap + 2,
                     get_word(d->config + d->msix.cap + 2) &
                     ~(PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL));
        for (int v = 0; v < d->msix.nr_vectors; v++) {
            uint8_t *e = d->msix.table + v * PCI_MSIX_ENTRY_BYTES;
            memset(e, 0, PCI_MSIX_ENTRY_BYTES);
            e[12] = 1;
        }
        memset(d->msix.pba, 0, ((d->msix.nr_vectors + 63) / 64) * 8);
        g_mutex_unlock(&d->msix.lock);
    }
}

void pci_register_bar(PciDevice *d, int n, uint64_t size, bool io, bool is64,
                      const IoOps *ops, void *opaque)
{
    PciBar *b = &d->bars[n];
    uint32_t type = io ? 0x1 : (is64 ? 0x4 : 0x0);
    uint64_t mask = ~(size - 1);

    b->size = size;
    b->io = io;
    b->is64 = is64;
    b->region = (IoRegion){ .name = d->name, .size = size, .ops = ops,
                            .opaque = opaque, .pio = io };
    pci_set_long(d->config + PCI_BAR0 + 4 * n, type);
    pci_set_long(d->wmask + PCI_BAR0 + 4 * n,
                 (uint32_t)mask & (io ? ~0x3u : ~0xfu));
    if (is64) {
        pci_set_long(d->wmask + PCI_BAR0 + 4 * n + 4, (uint32_t)(mask >> 32));
    }
}

uint8_t pci_add_capability(PciDevice *d, uint8_t id, uint8_t len)
{
    uint8_t off = d->next_cap;

    if (off + len > PCI_CONFIG_BYTES || off == 0) {
        return 0;
    }
    d->config[off] = id;
    d->config[off + 1] = d->config[PCI_CAP_PTR];   /* push on the list */
    d->config[PCI_CAP_PTR] = off;
    pci_set_word(d->config + PCI_STATUS,
                 get_word(d->config + PCI_STATUS) | PCI_STATUS_CAP_LIST);
    d->next_cap = (uint8_t)((off + len + 3) & ~3);
    return off;
}

void pci_bus_assign_bars(PciBus *pb)
{
    for (int s = 0; s < PCI_SLOTS; s++) {
        PciDevice *d = pb->slots[s];
        uint16_t cmd = 0;
        if (!d) {
            continue;
        }
        for (int n = 0; n < PCI_NR_BARS; n++) {
            PciBar *b = &d->bars[n];
            if (!b->size) {
                continue;
            }
            if (b->io) {
                pb->io_next = (uint32_t)((pb->io_next + b->size - 1) & ~(b->size - 1));
                pci_set_long(d->config + PCI_BAR0 + 4 * n, pb->io_next | 1);
                pb->io_next += b->size;
                cmd |= PCI_COMMAND_IO;
            } else {
                uint64_t a = (pb->mmio_next + b->size - 1) & ~(b->size - 1);
                pci_set_long(d->config + PCI_BAR0 + 4 * n,
                             (uint32_t)a | (b->is64 ? 0x4 : 0));
                if (b->is64) {
                    pci_set_long(d->config + PCI_BAR0 + 4 * n + 4, a >> 32);
                }
                pb->mmio_next = a + b->size;
                cmd |= PCI_COMMAND_MEMORY;
            }
        }
        if (cmd) {
            cmd |= PCI_COMMAND_MASTER;
        }
        pci_set_word(d->config + PCI_COMMAND, cmd);
        pci_update_bars(d);
    }
}

/* -- MSI-X -------------------------------------------------------------- */

bool pci_msix_init(PciDevice *d, uint16_t nr_vectors, int bar,
                   uint32_t table_off, uint32_t pba_off)
{
    PciMsix *m = &d->msix;
    uint8_t cap = pci_add_capability(d, PCI_CAP_ID_MSIX, 12);

    if (!cap || nr_vectors == 0 || nr_vectors > 2048) {
        return false;
    }
    m->nr_vectors = nr_vectors;
    m->cap = cap;
    m->bar = bar;
    m->table_off = table_off;
    m->pba_off = pba_off;
    m->table = g_malloc0(nr_vectors * PCI_MSIX_ENTRY_BYTES);
    m->pba = g_malloc0(((nr_vectors + 63) / 64) * 8);
    for (int v = 0; v < nr_vectors; v++) {
        m->table[v * PCI_MSIX_ENTRY_BYTES + 12] = 1;     /* masked */
    }
    pci_set_word(d->config + cap + 2, nr_vectors - 1);
    pci_set_long(d->config + cap + 4, table_off | bar);
    pci_set_long(d->config + cap + 8, pba_off | bar);
    pci_set_word(d->wmask + cap + 2,
                 PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL);
    return true;
}

bool pci_msix_enabled(PciDevice *d)
{
    return d->msix.nr_vectors &&
           (get_word(d->config + d->msix.cap + 2) & PCI_MSIX_FLAGS_ENABLE);
}

/* Returns true with addr/data if vector may fire now; else marks pending. */
static bool msix_ready_locked(PciDevice *d, uint16_t v, uint64_t *addr,
                              uint32_t *data, bool set_pending)
{
    PciMsix *m = &d->msix;
    uint8_t *e = m->table + v * PCI_MSIX_ENTRY_BYTES;
    uint16_t ctl = get_word(d->config + m->cap + 2);

    if ((ctl & PCI_MSIX_FLAGS_MASKALL) || (e[12] & 1)) {
        if (set_pending) {
            m->pba[v / 64] |= 1ull << (v % 64);
        }
        return false;
    }
    *addr = pci_get_long(e) | (uint64_t)pci_get_long(e + 4) << 32;
    *data = pci_get_long(e + 8);
    return true;
}

void pci_msix_notify(PciDevice *d, uint16_t vector)
{
    PciMsix *m = &d->msix;
    uint64_t addr;
    uint32_t data;
    bool fire;

    if (vector >= m->nr_vectors || !pci_msix_enabled(d)) {
        return;
    }
    g_mutex_lock(&m->lock);
    fire = msix_ready_locked(d, vector, &addr, &data, true);
    g_mutex_unlock(&m->lock);
    if (fire) {
        dev_bus_msi(d->bus->bus, addr, data);
    }
}

static void msix_deliver_pending(PciDevice *d)
{
    PciMsix *m = &d->msix;

    if (!pci_msix_enabled(d)) {
        return;
    }
    for (int v = 0; v < m->nr_vectors; v++) {
        uint64_t addr;
        uint32_t data;
        bool fire = false;
        g_mutex_lock(&m->lock);
        if ((m->pba[v / 64] >> (v % 64)) & 1) {
            fire = msix_ready_locked(d, v, &addr, &data, false);
            if (fire) {
                m->pba[v / 64] &= ~(1ull << (v % 64));
            }
        }
        g_mutex_unlock(&m->lock);
        if (fire) {
            dev_bus_msi(d->bus->bus, addr, data);
        }
    }
}

uint64_t pci_msix_read(PciDevice *d, uint64_t off, unsigned size)
{
    PciMsix *m = &d->msix;
    uint64_t v = 0;
    uint64_t tbytes = (uint64_t)m->nr_vectors * PCI_MSIX_ENTRY_BYTES;
    uint64_t pbytes = ((m->nr_vectors + 63) / 64) * 8;

    g_mutex_lock(&m->lock);
    if (off >= m->table_off && off - m->table_off < tbytes &&
        size <= tbytes - (off - m->table_off)) {
        memcpy(&v, m->table + (off - m->table_off), size);
    } else if (off >= m->pba_off && off - m->pba_off < pbytes &&
               size <= pbytes - (off - m->pba_off)) {
        memcpy(&v, (uint8_t *)m->pba + (off - m->pba_off), size);
    }
    g_mutex_unlock(&m->lock);
    return v;
}

void pci_msix_write(PciDevice *d, uint64_t off, uint64_t val, unsigned size)
{
    PciMsix *m = &d->msix;
    uint64_t tbytes = (uint64_t)m->nr_vectors * PCI_MSIX_ENTRY_BYTES;

    if (off < m->table_off || off - m->table_off >= tbytes ||
        size > tbytes - (off - m->table_off)) {
        return;     /* the PBA is read only */
    }
    g_mutex_lock(&m->lock);
    memcpy(m->table + (off - m->table_off), &val, size);
    g_mutex_unlock(&m->lock);
    msix_deliver_pending(d);
}
