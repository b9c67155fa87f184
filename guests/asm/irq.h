/*
 * Interrupts for 32-bit PVH guests: a flat GDT of the guest's own, an IDT whose every vector
 * reports itself as unexpected until the guest installs a handler, the local APIC, the I/O
 * APIC and a local APIC timer watchdog for bounded waits. 32-bit code; include after guest.h.
 *
 * Use: call irq_init (with interrupts off, as at the PVH entry), install handlers with
 * irq_set_handler, route I/O APIC pins with ioapic_route, then `sti`. A handler ends with
 * LAPIC_EOI and IRET (below); the CPU saves and restores EFLAGS, so a handler may change the flags
 * but must preserve every register it uses.
 *
 * To wait for something an interrupt brings, without missing it and without spinning:
 *
 *     call watchdog_arm
 * 1:  cli
 *     (check the condition; jump out if met, then `sti`)
 *     cmpl $0, watchdog_fired
 *     jne timed_out
 *     sti
 *     hlt             (the interrupt shadow of sti covers hlt: a wake-up cannot be lost)
 *     jmp 1b
 */

#define LAPIC_BASE 0xfee00000
#define LAPIC_TPR (LAPIC_BASE + 0x80)
#define LAPIC_EOI_REG (LAPIC_BASE + 0xb0)
#define LAPIC_SVR (LAPIC_BASE + 0xf0)
#define LAPIC_LVT_TIMER (LAPIC_BASE + 0x320)
#define LAPIC_TIMER_INITIAL (LAPIC_BASE + 0x380)
#define LAPIC_TIMER_DIVIDE (LAPIC_BASE + 0x3e0)
#define LAPIC_SVR_VALUE 0x1ff       /* software-enabled, spurious vector 0xff */
#define LVT_MASKED 0x10000
#define IOAPIC_BASE 0xfec00000
#define IOAPIC_SEL IOAPIC_BASE
#define IOAPIC_WIN (IOAPIC_BASE + 0x10)
#define IOAPIC_REDIR 0x10           /* pin n: registers 0x10 + 2n (low) and 0x11 + 2n (high) */
#define PIC1_DATA 0x21
#define PIC2_DATA 0xa1
#define GDT_CODE 0x08
#define GDT_DATA 0x10
#define IDT_VECTORS 256
#define IRQ_STUB_SIZE 8
#define INTERRUPT_GATE 0x8e00       /* present, DPL 0, 32-bit interrupt gate */
/*
 * The watchdog: the local APIC timer, one-shot, divided by 16. KVM's APIC bus runs at 1 GHz
 * (a VMM can only make it slower), so this count is at least 10 s of wall time: far longer
 * than any device request takes, even emulated.
 */
#define WATCHDOG_VECTOR 0x30
#define WATCHDOG_DIVIDE 0x3         /* divide by 16 */
#define WATCHDOG_COUNT 625000000

/* Tells the local APIC the current interrupt is handled (no register changes). */
.macro LAPIC_EOI
    movl $0, LAPIC_EOI_REG
.endm

/*
 * Returns from an interrupt handler, as `iret` would at the same privilege level: EIP, CS and
 * EFLAGS are on the stack. The guests do not use `iret` itself: KVM's instruction emulator,
 * which runs every guest instruction on these machines, emulates it only in real mode (a
 * protected-mode `iret` stops the VM with an emulation failure). Instead the frame is
 * rearranged into EFLAGS, EIP and restored with `popf` and `ret`; an interrupt that arrives
 * between the two (`popf` may set IF) nests harmlessly on the same stack.
 */
.macro IRET
    push %eax
    mov 4(%esp), %eax               /* EIP */
    xchg %eax, 12(%esp)             /* EFLAGS' slot = EIP; EAX = EFLAGS */
    mov %eax, 8(%esp)               /* CS' slot = EFLAGS */
    pop %eax
    lea 4(%esp), %esp               /* drop the stale EIP */
    popf
    ret
.endm

    .text

/* irq_init: loads the guest's GDT and an IDT of unexpected-vector stubs, masks the 8259s
 * (whose ExtINT line would otherwise deliver the legacy IRQs a second time), enables the local
 * APIC and installs the watchdog. Interrupts stay off. */
irq_init:
    push %eax
    push %ecx
    push %edx
    push %edi
    lgdt irq_gdtr
    ljmp $GDT_CODE, $1f
1:  mov $GDT_DATA, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %fs
    mov %ax, %gs
    mov %ax, %ss
    mov $irq_idt, %edi
    mov $irq_stubs, %edx
    mov $IDT_VECTORS, %ecx
