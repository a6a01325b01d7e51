/*
 * PCI: one bus (bus 0) behind a host bridge with the PC's type-1
 * configuration mechanism (ports 0xcf8 address, 0xcfc-0xcff data), BARs
 * that map into the machine's memory or port space when the guest enables
 * decoding, capability lists, and MSI-X (PCI Local Bus 3.0, PCI spec 6.8.2).
 */
#ifndef FERRY_DEVICES_PCI_H
#define FERRY_DEVICES_PCI_H

#include "devices/bus.h"
#include "devices/vmstate.h"

#define PCI_CONFIG_BYTES 256
#define PCI_NR_BARS 6
#define PCI_SLOTS 32

/* Config space offsets and bits (PCI Local Bus 3.0, 6.2). */
#define PCI_VENDOR_ID        0x00
#define PCI_DEVICE_ID        0x02
#define PCI_COMMAND          0x04
#define PCI_STATUS           0x06
#define PCI_REVISION_ID      0x08
#define PCI_CLASS_PROG       0x09
#define PCI_HEADER_TYPE      0x0e
#define PCI_BAR0             0x10
#define PCI_SUBSYSTEM_VENDOR 0x2c
#define PCI_SUBSYSTEM_ID     0x2e
#define PCI_CAP_PTR          0x34
#define PCI_INTERRUPT_LINE   0x3c
#define PCI_INTERRUPT_PIN    0x3d
#define PCI_COMMAND_IO       0x1
#define PCI_COMMAND_MEMORY   0x2
#define PCI_COMMAND_MASTER   0x4
#define PCI_STATUS_CAP_LIST  0x10
#define PCI_CAP_ID_MSIX      0x11
#define PCI_CAP_ID_VNDR      0x09

/* The guest-visible PCI hole the bus hands BAR addresses out from. */
#define PCI_MMIO_BASE        0xc0000000ull
#define PCI_MMIO_END         0xfec00000ull
#define PCI_IO_BASE          0xc000u

typedef struct PciBus PciBus;
typedef struct PciDevice PciDevice;

typedef struct PciBar {
    uint64_t size;          /* power of two; 0 = unused */
    bool io;                /* port space */
    bool is64;              /* 64-bit memory BAR (takes two slots) */
    IoRegion region;        /* mapped while decoding is on */
} PciBar;

typedef struct PciMsix {
    uint16_t nr_vectors;    /* 0: no MSI-X */
    uint8_t cap;            /* capability offset in config space */
    int bar;
    uint32_t table_off, pba_off;
    uint8_t *table;         /* 16 bytes per vector, guarded by lock */
    uint64_t *pba;          /* pending bits */
    GMutex lock;
} PciMsix;

typedef struct PciDeviceOps {
    /* after the generic write took effect; may be NULL */
    void (*config_write)(PciDevice *d, uint32_t off, uint32_t val,
                         unsigned len);
    /* device part of a config read (vendor capabilities); may be NULL */
    void (*config_read)(PciDevice *d, uint32_t off, unsigned len);
    /* memory or I/O decoding of a BAR changed (moved, on, off) */
    void (*bar_mapped)(PciDevice *d, int bar);
} PciDeviceOps;

struct PciDevice {
    PciBus *bus;
    const PciDeviceOps *ops;
    char name[32];             /* "virtio-blk@00:03.0" */
    int slot;
    uint8_t config[PCI_CONFIG_BYTES];  /* guarded by the bus lock */
    uint8_t wmask[PCI_CONFIG_BYTES];   /* bits the guest may write */
    uint8_t next_cap;          /* where the next capability goes */
    PciBar bars[PCI_NR_BARS];
    PciMsix msix;
};

PciBus *pci_bus_new(DevBus *bus);
void pci_bus_free(PciBus *pb);
DevBus *pci_bus_dev_bus(PciBus *pb);

/* Set up identity and header, then plug into the next free slot. */
bool pci_device_init(PciDevice *d, PciBus *pb, const PciDeviceOps *ops,
                     const char *name, uint16_t vendor, uint16_t device,
                     uint32_t class_code, uint8_t revision, GError **errp);
void pci_device_unplug(PciDevice *d);
/* Back to power-on config values (BARs stay as assigned). */
void pci_device_reset(PciDevice *d);

void pci_register_bar(PciDevice *d, int n, uint64_t size, bool io, bool is64,
                      const IoOps *ops, void *opaque);
/* Add a capability of len bytes; returns its offset (0 if full). */
uint8_t pci_add_capability(PciDevice *d, uint8_t id, uint8_t len);

/* MSI-X with its table and PBA in one of the device's memory BARs. */
bool pci_msix_init(PciDevice *d, uint16_t nr_vectors, int bar,
                   uint32_t table_off, uint32_t pba_off);
/* Send vector (pending bit if masked); no-op if MSI-X is off. */
void pci_msix_notify(PciDevice *d, uint16_t vector);
bool pci_msix_enabled(PciDevice *d);
/* The BAR ops of the MSI-X table/PBA window (the device forwards to it). */
uint64_t pci_msix_read(PciDevice *d, uint64_t off, unsigned size);
void pci_msix_write(PciDevice *d, uint64_t off, uint64_t val, unsigned size);

/*
 * The PC reset control register (port 0xcf9) shares the 0xcf8 dword; the
 * machine gets its byte writes here.
 */
void pci_bus_set_reset_hook(PciBus *pb, void (*fn)(void *opaque, uint8_t v),
                            void *opaque);

/* Give every BAR an address and turn decoding on, as firmware does. */
void pci_bus_assign_bars(PciBus *pb);
/* Guest address of a BAR while mapped, else 0. */
uint64_t pci_bar_addr(PciDevice *d, int n);

/* Config accesses as the type-1 ports do them (tests and qtest use them). */
uint32_t pci_config_read(PciDevice *d, uint32_t off, unsigned len);
void pci_config_write(PciDevice *d, uint32_t off, uint32_t val, unsigned len);

static inline void pci_set_word(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static inline void pci_set_long(uint8_t *p, uint32_t v)
{
    pci_set_word(p, (uint16_t)v);
    pci_set_word(p + 2, (uint16_t)(v >> 16));
}

static inline uint32_t pci_get_long(const uint8_t *p)
{
    return p[0] | (p[1] << 8) | (p[2] << 16) | ((uint32_t)p[3] << 24);
}

extern const VmStateDesc pci_device_vmstate;

#endif
