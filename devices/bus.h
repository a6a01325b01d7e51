/*
 * The machine's address spaces as devices see them: guest RAM ranges (for
 * DMA), port and MMIO regions that devices register, and the interrupt
 * wires to the accelerator.  vmm/ fills it in; cpu/ backends reach it only
 * through the machine's CpuBus callbacks.
 */
#ifndef FERRY_DEVICES_BUS_H
#define FERRY_DEVICES_BUS_H

#include <stdbool.h>
#include <stdint.h>

#include <glib.h>

typedef struct IoOps {
    /* off is from the region's start; size is 1, 2, 4 or 8 */
    uint64_t (*read)(void *opaque, uint64_t off, unsigned size);
    void (*write)(void *opaque, uint64_t off, uint64_t val, unsigned size);
} IoOps;

/* A device's window in port or memory space; owned by the device. */
typedef struct IoRegion {
    const char *name;
    uint64_t addr;        /* guest address while mapped */
    uint64_t size;        /* bytes */
    const IoOps *ops;
    void *opaque;
    bool pio;             /* port space, else memory space */
    bool mapped;          /* guarded by DevBus.lock */
} IoRegion;

typedef struct RamRange {
    uint64_t gpa;
    uint64_t size;
    uint8_t *hva;
} RamRange;

#define DEV_BUS_MAX_RAM 4

typedef struct DevBus {
    RamRange ram[DEV_BUS_MAX_RAM];   /* fixed once the machine runs */
    int nr_ram;

    GMutex lock;                     /* guards the region lists */
    GPtrArray *pio;                  /* IoRegion* */
    GPtrArray *mmio;                 /* IoRegion* */

    /* interrupt wiring, set by the machine */
    void *irq_opaque;
    void (*set_irq)(void *opaque, int gsi, bool level);
    void (*signal_msi)(void *opaque, uint64_t addr, uint32_t data);
    /* optional fast path for doorbells (KVM ioeventfd); may be NULL */
    bool (*add_ioeventfd)(void *opaque, uint64_t gpa, unsigned len, int fd);
    void (*del_ioeventfd)(void *opaque, uint64_t gpa, unsigned len, int fd);
} DevBus;

void dev_bus_init(DevBus *bus);
void dev_bus_destroy(DevBus *bus);
bool dev_bus_add_ram(DevBus *bus, uint64_t gpa, uint64_t size, void *hva);

/*
 * Host pointer for guest [gpa, gpa+len) if all of it is RAM in one range,
 * else NULL.  Overflow-safe: len and gpa come from guests.
 */
void *dev_bus_ram_ptr(DevBus *bus, uint64_t gpa, uint64_t len);

void dev_bus_map(DevBus *bus, IoRegion *r, uint64_t addr);
void dev_bus_unmap(DevBus *bus, IoRegion *r);

/*
 * Dispatch one access.  Unclaimed reads return all ones, unclaimed writes
 * are dropped (as on a PC); returns whether a region claimed it.
 */
bool dev_bus_access(DevBus *bus, bool pio, uint64_t addr, uint8_t *data,
                    unsigned size, bool is_write);

/* Copy between guest memory (RAM or MMIO) and buf: qtest's read/write. */
void dev_bus_rw(DevBus *bus, uint64_t gpa, void *buf, uint64_t len,
                bool is_write);

static inline void dev_bus_set_irq(DevBus *bus, int gsi, bool level)
{
    if (bus->set_irq) {
        bus->set_irq(bus->irq_opaque, gsi, level);
    }
}

static inline void dev_bus_msi(DevBus *bus, uint64_t addr, uint32_t data)
{
    if (bus->signal_msi) {
        bus->signal_msi(bus->irq_opaque, addr, data);
    }
}

#endif
