/*
 * The machine behind `ferry run`: guest RAM in a memfd, the PC platform
 * (8250 serial, PCI host bridge, virtio-blk and virtio-rng on virtio-pci,
 * the power, reset and power button ports), one thread per vCPU, and the
 * life cycle in QEMU's run states, which QMP reports (query-status):
 *
 *   prelaunch  vCPUs hold their boot state (-S, or reset while not running)
 *   running    vCPUs run
 *   paused     QMP stop; the disks were flushed
 *   shutdown   the guest or a signal shut it down, with --no-shutdown
 *   internal-error  the accelerator failed, with --no-shutdown
 *
 * Transitions (the main thread makes every one; vmm/machine.c):
 *   prelaunch/paused --cont--> running   (RESUME)
 *   running --stop--> paused             (STOP)
 *   any --reset (guest or system_reset)--> running, or prelaunch if it
 *        was not running (RESET); with --no-reboot a reset is a shutdown
 *   any --poweroff, signal--> exit, or shutdown with --no-shutdown
 *        (SHUTDOWN, then STOP if it was running)
 *   any --quit--> exit (SHUTDOWN)
 *   shutdown/internal-error --cont--> refused until a reset
 * A vCPU thread never changes the state itself: it posts a request
 * (vmm_machine_request) and parks until the main thread has acted.
 */
#ifndef FERRY_VMM_MACHINE_H
#define FERRY_VMM_MACHINE_H

#include <stdbool.h>
#include <stdint.h>

#include <glib.h>

#include "vmm/boot.h"

/* Exit codes of `ferry run` (docs/run.md). */
enum {
    VMM_EXIT_POWEROFF = 0,    /* guest powered off, or QMP quit */
    VMM_EXIT_FAILURE = 1,     /* ferry could not start or failed */
    VMM_EXIT_RESET = 2,       /* guest reset with --no-reboot */
    VMM_EXIT_GUEST_ERROR = 3, /* the accelerator cannot run the guest on */
    VMM_EXIT_SIGNAL = 4,      /* SIGINT or SIGTERM */
};

typedef struct VmmDriveConf {
    char *spec;               /* node spec: file, qcow2 chain, nbd://, json: */
    char *format;             /* or NULL to probe */
    char *id;                 /* drive id for QMP (default "disk<N>") */
    char *serial;             /* GET_ID */
    bool read_only;
    int num_queues;           /* 0: one per vCPU, at most VIRTIO_MAX_QUEUES */
    int queue_size;           /* 0: 256 */
    bool cache_unsafe;        /* flush is a no-op */
    bool direct;              /* O_DIRECT */
} VmmDriveConf;

/* Parse "NODE-SPEC[,read-only=on,num-queues=N,...]" (vmm/config.c). */
VmmDriveConf *vmm_parse_drive(const char *arg, GError **errp);
void vmm_drive_conf_free(VmmDriveConf *d);

typedef struct VmmConfig {
    const char *accel;        /* "kvm", "qtest" */
    int smp;
    uint64_t ram_bytes;
    const char *kernel, *initrd, *append;
    BootProtocol boot;
    GPtrArray *drives;        /* VmmDriveConf* */
    const char *serial;       /* chardev spec */
    const char *qtest;
    const char *name;
    bool no_reboot;
    bool no_shutdown;         /* stay (run state shutdown) when the guest
                                 powers off, as QEMU's -no-shutdown */
    bool start_paused;        /* -S: start in prelaunch, wait for cont */
    bool rng;                 /* add virtio-rng */
    bool cpuid_baseline;
} VmmConfig;

typedef struct Machine Machine;

typedef enum {
    VMM_REQ_NONE,
    VMM_REQ_RESET,            /* the guest reset the machine */
    VMM_REQ_SYSTEM_RESET,     /* QMP system_reset */
    VMM_REQ_POWEROFF,         /* the guest powered off */
    VMM_REQ_QUIT,             /* QMP quit */
    VMM_REQ_ERROR,
    VMM_REQ_SIGNAL,
} VmmRequest;

/* QEMU's RunState values that ferry's machine takes. */
typedef enum {
    VMM_RUN_PRELAUNCH,
    VMM_RUN_RUNNING,
    VMM_RUN_PAUSED,
    VMM_RUN_SHUTDOWN,
    VMM_RUN_INTERNAL_ERROR,
} VmmRunState;

/* QEMU's name of a run state ("running", "paused", ...). */
const char *vmm_run_state_name(VmmRunState st);

Machine *vmm_machine_new(const VmmConfig *cfg, GError **errp);
/* Run until the machine shuts down; returns the exit code. */
int vmm_machine_run(Machine *m);
void vmm_machine_free(Machine *m);

/* Any thread: ask the main thread for a transition (msg may be NULL). */
void vmm_machine_request(Machine *m, VmmRequest req, const char *msg);

/* Main thread (QMP): the transitions above and what they report. */
VmmRunState vmm_machine_run_state(Machine *m);
void vmm_machine_stop(Machine *m);
bool vmm_machine_cont(Machine *m, GError **errp);
/* Press the power button: POWERDOWN, and the guest sees the event. */
void vmm_machine_powerdown(Machine *m);

/* vmm/qmp-cmds.c: the VM's QMP commands and events (one machine). */
void vmm_qmp_register(Machine *m);
void vmm_qmp_unregister(void);

#endif
