/*
 * The machine behind `ferry run`: guest RAM in a memfd, the PC platform
 * (8250 serial, PCI host bridge, virtio-blk and virtio-rng on virtio-pci,
 * the power and reset ports), one thread per vCPU, and the life cycle:
 * running, paused, reset, powered off.
 *
 * Life cycle (the main thread makes every transition):
 *   RUNNING --stop--> PAUSED --cont--> RUNNING
 *   RUNNING/PAUSED --guest reset or system_reset--> reset, then RUNNING
 *   any --poweroff, quit, error, signal--> SHUTDOWN (vCPU threads joined)
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
    const char *qmp;          /* QMP socket spec, or NULL */
    const char *name;
    bool no_reboot;
    bool rng;                 /* add virtio-rng */
    bool cpuid_baseline;
} VmmConfig;

typedef struct Machine Machine;

typedef enum {
    VMM_REQ_NONE,
    VMM_REQ_RESET,
    VMM_REQ_POWEROFF,
    VMM_REQ_QUIT,
    VMM_REQ_ERROR,
    VMM_REQ_SIGNAL,
} VmmRequest;

Machine *vmm_machine_new(const VmmConfig *cfg, GError **errp);
/* Run until the machine shuts down; returns the exit code. */
int vmm_machine_run(Machine *m);
void vmm_machine_free(Machine *m);

/* Any thread: ask the main thread for a transition (msg may be NULL). */
void vmm_machine_request(Machine *m, VmmRequest req, const char *msg);

/* Main thread (QMP): pause and resume every vCPU. */
void vmm_machine_stop(Machine *m);
void vmm_machine_cont(Machine *m);
bool vmm_machine_running(Machine *m);

#endif
