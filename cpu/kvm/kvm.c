/*
 * The KVM backend: one VM file descriptor, KVM's in-kernel irqchip (PIC,
 * IOAPIC, LAPIC) and PIT, one vCPU fd per vCPU thread.  Port and MMIO exits
 * go to the machine's CpuBus; everything else KVM handles in the kernel.
 * Linux Documentation/virt/kvm/api.rst is the reference for every ioctl.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <linux/kvm.h>

#include "common/error.h"
#include "common/log.h"
#include "cpu/vcpu.h"

#define KVM_TSS_GPA       0xfffbd000ull   /* 3 pages below the BIOS area */
#define KVM_IDENT_MAP_GPA 0xfffbc000ull
#define KVM_MAX_CPUID     256

typedef struct KvmAccel {
    Accel base;
    int kvm_fd;
    int vm_fd;
    int run_size;             /* bytes of the kvm_run mapping */
    uint32_t tsc_khz;
    struct kvm_cpuid2 *cpuid; /* supported, masked; per-vCPU copy patched */
} KvmAccel;

typedef struct KvmVcpu {
    Vcpu base;
    int fd;
    struct kvm_run *run;
    pthread_t thread;         /* set by the first vcpu_run */
    bool thread_known;
} KvmVcpu;

static void kvm_kick_handler(int sig)
{
    (void)sig;
}

static void kvm_install_kick_signal(void)
{
    static gsize once;

    if (g_once_init_enter(&once)) {
        struct sigaction sa = { .sa_handler = kvm_kick_handler };
        sigemptyset(&sa.sa_mask);
        sigaction(SIGUSR1, &sa, NULL);   /* no SA_RESTART: KVM_RUN -> EINTR */
        g_once_init_leave(&once, 1);
    }
}

/* Features a paravirtual KVM cannot emulate at CPL0 (specs/x86-boot.md 0). */
static void kvm_cpuid_mask_baseline(struct kvm_cpuid_entry2 *e)
{
    if (e->function == 1) {
        e->ecx &= ~((1u << 13) | (1u << 26) | (1u << 27) | (1u << 28) |
                    (1u << 23) | (1u << 19) | (1u << 20) | (1u << 30) |
                    (1u << 3) | (1u << 17) | (1u << 12));
    } else if (e->function == 7 && e->index == 0) {
        /* AVX2, AVX-512, FSGSBASE, SMEP, SMAP, INVPCID, RDSEED, PKU, LA57 */
        e->ebx &= ~((1u << 5) | (1u << 16) | (1u << 17) | (1u << 0) |
                    (1u << 7) | (1u << 20) | (1u << 10) | (1u << 18) |
                    (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) |
                    (1u << 30) | (1u << 31));
        e->ecx &= ~((1u << 3) | (1u << 16));
        e->edx = 0;
    } else if (e->function == 0xd) {
        e->eax = e->ebx = e->ecx = e->edx = 0;
    }
}

static bool kvm_setup_cpuid(KvmAccel *k, GError **errp)
{
    size_t bytes = sizeof(struct kvm_cpuid2) +
                   KVM_MAX_CPUID * sizeof(struct kvm_cpuid_entry2);
    struct kvm_cpuid2 *c = g_malloc0(bytes);
    bool have_tsc_leaf = false;

    c->nent = KVM_MAX_CPUID;
    if (ioctl(k->kvm_fd, KVM_GET_SUPPORTED_CPUID, c) < 0) {
        ferry_error_setg_errno(errp, errno, "KVM_GET_SUPPORTED_CPUID");
        g_free(c);
        return false;
    }
    for (uint32_t i = 0; i < c->nent; i++) {
        struct kvm_cpuid_entry2 *e = &c->entries[i];
        if (e->function == 1) {
            e->ecx |= 1u << 31;                     /* hypervisor */
        }
        if (e->function == 0x40000000 && e->eax < 0x40000010) {
            e->eax = 0x40000010;
        }
        if (e->function == 0x40000010) {
            have_tsc_leaf = true;
        }
        if (k->base.cfg.cpuid_baseline) {
            kvm_cpuid_mask_baseline(e);
        }
    }
    /* Leaf 0x40000010 (the hypervisor TSC leaf): EAX = TSC kHz. */
    if (!have_tsc_leaf && c->nent < KVM_MAX_CPUID) {
        struct kvm_cpuid_entry2 *e = &c->entries[c->nent++];
        memset(e, 0, sizeof(*e));
        e->function = 0x40000010;
        e->eax = k->tsc_khz;
    }
    k->cpuid = c;
    return true;
}

