/*
 * One vCPU interface, several backends ("accelerators"): kvm (ioctls on
 * /dev/kvm, in-kernel irqchip and PIT), qtest (no CPU: a socket protocol
 * drives I/O) and, later, jit.  The machine (vmm/) owns the address space
 * and hands each backend a CpuBus; backends call it for every port and MMIO
 * access they do not handle themselves.
 *
 * Threads: vcpu_run() runs on the vCPU's own thread; vcpu_kick(),
 * set_irq() and signal_msi() may be called from any thread.
 */
#ifndef FERRY_CPU_VCPU_H
#define FERRY_CPU_VCPU_H

#include <stdbool.h>
#include <stdint.h>

#include <glib.h>

#include "cpu/x86-state.h"

/* What the guest touches that the backend leaves to the machine. */
typedef struct CpuBus {
    void *opaque;
    /* data holds size bytes, little-endian; reads fill it */
    void (*pio)(void *opaque, uint16_t port, uint8_t *data, unsigned size,
                bool is_write);
    void (*mmio)(void *opaque, uint64_t gpa, uint8_t *data, unsigned size,
                 bool is_write);
    /* host address of [gpa, gpa+len) if it is all RAM, else NULL */
    void *(*ram_ptr)(void *opaque, uint64_t gpa, uint64_t len);
} CpuBus;

/* Why vcpu_run() returned. */
typedef enum {
    VCPU_EXIT_KICKED,      /* vcpu_kick() or a signal: look at machine state */
    VCPU_EXIT_SHUTDOWN,    /* triple fault: the PC resets */
    VCPU_EXIT_RESET,       /* the backend saw a reset request */
    VCPU_EXIT_POWEROFF,    /* the backend saw a poweroff request */
    VCPU_EXIT_ERROR,       /* the guest did something the backend cannot do;
                              errp says what */
} VcpuExit;

typedef struct Accel Accel;
typedef struct Vcpu Vcpu;
typedef struct AccelOps AccelOps;

typedef struct AccelConfig {
    int smp;               /* number of vCPUs */
    CpuBus bus;
    const char *qtest;     /* qtest: "unix:PATH" to connect to */
    bool cpuid_baseline;   /* kvm: hide features a paravirtual KVM
                              cannot emulate at CPL0 (docs/run.md) */
} AccelConfig;

struct Accel {
    const AccelOps *ops;
    AccelConfig cfg;
};

struct Vcpu {
    Accel *accel;
    int index;
};

struct AccelOps {
    const char *name;
    Accel *(*create)(const AccelConfig *cfg, GError **errp);
    /* Make [gpa, gpa+size) guest RAM backed by hva; slot numbers from 0. */
    bool (*map_ram)(Accel *a, int slot, uint64_t gpa, uint64_t size,
                    void *hva, GError **errp);
    Vcpu *(*vcpu_create)(Accel *a, int index, GError **errp);
    /* Run until something needs the machine; see VcpuExit. */
    VcpuExit (*vcpu_run)(Vcpu *v, GError **errp);
    void (*vcpu_kick)(Vcpu *v);
    bool (*vcpu_get_state)(Vcpu *v, X86CpuState *s, GError **errp);
    bool (*vcpu_set_state)(Vcpu *v, const X86CpuState *s, GError **errp);
    void (*vcpu_destroy)(Vcpu *v);
    /* Interrupts: an ISA/IOAPIC line (gsi) and an MSI message. */
    void (*set_irq)(Accel *a, int gsi, bool level);
    void (*signal_msi)(Accel *a, uint64_t addr, uint32_t data);
    /*
     * Optional: let a guest write of len bytes at MMIO gpa signal fd without
     * an exit to the machine (KVM ioeventfd).  false: not supported, the
     * machine's own dispatch sees the write.
     */
    bool (*add_ioeventfd)(Accel *a, uint64_t gpa, unsigned len, int fd);
    void (*del_ioeventfd)(Accel *a, uint64_t gpa, unsigned len, int fd);
    void (*destroy)(Accel *a);
};

extern const AccelOps kvm_accel_ops;
extern const AccelOps qtest_accel_ops;

/* The backend called name, or NULL with errp saying why (jit: not yet). */
const AccelOps *accel_find(const char *name, GError **errp);

#endif
