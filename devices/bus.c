/*
 * Region lookup and RAM translation for the machine's address spaces.
 * A handful of regions per machine: a linear scan under a mutex is cheaper
 * than anything cleverer, and the lock is dropped before a device runs.
 */
#include "config.h"

#include <string.h>

#include "common/log.h"
#include "devices/bus.h"

void dev_bus_init(DevBus *bus)
{
    memset(bus, 0, sizeof(*bus));
    g_mutex_init(&bus->lock);
    bus->pio = g_ptr_array_new();
    bus->mmio = g_ptr_array_new();
}

void dev_bus_destroy(DevBus *bus)
{
    g_ptr_array_free(bus->pio, TRUE);
    g_ptr_array_free(bus->mmio, TRUE);
    g_mutex_clear(&bus->lock);
}

bool dev_bus_add_ram(DevBus *bus, uint64_t gpa, uint64_t size, void *hva)
{
    if (bus->nr_ram == DEV_BUS_MAX_RAM) {
        return false;
    }
    bus->ram[bus->nr_ram++] = (RamRange){ gpa, size, hva };
    return true;
}

void *dev_bus_ram_ptr(DevBus *bus, uint64_t gpa, uint64_t len)
{
    for (int i = 0; i < bus->nr_ram; i++) {
        const RamRange *r = &bus->ram[i];
        if (gpa >= r->gpa && gpa - r->gpa < r->size &&
            len <= r->size - (gpa - r->gpa)) {
            return r->hva + (gpa - r->gpa);
        }
    }
    return NULL;
}

void dev_bus_map(DevBus *bus, IoRegion *r, uint64_t addr)
{
    GPtrArray *list = r->pio ? bus->pio : bus->mmio;

    g_mutex_lock(&bus->lock);
    if (!r->mapped) {
        g_ptr_array_add(list, r);
    }
    r->addr = addr;
    r->mapped = true;
    g_mutex_unlock(&bus->lock);
    FERRY_TRACE_POINT(DEVICES, "bus map %s %s addr=0x%" G_GINT64_MODIFIER
                      "x size=0x%" G_GINT64_MODIFIER "x",
                      r->pio ? "pio" : "mmio", r->name, addr, r->size);
}

void dev_bus_unmap(DevBus *bus, IoRegion *r)
{
    g_mutex_lock(&bus->lock);
    if (r->mapped) {
        g_ptr_array_remove(r->pio ? bus->pio : bus->mmio, r);
        r->mapped = false;
    }
    g_mutex_unlock(&bus->lock);
}

static IoRegion *find_region(DevBus *bus, bool pio, uint64_t addr)
{
    GPtrArray *list = pio ? bus->pio : bus->mmio;
    IoRegion *found = NULL;

    g_mutex_lock(&bus->lock);
    for (guint i = 0; i < list->len; i++) {
        IoRegion *r = g_ptr_array_index(list, i);
        if (addr >= r->addr && addr - r->addr < r->size) {
            found = r;
            break;
        }
    }
    g_mutex_unlock(&bus->lock);
    return found;
}

bool dev_bus_access(DevBus *bus, bool pio, uint64_t addr, uint8_t *data,
                    unsigned size, bool is_write)
{
    IoRegion *r = find_region(bus, pio, addr);
    uint64_t off, val = 0;

    if (size > 8) {
        size = 8;
    }
    if (!r) {
        if (!is_write) {
            memset(data, 0xff, size);
        }
        FERRY_TRACE_POINT(DEVICES, "bus unclaimed %s %s addr=0x%"
                          G_GINT64_MODIFIER "x size=%u",
                          pio ? "pio" : "mmio", is_write ? "write" : "read",
                          addr, size);
        return false;
    }
    off = addr - r->addr;
    if (is_write) {
        memcpy(&val, data, size);
        r->ops->write(r->opaque, off, val, size);
    } else {
        val = r->ops->read(r->opaque, off, size);
        memcpy(data, &val, size);
    }
    return true;
}

/* Bytes of RAM from gpa to the end of its range, 0 if gpa is not RAM. */
static uint64_t ram_run(DevBus *bus, uint64_t gpa)
{
    for (int i = 0; i < bus->nr_ram; i++) {
        const RamRange *r = &bus->ram[i];
        if (gpa >= r->gpa && gpa - r->gpa < r->size) {
            return r->size - (gpa - r->gpa);
        }
    }
    return 0;
}

void dev_bus_rw(DevBus *bus, uint64_t gpa, void *buf, uint64_t len,
                bool is_write)
{
    uint8_t *p = buf;

    while (len > 0) {
        uint64_t n = MIN(ram_run(bus, gpa), len);
        if (n > 0) {
            uint8_t *hva = dev_bus_ram_ptr(bus, gpa, n);
            if (is_write) {
                memcpy(hva, p, n);
            } else {
                memcpy(p, hva, n);
            }
        } else {
            n = 1;
            dev_bus_access(bus, false, gpa, p, 1, is_write);
        }
        p += n;
        gpa += n;
        len -= n;
    }
}