static Accel *kvm_create(const AccelConfig *cfg, GError **errp)
{
    KvmAccel *k = g_new0(KvmAccel, 1);
    struct kvm_pit_config pit = { .flags = KVM_PIT_SPEAKER_DUMMY };
    int tsc;

    k->base.ops = &kvm_accel_ops;
    k->base.cfg = *cfg;
    k->vm_fd = -1;
    k->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (k->kvm_fd < 0) {
        ferry_error_setg_errno(errp, errno, "cannot open /dev/kvm");
        goto fail;
    }
    if (ioctl(k->kvm_fd, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) {
        ferry_error_setg(errp, "/dev/kvm: unexpected KVM API version");
        goto fail;
    }
    if (ioctl(k->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_IMMEDIATE_EXIT) <= 0 ||
        ioctl(k->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_IRQCHIP) <= 0 ||
        ioctl(k->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_SIGNAL_MSI) <= 0) {
        ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED,
                        "KVM lacks immediate exit, irqchip or MSI support");
        goto fail;
    }
    int max = ioctl(k->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_MAX_VCPUS);
    if (max > 0 && cfg->smp > max) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "--smp %d: KVM allows at most %d vCPUs", cfg->smp, max);
        goto fail;
    }
    k->run_size = ioctl(k->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    k->vm_fd = ioctl(k->kvm_fd, KVM_CREATE_VM, 0);
    if (k->vm_fd < 0 || k->run_size <= 0) {
        ferry_error_setg_errno(errp, errno, "KVM_CREATE_VM");
        goto fail;
    }
    if (ioctl(k->vm_fd, KVM_SET_TSS_ADDR, KVM_TSS_GPA) < 0) {
        ferry_error_setg_errno(errp, errno, "KVM_SET_TSS_ADDR");
        goto fail;
    }
    uint64_t ident = KVM_IDENT_MAP_GPA;
    ioctl(k->vm_fd, KVM_SET_IDENTITY_MAP_ADDR, &ident);
    if (ioctl(k->vm_fd, KVM_CREATE_IRQCHIP, 0) < 0) {
        ferry_error_setg_errno(errp, errno, "KVM_CREATE_IRQCHIP");
        goto fail;
    }
    if (ioctl(k->vm_fd, KVM_CREATE_PIT2, &pit) < 0) {
        ferry_error_setg_errno(errp, errno, "KVM_CREATE_PIT2");
        goto fail;
    }
    tsc = ioctl(k->vm_fd, KVM_GET_TSC_KHZ, 0);
    k->tsc_khz = tsc > 0 ? (uint32_t)tsc : 0;
    if (!kvm_setup_cpuid(k, errp)) {
        goto fail;
    }
    kvm_install_kick_signal();
    return &k->base;

fail:
    if (k->vm_fd >= 0) {
        close(k->vm_fd);
    }
    if (k->kvm_fd >= 0) {
        close(k->kvm_fd);
    }
    g_free(k);
    return NULL;
}

static bool kvm_map_ram(Accel *a, int slot, uint64_t gpa, uint64_t size,
                        void *hva, GError **errp)
{
    KvmAccel *k = (KvmAccel *)a;
    struct kvm_userspace_memory_region r = {
        .slot = slot, .guest_phys_addr = gpa, .memory_size = size,
        .userspace_addr = (uintptr_t)hva,
    };

    if (ioctl(k->vm_fd, KVM_SET_USER_MEMORY_REGION, &r) < 0) {
        ferry_error_setg_errno(errp, errno,
                               "KVM_SET_USER_MEMORY_REGION gpa=0x%" G_GINT64_MODIFIER
                               "x size=0x%" G_GINT64_MODIFIER "x", gpa, size);
        return false;
    }
    return true;
}

static Vcpu *kvm_vcpu_create(Accel *a, int index, GError **errp)
{
    KvmAccel *k = (KvmAccel *)a;
    KvmVcpu *v = g_new0(KvmVcpu, 1);
    size_t bytes = sizeof(struct kvm_cpuid2) +
                   k->cpuid->nent * sizeof(struct kvm_cpuid_entry2);
    g_autofree struct kvm_cpuid2 *c = g_memdup2(k->cpuid, bytes);

    v->base.accel = a;
    v->base.index = index;
    v->fd = ioctl(k->vm_fd, KVM_CREATE_VCPU, index);
    if (v->fd < 0) {
        ferry_error_setg_errno(errp, errno, "KVM_CREATE_VCPU %d", index);
        g_free(v);
        return NULL;
    }
    v->run = mmap(NULL, k->run_size, PROT_READ | PROT_WRITE, MAP_SHARED,
                  v->fd, 0);
    if (v->run == MAP_FAILED) {
        ferry_error_setg_errno(errp, errno, "mmap of vCPU %d", index);
        close(v->fd);
        g_free(v);
        return NULL;
    }
    for (uint32_t i = 0; i < c->nent; i++) {
        struct kvm_cpuid_entry2 *e = &c->entries[i];
        if (e->function == 1) {
            e->ebx = (e->ebx & 0x00ffffffu) | ((uint32_t)index << 24);
        } else if (e->function == 0xb || e->function == 0x1f) {
            e->edx = index;
        }
    }
    if (ioctl(v->fd, KVM_SET_CPUID2, c) < 0) {
        ferry_error_setg_errno(errp, errno, "KVM_SET_CPUID2");
        munmap(v->run, k->run_size);
        close(v->fd);
        g_free(v);
        return NULL;
    }
    return &v->base;
}

static void kvm_vcpu_destroy(Vcpu *vb)
{
    KvmVcpu *v = (KvmVcpu *)vb;
    KvmAccel *k = (KvmAccel *)vb->accel;

    munmap(v->run, k->run_size);
    close(v->fd);
    g_free(v);
}

static VcpuExit kvm_handle_internal_error(KvmVcpu *v, GError **errp)
{
    struct kvm_regs regs = { 0 };
    struct kvm_run *run = v->run;

    ioctl(v->fd, KVM_GET_REGS, &regs);
    if (run->exit_reason == KVM_EXIT_FAIL_ENTRY) {
        ferry_error_setg(errp, "vCPU %d: KVM entry failed, hardware reason "
                         "0x%llx, rip=0x%llx", v->base.index,
                         run->fail_entry.hardware_entry_failure_reason,
                         regs.rip);
    } else if (run->exit_reason == KVM_EXIT_INTERNAL_ERROR) {
        ferry_error_setg(errp, "vCPU %d: KVM internal error, suberror %u "
                         "(%s), rip=0x%llx", v->base.index,
                         run->internal.suberror,
                         run->internal.suberror == KVM_INTERNAL_ERROR_EMULATION
                         ? "instruction emulation failed" : "see KVM api.rst",
                         regs.rip);
    } else {
        ferry_error_setg(errp, "vCPU %d: unhandled KVM exit %u at rip=0x%llx",
                         v->base.index, run->exit_reason, regs.rip);
    }
    return VCPU_EXIT_ERROR;
}

static VcpuExit kvm_vcpu_run(Vcpu *vb, GError **errp)
{
    KvmVcpu *v = (KvmVcpu *)vb;
    const CpuBus *bus = &vb->accel->cfg.bus;
    struct kvm_run *run = v->run;

    if (!v->thread_known) {
        v->thread = pthread_self();
        __atomic_store_n(&v->thread_known, true, __ATOMIC_RELEASE);
    }
    for (;;) {
        int r = ioctl(v->fd, KVM_RUN, 0);
        if (r < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                __atomic_store_n(&run->immediate_exit, 0, __ATOMIC_RELAXED);
                return VCPU_EXIT_KICKED;
            }
            ferry_error_setg_errno(errp, errno, "vCPU %d: KVM_RUN", vb->index);
            return VCPU_EXIT_ERROR;
        }
        switch (run->exit_reason) {
        case KVM_EXIT_IO: {
            uint8_t *p = (uint8_t *)run + run->io.data_offset;
            for (uint32_t i = 0; i < run->io.count; i++) {
                bus->pio(bus->opaque, run->io.port, p, run->io.size,
                         run->io.direction == KVM_EXIT_IO_OUT);
                p += run->io.size;
            }
            break;
        }
        case KVM_EXIT_MMIO:
            bus->mmio(bus->opaque, run->mmio.phys_addr, run->mmio.data,
                      run->mmio.len, run->mmio.is_write);
            break;
        case KVM_EXIT_INTR:
            __atomic_store_n(&run->immediate_exit, 0, __ATOMIC_RELAXED);
            return VCPU_EXIT_KICKED;
        case KVM_EXIT_SHUTDOWN:
            return VCPU_EXIT_SHUTDOWN;
        case KVM_EXIT_SYSTEM_EVENT:
            if (run->system_event.type == KVM_SYSTEM_EVENT_RESET) {
                return VCPU_EXIT_RESET;
            }
            return VCPU_EXIT_POWEROFF;
        case KVM_EXIT_HLT:
            /* in-kernel LAPIC handles HLT; reaching here means IF=0 forever */
            ferry_error_setg(errp, "vCPU %d halted with interrupts off",
                             vb->index);
            return VCPU_EXIT_ERROR;
        default:
            return kvm_handle_internal_error(v, errp);
        }
    }
}

static void kvm_vcpu_kick(Vcpu *vb)
{
    KvmVcpu *v = (KvmVcpu *)vb;

    __atomic_store_n(&v->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&v->thread_known, __ATOMIC_ACQUIRE)) {
        pthread_kill(v->thread, SIGUSR1);
    }
}

/* -- state: X86CpuState <-> KVM's structures ---------------------------- */

static void seg_from_kvm(X86Segment *d, const struct kvm_segment *s)
{
    d->base = s->base;
    d->limit = s->limit;
    d->selector = s->selector;
    d->ar = (s->type & 0xf) | (s->s ? X86_SEG_S : 0) |
            ((uint32_t)(s->dpl & 3) << X86_SEG_DPL_SHIFT) |
            (s->present ? X86_SEG_P : 0) | (s->avl ? X86_SEG_AVL : 0) |
            (s->l ? X86_SEG_L : 0) | (s->db ? X86_SEG_DB : 0) |
            (s->g ? X86_SEG_G : 0) | (s->unusable ? X86_SEG_UNUSABLE : 0);
}

static void seg_to_kvm(struct kvm_segment *d, const X86Segment *s)
{
    memset(d, 0, sizeof(*d));
    d->base = s->base;
    d->limit = s->limit;
    d->selector = s->selector;
    d->type = s->ar & X86_SEG_TYPE_MASK;
    d->s = !!(s->ar & X86_SEG_S);
    d->dpl = (s->ar >> X86_SEG_DPL_SHIFT) & 3;
    d->present = !!(s->ar & X86_SEG_P);
    d->avl = !!(s->ar & X86_SEG_AVL);
    d->l = !!(s->ar & X86_SEG_L);
    d->db = !!(s->ar & X86_SEG_DB);
    d->g = !!(s->ar & X86_SEG_G);
    d->unusable = !!(s->ar & X86_SEG_UNUSABLE);
}

/* The MSRs X86CpuState carries, with where each lives in the record. */
static const struct {
    uint32_t index;
    size_t offset;
} kvm_msrs[] = {
#define M(idx, field) { idx, G_STRUCT_OFFSET(X86CpuState, field) }
    M(0x10, tsc),
    M(0xc0000103, tsc_aux),
    M(0x6e0, tsc_deadline),
    M(0xc0000081, star),
    M(0xc0000082, lstar),
    M(0xc0000083, cstar),
    M(0xc0000084, sfmask),
    M(0xc0000102, kernel_gs_base),
    M(0x174, sysenter_cs),
    M(0x175, sysenter_esp),
    M(0x176, sysenter_eip),
    M(0x277, pat),
    M(0x1a0, misc_enable),
    M(0x2ff, mtrr_def_type),
    M(0x4b564d01, kvmclock_system_time),
    M(0x4b564d00, kvmclock_wall_clock),
#undef M
};

