/*
 * Kernel loaders.  bzImage: Linux Documentation/arch/x86/boot.rst (setup
 * header, 64-bit entry at load address + 0x200, zero page per
 * zero-page.rst).  ELF: PT_LOAD segments at their physical addresses; PVH
 * entry per Xen's arch-x86/hvm/start_info.h ABI; otherwise the ELF entry in
 * long mode with the same state as the 64-bit Linux protocol.
 * specs/x86-boot.md sections 1-5 list the values and why.
 */
#include "config.h"

#include <elf.h>
#include <string.h>

#include "common/error.h"
#include "common/log.h"
#include "vmm/boot.h"

#define E820_RAM      1
#define E820_RESERVED 2

#define PVH_MAGIC        0x336ec578u
#define XEN_ELFNOTE_PHYS32_ENTRY 18

typedef struct E820Entry {
    uint64_t addr;
    uint64_t size;
    uint32_t type;
} E820Entry;

bool boot_parse_protocol(const char *s, BootProtocol *out, GError **errp)
{
    static const char *const names[] = { "auto", "linux", "pvh", "elf64" };

    for (int i = 0; i < 4; i++) {
        if (!strcmp(s, names[i])) {
            *out = (BootProtocol)i;
            return true;
        }
    }
    ferry_error_set(errp, FERRY_ERROR_INVALID,
                    "unknown boot protocol '%s' (auto, linux, pvh, elf64)", s);
    return false;
}

const char *boot_protocol_name(BootProtocol p)
{
    static const char *const names[] = { "auto", "linux", "pvh", "elf64" };
    return names[p];
}

static uint8_t *ram(DevBus *bus, uint64_t gpa, uint64_t len, GError **errp,
                    const char *what)
{
    uint8_t *p = dev_bus_ram_ptr(bus, gpa, len);

    if (!p) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "%s at 0x%" G_GINT64_MODIFIER "x+0x%" G_GINT64_MODIFIER
                        "x does not fit in guest RAM (give more with -m)",
                        what, gpa, len);
    }
    return p;
}

static int build_e820(const BootParams *p, E820Entry *e)
{
    int n = 0;

    e[n++] = (E820Entry){ 0, BOOT_LOW_RAM_END, E820_RAM };
    e[n++] = (E820Entry){ BOOT_LOW_RAM_END, 0x100000 - BOOT_LOW_RAM_END,
                          E820_RESERVED };
    if (p->low_ram_bytes > 0x100000) {
        e[n++] = (E820Entry){ 0x100000, p->low_ram_bytes - 0x100000, E820_RAM };
    }
    if (p->high_ram_bytes) {
        e[n++] = (E820Entry){ 4ull << 30, p->high_ram_bytes, E820_RAM };
    }
    return n;
}

/* GDT: null, code, data, TSS; code is 64-bit or 32-bit flat. */
static bool write_gdt(DevBus *bus, bool long_mode, GError **errp)
{
    uint64_t *gdt = (uint64_t *)ram(bus, BOOT_GDT_GPA, 32, errp, "boot GDT");

    if (!gdt) {
        return false;
    }
    gdt[0] = 0;
    gdt[1] = long_mode ? 0x00af9b000000ffffull : 0x00cf9b000000ffffull;
    gdt[2] = 0x00cf93000000ffffull;
    gdt[3] = 0x00008b0000000067ull;
    return true;
}

/* Identity map of the first 4 GiB with 2 MiB pages. */
static bool write_page_tables(DevBus *bus, GError **errp)
{
    uint64_t *pml4 = (uint64_t *)ram(bus, BOOT_PML4_GPA, 4096, errp, "PML4");
    uint64_t *pdpt = (uint64_t *)ram(bus, BOOT_PDPT_GPA, 4096, errp, "PDPT");
    uint64_t *pd = (uint64_t *)ram(bus, BOOT_PD_GPA, 4 * 4096, errp, "PD");

    if (!pml4 || !pdpt || !pd) {
        return false;
    }
    memset(pml4, 0, 4096);
    memset(pdpt, 0, 4096);
    pml4[0] = BOOT_PDPT_GPA | 0x3;
    for (int i = 0; i < 4; i++) {
        pdpt[i] = (BOOT_PD_GPA + i * 4096) | 0x3;
    }
    for (uint64_t i = 0; i < 4 * 512; i++) {
        pd[i] = (i << 21) | 0x83;
    }
    return true;
}

static void state_long_mode(X86CpuState *s, uint64_t entry)
{
    x86_state_reset(s, 0);
    x86_seg_flat(&s->seg[X86_CS], 0x08, X86_AR_CODE64);
    for (int i = 0; i < X86_NR_SEGS; i++) {
        if (i != X86_CS) {
            x86_seg_flat(&s->seg[i], 0x10, X86_AR_DATA);
        }
    }
    s->tr.selector = 0x18;
    s->tr.base = 0;
    s->tr.limit = 0x67;
    s->tr.ar = X86_AR_TSS64;
    s->gdt.base = BOOT_GDT_GPA;
    s->gdt.limit = 31;
    s->idt.base = BOOT_IDT_GPA;
    s->idt.limit = 0;
    s->cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_NE | X86_CR0_PG;
    s->cr3 = BOOT_PML4_GPA;
    s->cr4 = X86_CR4_PAE;
    s->efer = X86_EFER_LME | X86_EFER_LMA;
    s->rip = entry;
    s->gpr[X86_RSP] = BOOT_STACK_GPA;
    s->gpr[X86_RBP] = BOOT_STACK_GPA;
    s->gpr[X86_RDX] = 0;
    s->rflags = 0x2;
    s->misc_enable = 1;
    s->mtrr_def_type = (1u << 11) | 6;     /* MTRRs on, default WB */
}

static void state_pvh(X86CpuState *s, uint64_t entry)
{
    x86_state_reset(s, 0);
    x86_seg_flat(&s->seg[X86_CS], 0x08, X86_AR_CODE32);
    for (int i = 0; i < X86_NR_SEGS; i++) {
        if (i != X86_CS) {
            x86_seg_flat(&s->seg[i], 0x10, X86_AR_DATA);
        }
    }
    s->tr.selector = 0x18;
    s->tr.limit = 0x67;
    s->tr.ar = X86_AR_TSS64;
    s->gdt.base = BOOT_GDT_GPA;
    s->gdt.limit = 31;
    s->cr0 = X86_CR0_PE | X86_CR0_ET;
    s->rip = entry;
    s->gpr[X86_RBX] = BOOT_PVH_INFO_GPA;
    s->gpr[X86_RDX] = 0;
    s->rflags = 0x2;
    s->mtrr_def_type = (1u << 11) | 6;
}

static bool write_cmdline(DevBus *bus, const char *cmdline, uint32_t max,
                          GError **errp)
{
    size_t len = cmdline ? strlen(cmdline) : 0;
    uint8_t *p;

    if (len >= max) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "kernel command line is %zu bytes, the kernel "
                        "accepts %u", len, max - 1);
        return false;
    }
    p = ram(bus, BOOT_CMDLINE_GPA, len + 1, errp, "command line");
    if (!p) {
        return false;
    }
    memcpy(p, cmdline ? cmdline : "", len + 1);
    return true;
}

/* Put the initrd at the top of low RAM under max_end, page aligned. */
static bool load_initrd(DevBus *bus, const BootParams *p, uint64_t max_end,
                        uint64_t above, BootInfo *info, GError **errp)
{
    g_autofree char *data = NULL;
    gsize len = 0;
    uint64_t top = MIN(p->low_ram_bytes, max_end), gpa;

    if (!p->initrd) {
        return true;
    }
    if (!g_file_get_contents(p->initrd, &data, &len, errp)) {
        g_prefix_error(errp, "initrd: ");
        return false;
    }
    if (len > top || ((top - len) & ~0xfffull) < above) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "initrd '%s' (%zu bytes) does not fit in guest RAM "
                        "above the kernel (give more with -m)",
                        p->initrd, (size_t)len);
        return false;
    }
    gpa = (top - len) & ~0xfffull;
    memcpy(dev_bus_ram_ptr(bus, gpa, len), data, len);
    info->initrd_gpa = gpa;
    info->initrd_bytes = len;
    return true;
}

/* -- bzImage, 64-bit boot protocol -------------------------------------- */

static uint32_t le32(const uint8_t *p)
{
    return p[0] | (p[1] << 8) | (p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint16_t le16(const uint8_t *p)
{
    return p[0] | (p[1] << 8);
}

static bool is_bzimage(const uint8_t *k, size_t len)
{
    return len >= 0x264 && le16(k + 0x1fe) == 0xaa55 &&
           le32(k + 0x202) == 0x53726448;
}

static bool load_bzimage(DevBus *bus, const BootParams *p, const uint8_t *k,
                         size_t len, X86CpuState *bsp, BootInfo *info,
                         GError **errp)
{
    uint16_t version = le16(k + 0x206);
    uint8_t setup_sects = k[0x1f1] ? k[0x1f1] : 4;
    size_t setup_bytes = ((size_t)setup_sects + 1) * 512;
    size_t hdr_end = 0x202 + k[0x201];
    uint32_t initrd_max, cmdline_size, init_size;
    uint8_t *zp, *dst;
    E820Entry e820[8];
    int n;

    if (version < 0x020c || !(le16(k + 0x236) & 1)) {
        ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED,
                        "'%s': boot protocol %u.%02u without the 64-bit "
                        "entry (needs 2.12 and XLF_KERNEL_64)", p->kernel,
                        version >> 8, version & 0xff);
        return false;
    }
    if (setup_bytes >= len || hdr_end > 0x1000 || hdr_end > len) {
        ferry_error_set(errp, FERRY_ERROR_CORRUPT,
                        "'%s': setup code of %zu bytes leaves no kernel",
                        p->kernel, setup_bytes);
        return false;
    }
    init_size = le32(k + 0x260);
    dst = ram(bus, BOOT_KERNEL_GPA, MAX(len - setup_bytes, init_size), errp,
              "kernel (init_size)");
    if (!dst) {
        return false;
    }
    memcpy(dst, k + setup_bytes, len - setup_bytes);

    zp = ram(bus, BOOT_ZERO_PAGE_GPA, 4096, errp, "zero page");
    if (!zp) {
        return false;
    }
    memset(zp, 0, 4096);
    memcpy(zp + 0x1f1, k + 0x1f1, hdr_end - 0x1f1);
    zp[0x210] = 0xff;                                   /* type_of_loader */
    zp[0x211] |= 0x01;                                  /* LOADED_HIGH */
    cmdline_size = version >= 0x0206 ? le32(k + 0x238) : 255;
    if (!write_cmdline(bus, p->cmdline, cmdline_size + 1, errp)) {
        return false;
    }
    memcpy(zp + 0x228, &(uint32_t){ BOOT_CMDLINE_GPA }, 4);
    initrd_max = le32(k + 0x22c);
    if (!load_initrd(bus, p, (uint64_t)initrd_max + 1,
                     BOOT_KERNEL_GPA + MAX(len - setup_bytes, init_size),
                     info, errp)) {
        return false;
    }
    memcpy(zp + 0x218, &(uint32_t){ (uint32_t)info->initrd_gpa }, 4);
    memcpy(zp + 0x21c, &(uint32_t){ (uint32_t)info->initrd_bytes }, 4);
    n = build_e820(p, e820);
    zp[0x1e8] = (uint8_t)n;
    for (int i = 0; i < n; i++) {
        memcpy(zp + 0x2d0 + 20 * i, &e820[i].addr, 8);
        memcpy(zp + 0x2d0 + 20 * i + 8, &e820[i].size, 8);
        memcpy(zp + 0x2d0 + 20 * i + 16, &e820[i].type, 4);
    }
    if (!write_gdt(bus, true, errp) || !write_page_tables(bus, errp)) {
        return false;
    }
    state_long_mode(bsp, BOOT_KERNEL_GPA + 0x200);
    bsp->gpr[X86_RSI] = BOOT_ZERO_PAGE_GPA;
    info->protocol = BOOT_LINUX64;
    info->entry = bsp->rip;
    info->kernel_start = BOOT_KERNEL_GPA;
    info->kernel_end = BOOT_KERNEL_GPA + len - setup_bytes;
    info->e820_entries = n;
    return true;
}

/* -- ELF: PVH or 64-bit entry ------------------------------------------- */

/* The PVH entry from a PT_NOTE segment, or 0. */
static uint64_t elf_pvh_entry(const uint8_t *k, size_t len, const Elf64_Phdr *ph)
{
    uint64_t off = ph->p_offset, end;

    if (off > len || ph->p_filesz > len - off) {
        return 0;
    }
    end = off + ph->p_filesz;
    while (end - off >= sizeof(Elf64_Nhdr)) {
        Elf64_Nhdr nh;
        uint64_t name_sz, desc_sz;
        memcpy(&nh, k + off, sizeof(nh));
        off += sizeof(nh);
        name_sz = (nh.n_namesz + 3ull) & ~3ull;
        desc_sz = (nh.n_descsz + 3ull) & ~3ull;
        if (name_sz > end - off || desc_sz > end - off - name_sz) {
            return 0;
        }
        if (nh.n_type == XEN_ELFNOTE_PHYS32_ENTRY && nh.n_namesz == 4 &&
            !memcmp(k + off, "Xen", 4) && nh.n_descsz >= 4) {
            uint64_t e = 0;
            memcpy(&e, k + off + name_sz, MIN(nh.n_descsz, 8u));
            return nh.n_descsz == 4 ? (uint32_t)e : e;
        }
        off += name_sz + desc_sz;
    }
    return 0;
}

static bool write_pvh_info(DevBus *bus, const BootParams *p,
                           const BootInfo *info, GError **errp)
{
    uint8_t *si = ram(bus, BOOT_PVH_INFO_GPA, 56, errp, "PVH start info");
    uint8_t *mm = ram(bus, BOOT_ZERO_PAGE_GPA, 8 * 24, errp, "PVH memmap");
    uint8_t *mod = ram(bus, BOOT_PVH_MODS_GPA, 32, errp, "PVH modules");
    E820Entry e820[8];
    int n = build_e820(p, e820);
    uint32_t u32;
    uint64_t u64;

    if (!si || !mm || !mod) {
        return false;
    }
    memset(si, 0, 56);
    memset(mod, 0, 32);
    u32 = PVH_MAGIC; memcpy(si + 0, &u32, 4);
    u32 = 1; memcpy(si + 4, &u32, 4);                       /* version */
    if (info->initrd_bytes) {
        u32 = 1; memcpy(si + 12, &u32, 4);                  /* nr_modules */
        u64 = BOOT_PVH_MODS_GPA; memcpy(si + 16, &u64, 8);
        memcpy(mod, &info->initrd_gpa, 8);
        memcpy(mod + 8, &info->initrd_bytes, 8);
    }
    u64 = BOOT_CMDLINE_GPA; memcpy(si + 24, &u64, 8);
    u64 = BOOT_ZERO_PAGE_GPA; memcpy(si + 40, &u64, 8);     /* memmap */
    u32 = n; memcpy(si + 48, &u32, 4);
    for (int i = 0; i < n; i++) {
        memset(mm + 24 * i, 0, 24);
        memcpy(mm + 24 * i, &e820[i].addr, 8);
        memcpy(mm + 24 * i + 8, &e820[i].size, 8);
        memcpy(mm + 24 * i + 16, &e820[i].type, 4);
    }
    return true;
}

static bool load_elf(DevBus *bus, const BootParams *p, const uint8_t *k,
                     size_t len, X86CpuState *bsp, BootInfo *info,
                     GError **errp)
{
    Elf64_Ehdr eh;
    uint64_t pvh = 0, lo = UINT64_MAX, hi = 0;

    if (len < sizeof(eh)) {
        goto bad;
    }
    memcpy(&eh, k, sizeof(eh));
    if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_machine != EM_X86_64 ||
        eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phoff > len ||
        (uint64_t)eh.e_phnum * sizeof(Elf64_Phdr) > len - eh.e_phoff) {
        goto bad;
    }
    for (int i = 0; i < eh.e_phnum; i++) {
        Elf64_Phdr ph;
        uint8_t *dst;
        memcpy(&ph, k + eh.e_phoff + i * sizeof(ph), sizeof(ph));
        if (ph.p_type == PT_NOTE && !pvh) {
            pvh = elf_pvh_entry(k, len, &ph);
        }
        if (ph.p_type != PT_LOAD || ph.p_memsz == 0) {
            continue;
        }
        if (ph.p_filesz > ph.p_memsz || ph.p_offset > len ||
            ph.p_filesz > len - ph.p_offset) {
            goto bad;
        }
        dst = ram(bus, ph.p_paddr, ph.p_memsz, errp, "ELF segment");
        if (!dst) {
            return false;
        }
        memcpy(dst, k + ph.p_offset, ph.p_filesz);
        memset(dst + ph.p_filesz, 0, ph.p_memsz - ph.p_filesz);
        lo = MIN(lo, ph.p_paddr);
        hi = MAX(hi, ph.p_paddr + ph.p_memsz);
    }
    if (hi == 0) {
        goto bad;
    }
    info->kernel_start = lo;
    info->kernel_end = hi;
    if (p->protocol == BOOT_PVH && !pvh) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "'%s' has no PVH entry note", p->kernel);
        return false;
    }
    if (!write_cmdline(bus, p->cmdline, BOOT_CMDLINE_MAX, errp) ||
        !load_initrd(bus, p, p->low_ram_bytes, hi, info, errp)) {
        return false;
    }
    if (pvh && p->protocol != BOOT_ELF64) {
        if (!write_gdt(bus, false, errp) || !write_pvh_info(bus, p, info, errp)) {
            return false;
        }
        state_pvh(bsp, pvh);
        info->protocol = BOOT_PVH;
    } else {
        /* 64-bit entry: a zero page carries cmdline, initrd and e820 */
        uint8_t *zp = ram(bus, BOOT_ZERO_PAGE_GPA, 4096, errp, "zero page");
        E820Entry e820[8];
        int n = build_e820(p, e820);
        if (!zp || !write_gdt(bus, true, errp) ||
            !write_page_tables(bus, errp)) {
            return false;
        }
        memset(zp, 0, 4096);
        memcpy(zp + 0x228, &(uint32_t){ BOOT_CMDLINE_GPA }, 4);
        memcpy(zp + 0x218, &(uint32_t){ (uint32_t)info->initrd_gpa }, 4);
        memcpy(zp + 0x21c, &(uint32_t){ (uint32_t)info->initrd_bytes }, 4);
        zp[0x1e8] = (uint8_t)n;
        for (int i = 0; i < n; i++) {
            memcpy(zp + 0x2d0 + 20 * i, &e820[i].addr, 8);
            memcpy(zp + 0x2d0 + 20 * i + 8, &e820[i].size, 8);
            memcpy(zp + 0x2d0 + 20 * i + 16, &e820[i].type, 4);
        }
        state_long_mode(bsp, eh.e_entry);
        bsp->gpr[X86_RSI] = BOOT_ZERO_PAGE_GPA;
        info->protocol = BOOT_ELF64;
        info->e820_entries = n;
    }
    info->entry = bsp->rip;
    return true;

