/*
 * testos kernel part (CPL0): an IDT with exception handlers that report
 * and reset the machine, the SYSCALL entry for user mode, and the TSS base.
 * Everything here runs emulated on a paravirtual KVM, so it stays short.
 */
#include "testos.h"

struct idt_gate {
    uint16_t off_lo;
    uint16_t sel;
    uint8_t ist;
    uint8_t type;
    uint16_t off_mid;
    uint32_t off_hi;
    uint32_t zero;
} __attribute__((packed));

static struct idt_gate idt[256] __attribute__((aligned(16)));
static struct {
    uint16_t limit;
    uint64_t base;
} __attribute__((packed)) idt_ptr;

extern uint8_t tss_desc[16];
extern uint8_t tss[104];
extern char isr0[], isr1[], isr2[], isr3[], isr4[], isr5[], isr6[], isr7[],
    isr8[], isr9[], isr10[], isr11[], isr12[], isr13[], isr14[], isr15[],
    isr16[], isr17[], isr18[], isr19[], syscall_entry[];

static uint64_t rdmsr(uint32_t msr)
{
    uint32_t lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((uint64_t)hi << 32) | lo;
}

static void wrmsr(uint32_t msr, uint64_t v)
{
    __asm__ volatile("wrmsr" : : "c"(msr), "a"((uint32_t)v),
                     "d"((uint32_t)(v >> 32)));
}

static void set_gate(int n, void *fn, int dpl)
{
    uint64_t a = (uint64_t)fn;

    idt[n].off_lo = (uint16_t)a;
    idt[n].sel = 0x08;
    idt[n].ist = 0;
    idt[n].type = (uint8_t)(0x8e | (dpl << 5));   /* present, interrupt gate */
    idt[n].off_mid = (uint16_t)(a >> 16);
    idt[n].off_hi = (uint32_t)(a >> 32);
}

void kernel_setup(void);
void kernel_setup(void)
{
    static char *const isrs[20] = {
        isr0, isr1, isr2, isr3, isr4, isr5, isr6, isr7, isr8, isr9, isr10,
        isr11, isr12, isr13, isr14, isr15, isr16, isr17, isr18, isr19,
    };
    uint64_t t = (uint64_t)tss;

    for (int i = 0; i < 20; i++) {
        set_gate(i, isrs[i], 0);
    }
    idt_ptr.limit = sizeof(idt) - 1;
    idt_ptr.base = (uint64_t)idt;
    __asm__ volatile("lidt %0" : : "m"(idt_ptr));
    tss_desc[2] = (uint8_t)t;
    tss_desc[3] = (uint8_t)(t >> 8);
    tss_desc[4] = (uint8_t)(t >> 16);
    tss_desc[7] = (uint8_t)(t >> 24);
    tss_desc[8] = (uint8_t)(t >> 32);
    wrmsr(0xc0000080, rdmsr(0xc0000080) | 1);          /* EFER.SCE */
    wrmsr(0xc0000081, (0x10ull << 48) | (0x08ull << 32)); /* STAR */
    wrmsr(0xc0000082, (uint64_t)syscall_entry);          /* LSTAR */
    wrmsr(0xc0000084, 0x700);                            /* SFMASK: TF IF DF */
}

/* frame: vector, error, rip, cs, rflags, rsp, ss */
void kernel_exception(uint64_t *frame);
void kernel_exception(uint64_t *frame)
{
    uint64_t cr2;

    __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
    printf_("testos: EXCEPTION vector=%lu error=0x%lx rip=0x%lx cs=0x%lx rflags=0x%lx "
            "cr2=0x%lx\n", frame[0], frame[1], frame[2], frame[3], frame[4], cr2);
    printf_("testos: FAIL\n");
    outb(PORT_RESET_CTL, 0x06);
    for (;;) {
        __asm__ volatile("hlt");
    }
}

/* syscall: 0 = ping (returns arg + 1), 1 = power off. */
uint64_t kernel_syscall(uint64_t arg, uint64_t nr);
uint64_t kernel_syscall(uint64_t arg, uint64_t nr)
{
    switch (nr) {
    case 0:
        return arg + 1;
    case 1:
        outb(PORT_SLEEP_CTL, 0x34);
        return 0;
    }
    return (uint64_t)-1;
}