static const uint32_t kvm_fixed_mtrrs[X86_NR_FIXED_MTRRS] = {
    0x250, 0x258, 0x259, 0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e,
    0x26f,
};

#define KVM_NR_STATE_MSRS (G_N_ELEMENTS(kvm_msrs) + X86_NR_FIXED_MTRRS + \
                           2 * X86_NR_VAR_MTRRS)

static uint64_t *msr_slot(X86CpuState *s, size_t i, uint32_t *index)
{
    if (i < G_N_ELEMENTS(kvm_msrs)) {
        *index = kvm_msrs[i].index;
        return (uint64_t *)((char *)s + kvm_msrs[i].offset);
    }
    i -= G_N_ELEMENTS(kvm_msrs);
    if (i < X86_NR_FIXED_MTRRS) {
        *index = kvm_fixed_mtrrs[i];
        return &s->mtrr_fixed[i];
    }
    i -= X86_NR_FIXED_MTRRS;
    *index = 0x200 + i;
    return &s->mtrr_var[i / 2][i % 2];
}

typedef struct {
    struct kvm_msrs hdr;
    struct kvm_msr_entry e[KVM_NR_STATE_MSRS];
} KvmMsrBuf;

static bool kvm_vcpu_get_state(Vcpu *vb, X86CpuState *s, GError **errp)
{
    KvmVcpu *v = (KvmVcpu *)vb;
    struct kvm_regs r;
    struct kvm_sregs sr;
    struct kvm_xcrs xcrs;
    struct kvm_vcpu_events ev;
    struct kvm_mp_state mp;
    struct kvm_debugregs dbg;
    KvmMsrBuf msrs;
    struct kvm_xsave *xs = g_malloc0(sizeof(*xs));
    struct kvm_lapic_state lapic;

    memset(s, 0, sizeof(*s));
    s->version = X86_STATE_VERSION;
    s->cpu_index = vb->index;
    if (ioctl(v->fd, KVM_GET_REGS, &r) < 0 ||
        ioctl(v->fd, KVM_GET_SREGS, &sr) < 0 ||
        ioctl(v->fd, KVM_GET_XSAVE, xs) < 0 ||
        ioctl(v->fd, KVM_GET_VCPU_EVENTS, &ev) < 0 ||
        ioctl(v->fd, KVM_GET_MP_STATE, &mp) < 0 ||
        ioctl(v->fd, KVM_GET_DEBUGREGS, &dbg) < 0 ||
        ioctl(v->fd, KVM_GET_LAPIC, &lapic) < 0) {
        ferry_error_setg_errno(errp, errno, "vCPU %d: reading state",
                               vb->index);
        g_free(xs);
        return false;
    }
    uint64_t g[X86_NR_GPRS] = {
        r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi,
        r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15,
    };
    memcpy(s->gpr, g, sizeof(g));
    s->rip = r.rip;
    s->rflags = r.rflags;
    seg_from_kvm(&s->seg[X86_ES], &sr.es);
    seg_from_kvm(&s->seg[X86_CS], &sr.cs);
    seg_from_kvm(&s->seg[X86_SS], &sr.ss);
    seg_from_kvm(&s->seg[X86_DS], &sr.ds);
    seg_from_kvm(&s->seg[X86_FS], &sr.fs);
    seg_from_kvm(&s->seg[X86_GS], &sr.gs);
    seg_from_kvm(&s->ldt, &sr.ldt);
    seg_from_kvm(&s->tr, &sr.tr);
    s->gdt.base = sr.gdt.base;
    s->gdt.limit = sr.gdt.limit;
    s->idt.base = sr.idt.base;
    s->idt.limit = sr.idt.limit;
    s->cr0 = sr.cr0;
    s->cr2 = sr.cr2;
    s->cr3 = sr.cr3;
    s->cr4 = sr.cr4;
    s->cr8 = sr.cr8;
    s->efer = sr.efer;
    s->apic_base = sr.apic_base;
    memcpy(s->xsave, xs->region, X86_XSAVE_BYTES);
    g_free(xs);
    s->xcr0 = 1;
    if (ioctl(v->fd, KVM_GET_XCRS, &xcrs) == 0) {
        for (uint32_t i = 0; i < xcrs.nr_xcrs; i++) {
            if (xcrs.xcrs[i].xcr == 0) {
                s->xcr0 = xcrs.xcrs[i].value;
            }
        }
    }
    memcpy(s->dr, dbg.db, sizeof(s->dr));
    s->dr6 = dbg.dr6;
    s->dr7 = dbg.dr7;
    s->exception.valid = ev.exception.injected || ev.exception.pending;
    s->exception.injected = ev.exception.injected;
    s->exception.vector = ev.exception.nr;
    s->exception.has_error = ev.exception.has_error_code;
    s->exception.error_code = ev.exception.error_code;
    s->interrupt.valid = ev.interrupt.injected;
    s->interrupt.injected = ev.interrupt.injected;
    s->interrupt.vector = ev.interrupt.nr;
    s->interrupt_shadow = ev.interrupt.shadow;
    s->nmi_injected = ev.nmi.injected;
    s->nmi_pending = ev.nmi.pending;
    s->nmi_masked = ev.nmi.masked;
    s->sipi_vector = ev.sipi_vector;
    switch (mp.mp_state) {
    case KVM_MP_STATE_HALTED:
        s->run_state = X86_RUN_STATE_HALTED;
        break;
    case KVM_MP_STATE_INIT_RECEIVED:
    case KVM_MP_STATE_UNINITIALIZED:
    case KVM_MP_STATE_SIPI_RECEIVED:
        s->run_state = X86_RUN_STATE_WAIT_SIPI;
        break;
    default:
        s->run_state = X86_RUN_STATE_RUNNABLE;
    }
    memcpy(s->lapic, lapic.regs, X86_LAPIC_BYTES);

    memset(&msrs, 0, sizeof(msrs));
    msrs.hdr.nmsrs = KVM_NR_STATE_MSRS;
    for (size_t i = 0; i < KVM_NR_STATE_MSRS; i++) {
        msr_slot(s, i, &msrs.e[i].index);
    }
    int n = ioctl(v->fd, KVM_GET_MSRS, &msrs);
    if (n < 0) {
        ferry_error_setg_errno(errp, errno, "vCPU %d: KVM_GET_MSRS", vb->index);
        return false;
    }
    /* KVM stops at the first MSR it does not know; keep reading past it. */
    for (size_t i = 0; i < KVM_NR_STATE_MSRS; i++) {
        uint32_t idx;
        uint64_t *slot = msr_slot(s, i, &idx);
        if ((int)i < n) {
            *slot = msrs.e[i].data;
        } else {
            struct { struct kvm_msrs h; struct kvm_msr_entry e; } one = {
                .h.nmsrs = 1, .e.index = idx,
            };
            if (ioctl(v->fd, KVM_GET_MSRS, &one) == 1) {
                *slot = one.e.data;
            }
        }
    }
    return true;
}

