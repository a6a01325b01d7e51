/*
 * The x86-64 architectural state of one vCPU, as every backend (kvm, jit)
 * reads and writes it and as migration carries it.  It is the contract
 * between backends: a vCPU saved by KVM must resume on the JIT and back.
 *
 * Rules that keep it portable:
 *  1. Only architectural state (SDM vol. 3), never a backend's cache of it:
 *     segment registers carry their hidden parts as the SDM defines them
 *     (base, limit in bytes, access rights in the VMX "AR byte" layout).
 *  2. FPU/SSE/AVX state is the XSAVE standard (non-compacted) image, which
 *     KVM_GET_XSAVE returns and a JIT can produce with plain stores.  The
 *     first 512 bytes are the FXSAVE layout, so a guest without XSAVE still
 *     fits: xcr0 = 0x3 and the header's xstate_bv says what is valid.
 *  3. Pending and injected events are explicit, so an exception or an
 *     interrupt half-delivered at save time is delivered exactly once.
 *  4. The local APIC is its 1 KiB register page (the layout the guest sees at
 *     0xFEE00000), plus the timer's remaining count in ns.
 *  5. The layout only grows: new fields go at the end, X86_STATE_VERSION is
 *     bumped and a reader of an older version keeps the reset values.
 */
#ifndef FERRY_CPU_X86_STATE_H
#define FERRY_CPU_X86_STATE_H

#include <stdint.h>

#define X86_STATE_VERSION 1

/* Indices into X86CpuState.gpr: the instruction encoding's order. */
enum {
    X86_RAX, X86_RCX, X86_RDX, X86_RBX, X86_RSP, X86_RBP, X86_RSI, X86_RDI,
    X86_R8, X86_R9, X86_R10, X86_R11, X86_R12, X86_R13, X86_R14, X86_R15,
    X86_NR_GPRS
};

/* Indices into X86CpuState.seg: the order of the sreg encoding. */
enum { X86_ES, X86_CS, X86_SS, X86_DS, X86_FS, X86_GS, X86_NR_SEGS };

/* Access rights, VMX layout (SDM 3C, 24.4.1 "Guest Register State"). */
#define X86_SEG_TYPE_MASK   0x000fu  /* type field (code/data, accessed...) */
#define X86_SEG_S           0x0010u  /* 1 = code/data, 0 = system */
#define X86_SEG_DPL_SHIFT   5        /* 2 bits */
#define X86_SEG_P           0x0080u  /* present */
#define X86_SEG_AVL         0x1000u
#define X86_SEG_L           0x2000u  /* 64-bit code */
#define X86_SEG_DB          0x4000u  /* default operand size 32 */
#define X86_SEG_G           0x8000u  /* limit in pages */
#define X86_SEG_UNUSABLE    0x10000u /* null selector loaded */

typedef struct X86Segment {
    uint64_t base;
    uint32_t limit;      /* bytes (already scaled by G) */
    uint32_t ar;         /* X86_SEG_* access rights */
    uint16_t selector;
    uint16_t pad[3];
} X86Segment;

typedef struct X86DescTable {
    uint64_t base;
    uint16_t limit;
    uint16_t pad[3];
} X86DescTable;

/* An event (exception, interrupt or NMI) that is pending or injected. */
typedef struct X86Event {
    uint8_t valid;       /* 0: none */
    uint8_t vector;
    uint8_t has_error;   /* error_code is meaningful */
    uint8_t injected;    /* 1: delivery started (re-inject), 0: pending */
    uint32_t error_code;
} X86Event;

/* Where the vCPU is in its life (what KVM calls mp_state). */
typedef enum {
    X86_RUN_STATE_RUNNABLE = 0,
    X86_RUN_STATE_HALTED = 1,        /* HLT, waits for an interrupt */
    X86_RUN_STATE_WAIT_SIPI = 2,     /* AP after INIT */
    X86_RUN_STATE_SHUTDOWN = 3,      /* triple fault */
} X86RunState;

#define X86_XSAVE_BYTES 4096   /* KVM's struct kvm_xsave region */
#define X86_LAPIC_BYTES 1024
#define X86_NR_VAR_MTRRS 8
#define X86_NR_FIXED_MTRRS 11

