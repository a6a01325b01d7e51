/*
 * Private to vmm/: the machine's fields, shared by machine.c (life cycle,
 * devices) and qmp-cmds.c (the VM's QMP commands read them on the main
 * thread).
 */
#ifndef FERRY_VMM_INTERNAL_H
#define FERRY_VMM_INTERNAL_H

#include <glib.h>

#include "blockdev/backend.h"
#include "cpu/vcpu.h"
#include "devices/bus.h"
#include "devices/pci.h"
#include "devices/serial.h"
#include "devices/virtio-blk.h"
#include "devices/virtio-pci.h"
#include "devices/virtio-rng.h"
#include "vmm/chardev.h"
#include "vmm/machine.h"

/*
 * The power button (docs/run.md, "Power button"): a 32-bit event register
 * in port space, in the manner of an ACPI Generic Event Device.  A read
 * returns the pending events and clears them; GSI 9 is high while any is
 * pending.  ferry writes no ACPI tables yet, so a guest knows it by
 * convention (testos polls it); a DSDT describing it is the next step.
 */
#define VMM_GED_PORT          0x610
#define VMM_GED_GSI           9
#define VMM_GED_POWER_BUTTON  (1u << 0)

typedef struct MachineDrive {
    VmmDriveConf *conf;
    BlockBackend *blk;
    VirtioBlk *dev;
    VirtioPci *pci;
    char *qdev;                        /* QOM-style path QMP reports */
} MachineDrive;

struct Machine {
    VmmConfig cfg;
    const AccelOps *ops;
    Accel *accel;
    int nr_vcpus;
    Vcpu **vcpus;
    GThread **threads;

    int memfd;
    uint8_t *ram;
    uint64_t ram_bytes, low_bytes, high_bytes;

    DevBus bus;
    PciBus *pci;
    Serial *serial;
    Chardev *chr;
    GPtrArray *drives;                 /* MachineDrive* */
    VirtioRng *rng;
    VirtioPci *rng_pci;
    IoRegion pm_region;                /* 0x600: sleep control (S5) */
    IoRegion kbd_region;               /* 0x64: i8042 command (reset) */
    IoRegion ged_region;               /* VMM_GED_PORT: power button */
    GMutex ged_lock;
    uint32_t ged_pending;              /* VMM_GED_* bits; ged_lock */

    X86CpuState boot_state;
    BootInfo boot_info;

    VmmRunState state;                 /* main thread only */

    GMutex lock;                       /* everything below */
    GCond cond;
    int hold;                          /* >0: vCPUs must park */
    int parked;                        /* vCPUs parked now */
    int started;                       /* vCPU threads that have started */
    int *tids;                         /* each vCPU thread's id, 0 before */
    bool quit;                         /* vCPU threads exit */
    VmmRequest pending;                /* being handled by the main thread */
    char *pending_msg;
    VmmRequest deferred;               /* arrived while pending was busy */
    char *deferred_msg;
    int exit_code;

    GMainLoop *loop;
    guint sig_int, sig_term;
};

#endif