static bool kvm_vcpu_set_state(Vcpu *vb, const X86CpuState *s, GError **errp)
{
    KvmVcpu *v = (KvmVcpu *)vb;
    struct kvm_regs r;
    struct kvm_sregs sr;
    struct kvm_vcpu_events ev;
    struct kvm_mp_state mp;
    struct kvm_debugregs dbg;
    struct kvm_xcrs xcrs;
    KvmMsrBuf msrs;
    struct kvm_lapic_state lapic;
    g_autofree struct kvm_xsave *xs = g_malloc0(sizeof(*xs));
    X86CpuState *tmp = (X86CpuState *)s;   /* msr_slot only reads here */

    memset(&r, 0, sizeof(r));
    r.rax = s->gpr[X86_RAX]; r.rcx = s->gpr[X86_RCX];
    r.rdx = s->gpr[X86_RDX]; r.rbx = s->gpr[X86_RBX];
    r.rsp = s->gpr[X86_RSP]; r.rbp = s->gpr[X86_RBP];
    r.rsi = s->gpr[X86_RSI]; r.rdi = s->gpr[X86_RDI];
    r.r8 = s->gpr[X86_R8]; r.r9 = s->gpr[X86_R9];
    r.r10 = s->gpr[X86_R10]; r.r11 = s->gpr[X86_R11];
    r.r12 = s->gpr[X86_R12]; r.r13 = s->gpr[X86_R13];
    r.r14 = s->gpr[X86_R14]; r.r15 = s->gpr[X86_R15];
    r.rip = s->rip;
    r.rflags = s->rflags;

    memset(&sr, 0, sizeof(sr));
    seg_to_kvm(&sr.es, &s->seg[X86_ES]);
    seg_to_kvm(&sr.cs, &s->seg[X86_CS]);
    seg_to_kvm(&sr.ss, &s->seg[X86_SS]);
    seg_to_kvm(&sr.ds, &s->seg[X86_DS]);
    seg_to_kvm(&sr.fs, &s->seg[X86_FS]);
    seg_to_kvm(&sr.gs, &s->seg[X86_GS]);
    seg_to_kvm(&sr.ldt, &s->ldt);
    seg_to_kvm(&sr.tr, &s->tr);
    sr.gdt.base = s->gdt.base;
    sr.gdt.limit = s->gdt.limit;
    sr.idt.base = s->idt.base;
    sr.idt.limit = s->idt.limit;
    sr.cr0 = s->cr0;
    sr.cr2 = s->cr2;
    sr.cr3 = s->cr3;
    sr.cr4 = s->cr4;
    sr.cr8 = s->cr8;
    sr.efer = s->efer;
    sr.apic_base = s->apic_base;

    memcpy(xs->region, s->xsave, X86_XSAVE_BYTES);
    memset(&xcrs, 0, sizeof(xcrs));
    xcrs.nr_xcrs = 1;
    xcrs.xcrs[0].xcr = 0;
    xcrs.xcrs[0].value = s->xcr0 ? s->xcr0 : 1;

    memset(&dbg, 0, sizeof(dbg));
    memcpy(dbg.db, s->dr, sizeof(dbg.db));
    dbg.dr6 = s->dr6;
    dbg.dr7 = s->dr7;

    memset(&ev, 0, sizeof(ev));
    ev.exception.injected = s->exception.valid && s->exception.injected;
    ev.exception.nr = s->exception.vector;
    ev.exception.has_error_code = s->exception.has_error;
    ev.exception.error_code = s->exception.error_code;
    ev.interrupt.injected = s->interrupt.valid;
    ev.interrupt.nr = s->interrupt.vector;
    ev.interrupt.shadow = s->interrupt_shadow;
    ev.nmi.injected = s->nmi_injected;
    ev.nmi.pending = s->nmi_pending;
    ev.nmi.masked = s->nmi_masked;
    ev.sipi_vector = s->sipi_vector;
    ev.flags = KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR |
               KVM_VCPUEVENT_VALID_SHADOW;

    memset(&mp, 0, sizeof(mp));
    mp.mp_state = s->run_state == X86_RUN_STATE_HALTED ? KVM_MP_STATE_HALTED
                : s->run_state == X86_RUN_STATE_WAIT_SIPI
                  ? (s->cpu_index == 0 ? KVM_MP_STATE_RUNNABLE
                                       : KVM_MP_STATE_UNINITIALIZED)
                  : KVM_MP_STATE_RUNNABLE;

    memset(&msrs, 0, sizeof(msrs));
    msrs.hdr.nmsrs = KVM_NR_STATE_MSRS;
    for (size_t i = 0; i < KVM_NR_STATE_MSRS; i++) {
        msrs.e[i].data = *msr_slot(tmp, i, &msrs.e[i].index);
    }

    /* Order: sregs (paging mode) before MSRs that depend on it (api.rst). */
    if (ioctl(v->fd, KVM_SET_SREGS, &sr) < 0) {
        ferry_error_setg_errno(errp, errno, "vCPU %d: KVM_SET_SREGS", vb->index);
        return false;
    }
    if (ioctl(v->fd, KVM_SET_REGS, &r) < 0 ||
        ioctl(v->fd, KVM_SET_XSAVE, xs) < 0 ||
        ioctl(v->fd, KVM_SET_XCRS, &xcrs) < 0 ||
        ioctl(v->fd, KVM_SET_DEBUGREGS, &dbg) < 0 ||
        ioctl(v->fd, KVM_SET_VCPU_EVENTS, &ev) < 0 ||
        ioctl(v->fd, KVM_SET_MP_STATE, &mp) < 0) {
        ferry_error_setg_errno(errp, errno, "vCPU %d: writing state",
                               vb->index);
        return false;
    }
    /* MSRs KVM does not know are skipped one by one, not fatal. */
    for (size_t i = 0; i < KVM_NR_STATE_MSRS; i++) {
        struct { struct kvm_msrs h; struct kvm_msr_entry e; } one = {
            .h.nmsrs = 1, .e = msrs.e[i],
        };
        if (msrs.e[i].index == 0x10 && msrs.e[i].data == 0) {
            continue;     /* leave a fresh vCPU's TSC where KVM put it */
        }
        ioctl(v->fd, KVM_SET_MSRS, &one);
    }
    /* An all-zero LAPIC page means "leave KVM's reset LAPIC". */
    bool lapic_blank = true;
    for (int i = 0; i < X86_LAPIC_BYTES && lapic_blank; i++) {
        lapic_blank = s->lapic[i] == 0;
    }
    if (!lapic_blank) {
        memcpy(lapic.regs, s->lapic, X86_LAPIC_BYTES);
        if (ioctl(v->fd, KVM_SET_LAPIC, &lapic) < 0) {
            ferry_error_setg_errno(errp, errno, "vCPU %d: KVM_SET_LAPIC",
                                   vb->index);
            return false;
        }
    }
    return true;
}

