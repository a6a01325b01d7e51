/*
 * testos entry: the PVH entry (32-bit protected mode, EBX = start_info)
 * and the 64-bit ELF entry (long mode, RSI = zero page) both end in
 * enter_user, which loads our GDT/TSS/IDT and drops to CPL3 with IOPL 3.
 * The CPL0 part is kept to a few dozen instructions: on a paravirtual KVM
 * every one of them is emulated.  Page tables are built by the assembler.
 */
#define KERNEL_CS 0x08
#define KERNEL_DS 0x10
#define USER_DS   0x1b
#define USER_CS   0x23
#define TSS_SEL   0x28

    .section .note.pvh, "a"
    .p2align 2
    .long 4              /* namesz */
    .long 4              /* descsz */
    .long 18             /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_start

    .section .text.boot, "ax"
    .code32
    .globl pvh_start
pvh_start:
    mov %ebx, %esi                 /* start_info */
    mov $1, %edi                   /* boot kind 1: PVH */
    mov $pml4, %eax
    mov %eax, %cr3
    mov $0x620, %eax               /* PAE | OSFXSR | OSXMMEXCPT */
    mov %eax, %cr4
    mov $0xc0000080, %ecx          /* EFER.LME */
    rdmsr
    or $0x100, %eax
    wrmsr
    mov $0x80000023, %eax          /* PG | NE | MP | PE */
    mov %eax, %cr0
    lgdt gdt_ptr
    ljmp $KERNEL_CS, $long_entry

    .code64
    .globl elf64_start
elf64_start:
    mov $2, %edi                   /* boot kind 2: zero page in RSI */
    mov $pml4, %eax
    mov %rax, %cr3
    mov %cr4, %rax
    or $0x600, %eax
    mov %rax, %cr4
    lgdt gdt_ptr
    pushq $KERNEL_CS
    pushq $long_entry
    lretq

long_entry:
    mov $KERNEL_DS, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    lea kstack_top(%rip), %rsp
    mov %rdi, %rbx                 /* boot kind and pointer for user_main */
    mov %rsi, %r12
    call kernel_setup              /* IDT, TSS base into its descriptor */
    mov $TSS_SEL, %eax
    ltr %ax
    mov %rbx, %rdi
    mov %r12, %rsi
    pushq $USER_DS
    lea ustack_top(%rip), %rax
    pushq %rax
    pushq $0x3002                  /* IOPL 3 (the TSS bitmap too), IF=0 */
    pushq $USER_CS
    lea user_main(%rip), %rax
    pushq %rax
    iretq

/* Exception stubs: push a fake error code where the CPU pushes none. */
    .macro isr n, has_err
    .globl isr\n
isr\n:
    .if \has_err == 0
    pushq $0
    .endif
    pushq $\n
    jmp isr_common
    .endm
    isr 0,0; isr 1,0; isr 2,0; isr 3,0; isr 4,0; isr 5,0; isr 6,0; isr 7,0
    isr 8,1; isr 9,0; isr 10,1; isr 11,1; isr 12,1; isr 13,1; isr 14,1
    isr 15,0; isr 16,0; isr 17,1; isr 18,0; isr 19,0

isr_common:
    mov %rsp, %rdi                 /* vector, error, rip, cs, rflags... */
    call kernel_exception          /* does not return */
1:  jmp 1b

/*
 * syscall from CPL3 (rax = number, rdi = argument; rcx and r11 hold the
 * return rip and rflags).  int $0x80 would be the classic gate, but the
 * paravirtual KVM here answers it with #UD; SYSCALL works.
 */
    .globl syscall_entry
syscall_entry:
    mov %rsp, user_rsp(%rip)
    lea kstack_top(%rip), %rsp
    push %rcx
    push %r11
    mov %rax, %rsi
    call kernel_syscall            /* (arg, number) -> rax */
    pop %r11
    pop %rcx
    /* back with iretq: SYSRET raises #GP on this paravirtual KVM */
    pushq $USER_DS
    pushq user_rsp(%rip)
    push %r11
    pushq $USER_CS
    push %rcx
    iretq

    .data
    .p2align 4
gdt:
    .quad 0
    .quad 0x00af9b000000ffff       /* 0x08 kernel code, 64-bit */
    .quad 0x00cf93000000ffff       /* 0x10 kernel data */
    .quad 0x00cff3000000ffff       /* 0x18 user data, DPL 3 */
    .quad 0x00affb000000ffff       /* 0x20 user code, 64-bit, DPL 3 */
    .globl tss_desc
tss_desc:                           /* 0x28: 16-byte TSS descriptor */
    .word tss_end - tss - 1        /* limit: TSS and I/O bitmap */
    .word 0                        /* base 15:0, patched: see below */
    .byte 0, 0x89, 0, 0            /* base 23:16, type, flags, base 31:24 */
    .long 0, 0
gdt_end:
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt
user_rsp:
    .quad 0

/*
 * The TSS: only rsp0 matters (the stack for exceptions and int 0x80 from
 * CPL3).  kernel_setup writes its address into the descriptor above.
 */
    .p2align 4
    .globl tss
tss:
    .long 0
    .quad kstack_top               /* rsp0 */
    .fill 88, 1, 0
    .word 0, 104                   /* I/O bitmap right after */
    .fill 8192, 1, 0               /* every port allowed at CPL3 */
    .byte 0xff
tss_end:

    .section .data.pagetables, "aw"
    .p2align 12
pml4:
    .quad pdpt + 0x7
    .fill 511, 8, 0
pdpt:
    .quad pd + 0x7
    .quad pd + 0x1007
    .quad pd + 0x2007
    .quad pd + 0x3007
    .fill 508, 8, 0
pd:                                 /* 4 GiB identity, 2 MiB pages, user */
    .set i, 0
    .rept 1536
    .quad (i << 21) | 0x87
    .set i, i + 1
    .endr
    .rept 512                      /* 3-4 GiB: PCI MMIO, uncached */
    .quad (i << 21) | 0x9f
    .set i, i + 1
    .endr

    .bss
    .p2align 12
    .globl kstack_top
kstack:
    .skip 16384
kstack_top:
ustack:
    .skip 65536
ustack_top:
