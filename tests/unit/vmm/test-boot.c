/*
 * Unit tests for the kernel loaders and the --drive parser: a synthetic
 * bzImage (setup header only) and synthetic ELF kernels are loaded into a
 * fake 64 MiB RAM, and the zero page, e820 map, PVH start_info, page
 * tables and entry state are checked field by field (specs/x86-boot.md).
 */
#include "config.h"

#include <elf.h>
#include <stdlib.h>
#include <string.h>

#include "vmm/boot.h"
#include "vmm/machine.h"

#define RAM (64u << 20)

typedef struct {
    DevBus bus;
    uint8_t *ram;
    char *dir;
} Env;

static void env_init(Env *e)
{
    e->ram = g_malloc0(RAM);
    dev_bus_init(&e->bus);
    dev_bus_add_ram(&e->bus, 0, RAM, e->ram);
    e->dir = g_dir_make_tmp("ferry-boot-XXXXXX", NULL);
}

static void env_free(Env *e)
{
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", e->dir);
    g_assert_cmpint(system(cmd), ==, 0);
    g_free(e->dir);
    dev_bus_destroy(&e->bus);
    g_free(e->ram);
}

static char *write_file(Env *e, const char *name, const void *data, size_t len)
{
    char *path = g_build_filename(e->dir, name, NULL);
    g_assert_true(g_file_set_contents(path, data, len, NULL));
    return path;
}

static uint32_t rd32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static uint64_t rd64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* A bzImage: 2 setup sectors after the boot sector, then 8 KiB of "kernel". */
static GByteArray *fake_bzimage(uint16_t version)
{
    GByteArray *k = g_byte_array_new();
    size_t len = 3 * 512 + 8192;

    g_byte_array_set_size(k, len);
    memset(k->data, 0, len);
    memset(k->data + 3 * 512, 0xab, 8192);
    k->data[0x1f1] = 2;                                 /* setup_sects */
    k->data[0x1fe] = 0x55;
    k->data[0x1ff] = 0xaa;
    k->data[0x201] = 0x66;                              /* header to 0x268 */
    memcpy(k->data + 0x202, "HdrS", 4);
    memcpy(k->data + 0x206, &version, 2);
    memcpy(k->data + 0x22c, &(uint32_t){ 0x7fffffff }, 4);   /* initrd max */
    memcpy(k->data + 0x230, &(uint32_t){ 0x200000 }, 4);
    memcpy(k->data + 0x236, &(uint16_t){ 0x7f }, 2);         /* xloadflags */
    memcpy(k->data + 0x238, &(uint32_t){ 2047 }, 4);         /* cmdline size */
    memcpy(k->data + 0x260, &(uint32_t){ 0x40000 }, 4);      /* init_size */
    return k;
}

static void test_bzimage_zero_page_and_entry(void)
{
    Env e;
    g_autoptr(GByteArray) k = fake_bzimage(0x020f);
    g_autofree char *kpath = NULL, *ipath = NULL;
    uint8_t initrd[5000];
    X86CpuState s;
    BootInfo info;
    GError *err = NULL;
    const uint8_t *zp;
    const uint64_t *pd;

    env_init(&e);
    kpath = write_file(&e, "bzImage", k->data, k->len);
    memset(initrd, 0x1d, sizeof(initrd));
    ipath = write_file(&e, "initrd", initrd, sizeof(initrd));
    BootParams p = { .kernel = kpath, .initrd = ipath,
                     .cmdline = "console=ttyS0 nokaslr",
                     .low_ram_bytes = RAM };
    g_assert_true(boot_load(&e.bus, &p, &s, &info, &err));
    g_assert_no_error(err);
    g_assert_cmpint(info.protocol, ==, BOOT_LINUX64);
    /* the protected-mode part is at 1 MiB, verbatim */
    g_assert_cmpuint(e.ram[0x100000], ==, 0xab);
    g_assert_cmpuint(e.ram[0x100000 + 8191], ==, 0xab);
    zp = e.ram + BOOT_ZERO_PAGE_GPA;
    g_assert_cmpuint(zp[0x210], ==, 0xff);                  /* type_of_loader */
    g_assert_cmpmem(zp + 0x202, 4, "HdrS", 4);              /* header copied */
    g_assert_cmpuint(rd32(zp + 0x228), ==, BOOT_CMDLINE_GPA);
    g_assert_cmpstr((char *)e.ram + BOOT_CMDLINE_GPA, ==, "console=ttyS0 nokaslr");
    /* initrd: top of RAM, page aligned, recorded */
    g_assert_cmpuint(rd32(zp + 0x218), ==, info.initrd_gpa);
    g_assert_cmpuint(rd32(zp + 0x21c), ==, sizeof(initrd));
    g_assert_cmpuint(info.initrd_gpa % 4096, ==, 0);
    g_assert_cmpuint(info.initrd_gpa + sizeof(initrd), <=, RAM);
    g_assert_cmpuint(e.ram[info.initrd_gpa], ==, 0x1d);
    /* e820: low RAM, the reserved hole to 1 MiB, RAM from 1 MiB */
    g_assert_cmpuint(zp[0x1e8], ==, 3);
    g_assert_cmpuint(rd64(zp + 0x2d0), ==, 0);
    g_assert_cmpuint(rd64(zp + 0x2d8), ==, 0x9fc00);
    g_assert_cmpuint(rd32(zp + 0x2e0), ==, 1);
    g_assert_cmpuint(rd32(zp + 0x2d0 + 20 + 16), ==, 2);
    g_assert_cmpuint(rd64(zp + 0x2d0 + 40), ==, 0x100000);
    g_assert_cmpuint(rd64(zp + 0x2d0 + 48), ==, RAM - 0x100000);
    /* 64-bit entry state */
    g_assert_cmpuint(s.rip, ==, 0x100200);
    g_assert_cmpuint(s.gpr[X86_RSI], ==, BOOT_ZERO_PAGE_GPA);
    g_assert_true(s.cr0 & X86_CR0_PG && s.cr0 & X86_CR0_PE);
    g_assert_true(s.cr4 & X86_CR4_PAE);
    g_assert_true(s.efer & X86_EFER_LMA && s.efer & X86_EFER_LME);
    g_assert_true(s.seg[X86_CS].ar & X86_SEG_L);
    g_assert_cmpuint(s.cr3, ==, BOOT_PML4_GPA);
    g_assert_cmpuint(rd64(e.ram + BOOT_GDT_GPA + 8), ==, 0x00af9b000000ffffull);
    pd = (const uint64_t *)(e.ram + BOOT_PD_GPA);
    g_assert_cmpuint(pd[0], ==, 0x83);
    g_assert_cmpuint(pd[2047], ==, (2047ull << 21) | 0x83);
    env_free(&e);
}

static void test_bzimage_refusals(void)
{
    Env e;
    g_autoptr(GByteArray) old = fake_bzimage(0x020b);
    g_autoptr(GByteArray) ok = fake_bzimage(0x020f);
    g_autofree char *p1 = NULL, *p2 = NULL;
    X86CpuState s;
    BootInfo info;
    GError *err = NULL;
    char longline[4000];

    env_init(&e);
    p1 = write_file(&e, "old", old->data, old->len);
    BootParams p = { .kernel = p1, .low_ram_bytes = RAM };
    g_assert_false(boot_load(&e.bus, &p, &s, &info, &err));
    g_assert_nonnull(strstr(err->message, "64-bit entry"));
    g_clear_error(&err);
    /* a command line longer than the kernel's cmdline_size */
    memset(longline, 'x', sizeof(longline) - 1);
    longline[sizeof(longline) - 1] = 0;
    p2 = write_file(&e, "ok", ok->data, ok->len);
    p.kernel = p2;
    p.cmdline = longline;
    g_assert_false(boot_load(&e.bus, &p, &s, &info, &err));
    g_assert_nonnull(strstr(err->message, "command line"));
    g_clear_error(&err);
    /* a kernel whose init_size does not fit the RAM */
    memcpy(ok->data + 0x260, &(uint32_t){ 0x7000000 }, 4);
    g_free(p2);
    p2 = write_file(&e, "big", ok->data, ok->len);
    p.kernel = p2;
    p.cmdline = NULL;
    g_assert_false(boot_load(&e.bus, &p, &s, &info, &err));
    g_assert_nonnull(strstr(err->message, "does not fit"));
    g_clear_error(&err);
    env_free(&e);
}

/* An ELF64 with one PT_LOAD at 2 MiB and, optionally, a PVH note. */
static GByteArray *fake_elf(bool pvh, uint64_t phoff_override)
{
    GByteArray *b = g_byte_array_new();
    Elf64_Ehdr eh = { 0 };
    Elf64_Phdr ph[2] = { { 0 } };
    uint8_t note[24] = { 0 };
    size_t data_off = sizeof(eh) + sizeof(ph);
    uint8_t code[64];

    memcpy(eh.e_ident, ELFMAG, SELFMAG);
    eh.e_ident[EI_CLASS] = ELFCLASS64;
    eh.e_ident[EI_DATA] = ELFDATA2LSB;
    eh.e_type = ET_EXEC;
    eh.e_machine = EM_X86_64;
    eh.e_entry = 0x200010;
    eh.e_phoff = phoff_override ? phoff_override : sizeof(eh);
    eh.e_phentsize = sizeof(Elf64_Phdr);
    eh.e_phnum = pvh ? 2 : 1;
    ph[0].p_type = PT_LOAD;
    ph[0].p_offset = data_off;
    ph[0].p_paddr = 0x200000;
    ph[0].p_filesz = sizeof(code);
    ph[0].p_memsz = 0x2000;                 /* bss after the code */
    ph[1].p_type = PT_NOTE;
    ph[1].p_offset = data_off + sizeof(code);
    ph[1].p_filesz = sizeof(note);
    memcpy(note, &(uint32_t){ 4 }, 4);
    memcpy(note + 4, &(uint32_t){ 4 }, 4);
    memcpy(note + 8, &(uint32_t){ 18 }, 4);
    memcpy(note + 12, "Xen", 4);
    memcpy(note + 16, &(uint32_t){ 0x200020 }, 4);
    memset(code, 0x90, sizeof(code));
    g_byte_array_append(b, (uint8_t *)&eh, sizeof(eh));
    g_byte_array_append(b, (uint8_t *)ph, sizeof(ph));
    g_byte_array_append(b, code, sizeof(code));
    g_byte_array_append(b, note, sizeof(note));
    return b;
}

static void test_elf_pvh_and_elf64(void)
{
    Env e;
    g_autoptr(GByteArray) pvh = fake_elf(true, 0);
    g_autoptr(GByteArray) plain = fake_elf(false, 0);
    g_autofree char *p1 = NULL, *p2 = NULL;
    X86CpuState s;
    BootInfo info;
    GError *err = NULL;
    const uint8_t *si;

    env_init(&e);
    memset(e.ram + 0x200000 + 64, 0xee, 0x100);         /* must become bss */
    p1 = write_file(&e, "pvh.elf", pvh->data, pvh->len);
    BootParams p = { .kernel = p1, .cmdline = "hello", .low_ram_bytes = RAM };
    g_assert_true(boot_load(&e.bus, &p, &s, &info, &err));
    g_assert_cmpint(info.protocol, ==, BOOT_PVH);
    g_assert_cmpuint(s.rip, ==, 0x200020);
    g_assert_cmpuint(s.gpr[X86_RBX], ==, BOOT_PVH_INFO_GPA);
    g_assert_false(s.cr0 & X86_CR0_PG);
    g_assert_true(s.seg[X86_CS].ar & X86_SEG_DB);
    g_assert_cmpuint(e.ram[0x200000], ==, 0x90);
    g_assert_cmpuint(e.ram[0x200000 + 64], ==, 0);      /* bss zeroed */
    si = e.ram + BOOT_PVH_INFO_GPA;
    g_assert_cmpuint(rd32(si), ==, 0x336ec578);
    g_assert_cmpuint(rd32(si + 4), ==, 1);
    g_assert_cmpuint(rd64(si + 24), ==, BOOT_CMDLINE_GPA);
    g_assert_cmpuint(rd32(si + 48), ==, 3);             /* memmap entries */
    g_assert_cmpuint(rd64(e.ram + rd64(si + 40) + 24 * 2 + 8), ==, RAM - 0x100000);
    /* --boot elf64 takes the ELF entry in long mode even with the note */
    p.protocol = BOOT_ELF64;
    g_assert_true(boot_load(&e.bus, &p, &s, &info, &err));
    g_assert_cmpint(info.protocol, ==, BOOT_ELF64);
    g_assert_cmpuint(s.rip, ==, 0x200010);
    g_assert_true(s.efer & X86_EFER_LMA);
    /* no note: auto takes elf64; --boot pvh is refused */
    p2 = write_file(&e, "plain.elf", plain->data, plain->len);
    p.kernel = p2;
    p.protocol = BOOT_AUTO;
    g_assert_true(boot_load(&e.bus, &p, &s, &info, &err));
    g_assert_cmpint(info.protocol, ==, BOOT_ELF64);
    p.protocol = BOOT_PVH;
    g_assert_false(boot_load(&e.bus, &p, &s, &info, &err));
    g_clear_error(&err);
    env_free(&e);
}

static void test_elf_hostile_headers(void)
{
    Env e;
    g_autoptr(GByteArray) bad = fake_elf(true, 0x7fffffffffffull);
    g_autoptr(GByteArray) big = fake_elf(false, 0);
    g_autofree char *p1 = NULL, *p2 = NULL;
    X86CpuState s;
    BootInfo info;
    GError *err = NULL;
    Elf64_Phdr ph;

    env_init(&e);
    p1 = write_file(&e, "bad.elf", bad->data, bad->len);
    BootParams p = { .kernel = p1, .low_ram_bytes = RAM };
    g_assert_false(boot_load(&e.bus, &p, &s, &info, &err));
    g_clear_error(&err);
    /* a segment whose file size runs past the end of the file */
    memcpy(&ph, big->data + sizeof(Elf64_Ehdr), sizeof(ph));
    ph.p_filesz = 1u << 30;
    ph.p_memsz = 1u << 30;
    memcpy(big->data + sizeof(Elf64_Ehdr), &ph, sizeof(ph));
    p2 = write_file(&e, "big.elf", big->data, big->len);
    p.kernel = p2;
    g_assert_false(boot_load(&e.bus, &p, &s, &info, &err));
    g_clear_error(&err);
    env_free(&e);
}

static void test_drive_parser(void)
{
    GError *err = NULL;
    VmmDriveConf *d;

    d = vmm_parse_drive("disk.qcow2", &err);
    g_assert_cmpstr(d->spec, ==, "disk.qcow2");
    g_assert_false(d->read_only);
    vmm_drive_conf_free(d);

    d = vmm_parse_drive("driver=qcow2,file.filename=a.qcow2,read-only=on,"
                        "num-queues=4,serial=abc", &err);
    g_assert_cmpstr(d->spec, ==, "driver=qcow2,file.filename=a.qcow2");
    g_assert_true(d->read_only);
    g_assert_cmpint(d->num_queues, ==, 4);
    g_assert_cmpstr(d->serial, ==, "abc");
    vmm_drive_conf_free(d);

    d = vmm_parse_drive("json:{\"driver\":\"raw\",\"file\":{\"driver\":\"file\","
                        "\"filename\":\"x\"}},id=d0,cache=unsafe", &err);
    g_assert_cmpstr(d->spec, ==, "json:{\"driver\":\"raw\",\"file\":{\"driver\":"
                    "\"file\",\"filename\":\"x\"}}");
    g_assert_cmpstr(d->id, ==, "d0");
    g_assert_true(d->cache_unsafe);
    vmm_drive_conf_free(d);

    d = vmm_parse_drive("file=x.img,format=raw", &err);
    g_assert_cmpstr(d->spec, ==, "x.img");
    g_assert_cmpstr(d->format, ==, "raw");
    vmm_drive_conf_free(d);

    g_assert_null(vmm_parse_drive("x.img,num-queues=0", &err));
    g_clear_error(&err);
    g_assert_null(vmm_parse_drive("json:{,id=x", &err));
    g_clear_error(&err);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/vmm/boot/bzimage-zero-page-and-entry",
                    test_bzimage_zero_page_and_entry);
    g_test_add_func("/vmm/boot/bzimage-refusals", test_bzimage_refusals);
    g_test_add_func("/vmm/boot/elf-pvh-and-elf64", test_elf_pvh_and_elf64);
    g_test_add_func("/vmm/boot/elf-hostile-headers", test_elf_hostile_headers);
    g_test_add_func("/vmm/config/drive-parser", test_drive_parser);
    return g_test_run();
}