static void kvm_set_irq(Accel *a, int gsi, bool level)
{
    KvmAccel *k = (KvmAccel *)a;
    struct kvm_irq_level l = { .irq = gsi, .level = level };

    ioctl(k->vm_fd, KVM_IRQ_LINE, &l);
}

static void kvm_signal_msi(Accel *a, uint64_t addr, uint32_t data)
{
    KvmAccel *k = (KvmAccel *)a;
    struct kvm_msi msi = {
        .address_lo = (uint32_t)addr, .address_hi = addr >> 32, .data = data,
    };

    if (ioctl(k->vm_fd, KVM_SIGNAL_MSI, &msi) < 0) {
        FERRY_TRACE_POINT(CPU, "kvm msi-failed addr=0x%" G_GINT64_MODIFIER
                          "x data=0x%x errno=%d", addr, data, errno);
    }
}

static bool kvm_ioeventfd(KvmAccel *k, uint64_t gpa, unsigned len, int fd,
                          bool del)
{
    struct kvm_ioeventfd io = {
        .addr = gpa, .len = len, .fd = fd,
        .flags = del ? KVM_IOEVENTFD_FLAG_DEASSIGN : 0,
    };

    return ioctl(k->vm_fd, KVM_IOEVENTFD, &io) == 0;
}