2:  call irq_gate
    add $8, %edi
    add $IRQ_STUB_SIZE, %edx
    dec %ecx
    jnz 2b
    lidt irq_idtr
    mov $0xff, %al
    out %al, $PIC1_DATA
    out %al, $PIC2_DATA
    movl $0, LAPIC_TPR
    movl $LAPIC_SVR_VALUE, LAPIC_SVR
    movl $(LVT_MASKED | WATCHDOG_VECTOR), LAPIC_LVT_TIMER
    mov $WATCHDOG_VECTOR, %eax
    mov $watchdog_handler, %edx
    call irq_set_handler
    pop %edi
    pop %edx
    pop %ecx
    pop %eax
    ret

/* irq_gate: writes at EDI an interrupt gate to the handler at EDX. */
irq_gate:
    push %eax
    mov %edx, %eax
    mov %ax, (%edi)
    movw $GDT_CODE, 2(%edi)
    movw $INTERRUPT_GATE, 4(%edi)
    shr $16, %eax
    mov %ax, 6(%edi)
    pop %eax
    ret

/* irq_set_handler: vector EAX is handled at EDX. */
irq_set_handler:
    push %edi
    lea irq_idt(, %eax, 8), %edi
    call irq_gate
    pop %edi
    ret

/* ioapic_route: I/O APIC pin ECX delivers vector EAX (fixed, edge, active high) to APIC id 0,
 * unmasked. */
ioapic_route:
    push %eax
    push %ecx
    lea (IOAPIC_REDIR + 1)(, %ecx, 2), %ecx
    movl %ecx, IOAPIC_SEL           /* high half first: the destination */
    movl $0, IOAPIC_WIN
    dec %ecx
    movl %ecx, IOAPIC_SEL
    and $0xff, %eax
    movl %eax, IOAPIC_WIN
    pop %ecx
    pop %eax
    ret

/* ioapic_read: EAX = I/O APIC register ECX. */
ioapic_read:
    movl %ecx, IOAPIC_SEL
    movl IOAPIC_WIN, %eax
    ret

/* watchdog_arm: starts the watchdog (clears watchdog_fired). */
watchdog_arm:
    movl $0, watchdog_fired
    movl $WATCHDOG_VECTOR, LAPIC_LVT_TIMER
    movl $WATCHDOG_DIVIDE, LAPIC_TIMER_DIVIDE
    movl $WATCHDOG_COUNT, LAPIC_TIMER_INITIAL
    ret

/* watchdog_disarm: stops the watchdog. */
watchdog_disarm:
    movl $0, LAPIC_TIMER_INITIAL
    movl $(LVT_MASKED | WATCHDOG_VECTOR), LAPIC_LVT_TIMER
    ret

watchdog_handler:
    movl $1, watchdog_fired
    LAPIC_EOI
    IRET

/* Every vector starts here: its stub pushes the vector number. Says which vector arrived and,
 * for an exception, where, then powers off. */
irq_unexpected:
    cld
    mov $guest_stack_top, %esp
    sub $64, %esp
    FAIL_BEGIN
    PRINT "unexpected interrupt or exception, vector "
    mov irq_last_vector, %eax
    call puthex
    PRINT " (eip "
    mov irq_last_eip, %eax
    call puthex
    PRINTLN " if an exception)"
    jmp poweroff

/* The stubs: `push $vector; jmp irq_stub_common`, IRQ_STUB_SIZE bytes each. */
    .balign IRQ_STUB_SIZE
irq_stubs:
    .set irq_vector, 0
    .rept IDT_VECTORS
    .byte 0x6a, irq_vector & 0xff   /* push imm8 */
    .byte 0xe9                      /* jmp rel32 */
    .long irq_stub_common - (. + 4)
    .balign IRQ_STUB_SIZE
    .set irq_vector, irq_vector + 1
    .endr

/* Records the vector and the faulting EIP (after the error code, for the exceptions that push
 * one), then reports. */
irq_stub_common:
    pop %eax
    and $0xff, %eax
    mov %eax, irq_last_vector
    mov (%esp), %edx
    cmp $8, %eax
    je 1f
    cmp $17, %eax
    je 1f
    cmp $10, %eax
    jb 2f
    cmp $14, %eax
    ja 2f
1:  mov 4(%esp), %edx
2:  mov %edx, irq_last_eip
    jmp irq_unexpected

    .section .rodata
    .balign 8
irq_gdt:
    .quad 0
    .quad 0x00cf9b000000ffff        /* GDT_CODE: flat 32-bit code, accessed */
    .quad 0x00cf93000000ffff        /* GDT_DATA: flat 32-bit data, accessed */
irq_gdt_end:
    .balign 4
    .word 0
irq_gdtr:
    .word irq_gdt_end - irq_gdt - 1
    .long irq_gdt
    .word 0
irq_idtr:
    .word IDT_VECTORS * 8 - 1
    .long irq_idt

    .data
    .balign 4
watchdog_fired: .long 0
irq_last_vector: .long 0
irq_last_eip: .long 0

    .section .bss
    .balign 8
irq_idt:
    .skip IDT_VECTORS * 8

    .text