bad:
    ferry_error_set(errp, FERRY_ERROR_CORRUPT,
                    "'%s' is not a loadable x86-64 ELF kernel", p->kernel);
    return false;
}

bool boot_load(DevBus *bus, const BootParams *p, X86CpuState *bsp,
               BootInfo *info, GError **errp)
{
    g_autofree char *data = NULL;
    gsize len = 0;
    const uint8_t *k;

    memset(info, 0, sizeof(*info));
    if (!g_file_get_contents(p->kernel, &data, &len, errp)) {
        g_prefix_error(errp, "kernel: ");
        return false;
    }
    k = (const uint8_t *)data;
    if (len >= 4 && !memcmp(k, ELFMAG, SELFMAG)) {
        if (p->protocol == BOOT_LINUX64) {
            ferry_error_set(errp, FERRY_ERROR_INVALID,
                            "'%s' is an ELF file, not a bzImage", p->kernel);
            return false;
        }
        return load_elf(bus, p, k, len, bsp, info, errp);
    }
    if (is_bzimage(k, len)) {
        if (p->protocol == BOOT_PVH || p->protocol == BOOT_ELF64) {
            ferry_error_set(errp, FERRY_ERROR_INVALID,
                            "'%s' is a bzImage: use --boot linux or auto",
                            p->kernel);
            return false;
        }
        return load_bzimage(bus, p, k, len, bsp, info, errp);
    }
    ferry_error_set(errp, FERRY_ERROR_INVALID,
                    "'%s' is neither a bzImage nor an ELF kernel", p->kernel);
    return false;
}