typedef struct X86CpuState {
    uint32_t version;            /* X86_STATE_VERSION of the writer */
    uint32_t cpu_index;          /* vCPU number = initial APIC id */

    uint64_t gpr[X86_NR_GPRS];
    uint64_t rip;
    uint64_t rflags;

    X86Segment seg[X86_NR_SEGS];
    X86Segment ldt;
    X86Segment tr;
    X86DescTable gdt;
    X86DescTable idt;

    uint64_t cr0, cr2, cr3, cr4, cr8;
    uint64_t efer;
    uint64_t xcr0;
    uint64_t dr[4];
    uint64_t dr6, dr7;

    /* MSRs that a 64-bit OS sets and expects back (SDM 4, table 2-2). */
    uint64_t apic_base;          /* IA32_APIC_BASE */
    uint64_t tsc;                /* guest TSC value at save time */
    uint64_t tsc_aux;
    uint64_t tsc_deadline;
    uint64_t star, lstar, cstar, sfmask, kernel_gs_base;
    uint64_t sysenter_cs, sysenter_esp, sysenter_eip;
    uint64_t pat;
    uint64_t misc_enable;
    uint64_t mtrr_def_type;
    uint64_t mtrr_fixed[X86_NR_FIXED_MTRRS];
    uint64_t mtrr_var[X86_NR_VAR_MTRRS][2];   /* base, mask */
    uint64_t kvmclock_system_time;  /* MSR 0x4b564d01 (paravirt clock) */
    uint64_t kvmclock_wall_clock;   /* MSR 0x4b564d00 */

    /* events */
    X86Event exception;
    X86Event interrupt;          /* external interrupt (no error code) */
    uint8_t nmi_pending;
    uint8_t nmi_injected;
    uint8_t nmi_masked;
    uint8_t interrupt_shadow;    /* STI / MOV SS blocking */
    uint8_t run_state;           /* X86RunState */
    uint8_t sipi_vector;
    uint8_t pad0[2];

    /* local APIC: register page and timer */
    uint8_t lapic[X86_LAPIC_BYTES];
    uint64_t lapic_timer_remaining_ns;

    /* x87/SSE/AVX: XSAVE standard format, 64-byte aligned */
    uint8_t xsave[X86_XSAVE_BYTES] __attribute__((aligned(64)));
} X86CpuState;

/* The state after RESET (SDM 3A, 9.1.1), for the vCPU numbered index. */
void x86_state_reset(X86CpuState *s, uint32_t index);

/* Flat segment helpers for boot loaders. */
void x86_seg_flat(X86Segment *seg, uint16_t selector, uint32_t ar);

/* Access rights for common flat segments. */
#define X86_AR_CODE64  (0xbu | X86_SEG_S | X86_SEG_P | X86_SEG_L | X86_SEG_G)
#define X86_AR_CODE32  (0xbu | X86_SEG_S | X86_SEG_P | X86_SEG_DB | X86_SEG_G)
#define X86_AR_DATA    (0x3u | X86_SEG_S | X86_SEG_P | X86_SEG_DB | X86_SEG_G)
#define X86_AR_TSS64   (0xbu | X86_SEG_P)

/* Control register and EFER bits the loaders and backends use. */
#define X86_CR0_PE  (1ull << 0)
#define X86_CR0_MP  (1ull << 1)
#define X86_CR0_ET  (1ull << 4)
#define X86_CR0_NE  (1ull << 5)
#define X86_CR0_WP  (1ull << 16)
#define X86_CR0_AM  (1ull << 18)
#define X86_CR0_PG  (1ull << 31)
#define X86_CR4_PAE (1ull << 5)
#define X86_CR4_PGE (1ull << 7)
#define X86_CR4_OSFXSR (1ull << 9)
#define X86_CR4_OSXMMEXCPT (1ull << 10)
#define X86_EFER_SCE (1ull << 0)
#define X86_EFER_LME (1ull << 8)
#define X86_EFER_LMA (1ull << 10)
#define X86_EFER_NXE (1ull << 11)

#endif
