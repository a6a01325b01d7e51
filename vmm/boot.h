/*
 * Loading a guest kernel into RAM and building the vCPU state its boot
 * protocol asks for: Linux bzImage through the 64-bit boot protocol, and
 * ELF kernels through PVH (Xen's direct boot ABI) when they carry the PVH
 * note, else through their 64-bit ELF entry (specs/x86-boot.md).
 */
#ifndef FERRY_VMM_BOOT_H
#define FERRY_VMM_BOOT_H

#include "cpu/x86-state.h"
#include "devices/bus.h"

/* Fixed guest-physical layout of what the loader writes (x86-boot.md 2). */
#define BOOT_GDT_GPA        0x500
#define BOOT_IDT_GPA        0x520
#define BOOT_PVH_INFO_GPA   0x6000
#define BOOT_PVH_MODS_GPA   0x6040
#define BOOT_ZERO_PAGE_GPA  0x7000     /* or the PVH memory map */
#define BOOT_STACK_GPA      0x8ff0
#define BOOT_PML4_GPA       0x9000
#define BOOT_PDPT_GPA       0xa000
#define BOOT_PD_GPA         0xb000     /* 4 pages: 4 GiB of 2 MiB pages */
#define BOOT_CMDLINE_GPA    0x20000
#define BOOT_CMDLINE_MAX    0x10000
#define BOOT_KERNEL_GPA     0x100000   /* bzImage protected-mode part */
#define BOOT_LOW_RAM_END    0x9fc00    /* below: RAM; up to 1 MiB: reserved */

typedef enum {
    BOOT_AUTO,      /* bzImage by its header; ELF: PVH if noted, else elf64 */
    BOOT_LINUX64,   /* bzImage, 64-bit boot protocol */
    BOOT_PVH,       /* ELF with XEN_ELFNOTE_PHYS32_ENTRY */
    BOOT_ELF64,     /* ELF, 64-bit entry with the Linux 64-bit CPU state */
} BootProtocol;

typedef struct BootParams {
    const char *kernel;
    const char *initrd;          /* may be NULL */
    const char *cmdline;         /* may be NULL */
    BootProtocol protocol;
    uint64_t low_ram_bytes;      /* RAM from 0 (below the PCI hole) */
    uint64_t high_ram_bytes;     /* RAM from 4 GiB */
} BootParams;

typedef struct BootInfo {
    BootProtocol protocol;       /* what was used */
    uint64_t entry;              /* guest-physical */
    uint64_t kernel_start, kernel_end;
    uint64_t initrd_gpa, initrd_bytes;
    uint64_t e820_entries;
} BootInfo;

bool boot_parse_protocol(const char *s, BootProtocol *out, GError **errp);
const char *boot_protocol_name(BootProtocol p);

/*
 * Load the kernel (and initrd, cmdline) into the RAM of bus and fill bsp
 * with the boot CPU's entry state.  Every length and offset in the kernel
 * file is checked against the file and against RAM.
 */
bool boot_load(DevBus *bus, const BootParams *p, X86CpuState *bsp,
               BootInfo *info, GError **errp);

#endif