static bool kvm_add_ioeventfd(Accel *a, uint64_t gpa, unsigned len, int fd)
{
    return kvm_ioeventfd((KvmAccel *)a, gpa, len, fd, false);
}

static void kvm_del_ioeventfd(Accel *a, uint64_t gpa, unsigned len, int fd)
{
    kvm_ioeventfd((KvmAccel *)a, gpa, len, fd, true);
}

static void kvm_destroy(Accel *a)
{
    KvmAccel *k = (KvmAccel *)a;

    close(k->vm_fd);
    close(k->kvm_fd);
    g_free(k->cpuid);
    g_free(k);
}

const AccelOps kvm_accel_ops = {
    .name           = "kvm",
    .create         = kvm_create,
    .map_ram        = kvm_map_ram,
    .vcpu_create    = kvm_vcpu_create,
    .vcpu_run       = kvm_vcpu_run,
    .vcpu_kick      = kvm_vcpu_kick,
    .vcpu_get_state = kvm_vcpu_get_state,
    .vcpu_set_state = kvm_vcpu_set_state,
    .vcpu_destroy   = kvm_vcpu_destroy,
    .set_irq        = kvm_set_irq,
    .signal_msi     = kvm_signal_msi,
    .add_ioeventfd  = kvm_add_ioeventfd,
    .del_ioeventfd  = kvm_del_ioeventfd,
    .destroy        = kvm_destroy,
};
