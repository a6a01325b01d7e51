/*
 * The architectural reset state (SDM 3A, 9.1.1 "Processor State After
 * Reset") in the X86CpuState record; loaders then change what their boot
 * protocol asks for.
 */
#include "config.h"

#include <string.h>

#include "cpu/x86-state.h"

void x86_seg_flat(X86Segment *seg, uint16_t selector, uint32_t ar)
{
    memset(seg, 0, sizeof(*seg));
    seg->selector = selector;
    seg->base = 0;
    seg->limit = 0xffffffffu;
    seg->ar = ar;
}

void x86_state_reset(X86CpuState *s, uint32_t index)
{
    memset(s, 0, sizeof(*s));
    s->version = X86_STATE_VERSION;
    s->cpu_index = index;
    s->rip = 0xfff0;
    s->rflags = 0x2;
    s->gpr[X86_RDX] = 0x600;     /* family/model/stepping: any P6-class */
    for (int i = 0; i < X86_NR_SEGS; i++) {
        s->seg[i].limit = 0xffff;
        s->seg[i].ar = 0x3 | X86_SEG_S | X86_SEG_P;   /* r/w data, accessed */
    }
    s->seg[X86_CS].selector = 0xf000;
    s->seg[X86_CS].base = 0xffff0000;
    s->seg[X86_CS].ar = 0xb | X86_SEG_S | X86_SEG_P;  /* exec/read, accessed */
    s->ldt.limit = 0xffff;
    s->ldt.ar = 0x2 | X86_SEG_P;
    s->tr.limit = 0xffff;
    s->tr.ar = 0xb | X86_SEG_P;
    s->gdt.limit = 0xffff;
    s->idt.limit = 0xffff;
    s->cr0 = 0x60000010;         /* CD, NW, ET */
    s->xcr0 = 1;                 /* x87 */
    s->dr6 = 0xffff0ff0;
    s->dr7 = 0x400;
    s->apic_base = 0xfee00000 | (1u << 11) | (index == 0 ? (1u << 8) : 0);
    s->pat = 0x0007040600070406ull;
    s->run_state = index == 0 ? X86_RUN_STATE_RUNNABLE
                              : X86_RUN_STATE_WAIT_SIPI;
    /* FXSAVE image: FCW 0x37f, MXCSR 0x1f80, XSTATE_BV x87|SSE */
    s->xsave[0] = 0x7f;
    s->xsave[1] = 0x03;
    s->xsave[24] = 0x80;
    s->xsave[25] = 0x1f;
    s->xsave[512] = 0x3;
}
