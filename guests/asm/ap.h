/*
 * Application processors, started as a boot processor does: INIT, then two start-up IPIs
 * (`start_ap`), into a real-mode trampoline copied to TRAMPOLINE (`ap_copy_trampoline`). Each
 * AP takes the console lock, prints `cpu N up`, records its APIC id in ap_ids, counts itself
 * in ap_count and halts. Shared by the smp and cpu_hotplug guests; include after guest.h.
 * The boot processor's local APIC must be enabled (`ap_enable_lapic`), EBP = its base.
 */
#ifndef MAX_CPUS
#define MAX_CPUS 255                /* APIC ids are one byte */
#endif
#define TRAMPOLINE 0x10000          /* a free low page; APs start at vector << 12 */
#define SIPI_VECTOR (TRAMPOLINE >> 12)
#define APIC_ID 0x20
#define APIC_SVR 0xf0
#define APIC_ICR_LOW 0x300
#define APIC_ICR_HIGH 0x310
#define APIC_SVR_ENABLE 0x100
#define ICR_INIT 0x4500             /* delivery mode INIT, level assert */
#define ICR_STARTUP 0x4600          /* delivery mode start-up, level assert */
#define ICR_BUSY 0x1000             /* delivery status: send pending */
#define ICR_WAIT 100000             /* polls of the delivery status */
#define IPI_DELAY 2000              /* spins between the IPIs of one start-up */
#define LOCK_TRIES 1000000          /* spins for the console lock */
/* The trampoline's data, as the BSP sees it once copied. */
#define TR(sym) (TRAMPOLINE + (sym - ap_tramp))

    .text

/* ap_enable_lapic: EBP = the local APIC's base; software-enables it. */
ap_enable_lapic:
    orl $(APIC_SVR_ENABLE | 0xff), APIC_SVR(%ebp)
    ret

/* ap_copy_trampoline: puts the trampoline at TRAMPOLINE. */
ap_copy_trampoline:
    push %ecx
    push %esi
    push %edi
    mov $ap_tramp, %esi
    mov $TRAMPOLINE, %edi
    mov $(ap_tramp_end - ap_tramp), %ecx
    rep movsb
    pop %edi
    pop %esi
    pop %ecx
    ret

/* start_ap: INIT, then two start-up IPIs, to the APIC id in EAX (EBP = local APIC). */
start_ap:
    push %eax
    push %ecx
    shl $24, %eax
    mov %eax, APIC_ICR_HIGH(%ebp)
    movl $ICR_INIT, APIC_ICR_LOW(%ebp)
    call icr_wait
    mov $2, %ecx
1:  call ipi_delay
    mov %eax, APIC_ICR_HIGH(%ebp)
    movl $(ICR_STARTUP | SIPI_VECTOR), APIC_ICR_LOW(%ebp)
    call icr_wait
    dec %ecx
    jnz 1b
    pop %ecx
    pop %eax
    ret

icr_wait:
    push %ecx
    mov $ICR_WAIT, %ecx
1:  testl $ICR_BUSY, APIC_ICR_LOW(%ebp)
    jz 2f
    pause
    dec %ecx
    jnz 1b
    FAIL "the local APIC never finished sending an IPI"
2:  pop %ecx
    ret

ipi_delay:
    push %ecx
    mov $IPI_DELAY, %ecx
1:  pause
    dec %ecx
    jnz 1b
    pop %ecx
    ret

/* bsp_lock: takes the APs' console lock (bounded: on timeout, prints regardless). */
bsp_lock:
    push %eax
    push %ecx
    mov $LOCK_TRIES, %ecx
1:  mov $1, %al
    xchg %al, TR(ap_lock)
    test %al, %al
    jz 2f
    pause
    dec %ecx
    jnz 1b
2:  pop %ecx
    pop %eax
    ret

/*
 * The AP trampoline, copied to TRAMPOLINE: an AP starts here in real mode with CS = the page
 * (IP = 0), so it addresses everything relative to the trampoline. It stays in real mode:
 * takes the console lock, prints its APIC id, records it, releases the lock and halts. Only
 * the lock holder uses the (shared) stack.
 */
#define T(sym) (sym - ap_tramp)
    .code16
    .balign 16
ap_tramp:
    cli
    cld
    mov %cs, %ax
    mov %ax, %ds
    mov %ax, %ss
    mov $LOCK_TRIES, %ecx
1:  mov $1, %al
    xchg %al, T(ap_lock)
    test %al, %al
    jz 2f
    pause
    dec %ecx
    jnz 1b
    jmp ap_halt                 /* never got the lock: the BSP will report it missing */
2:  mov $T(ap_stack_top), %sp
    mov $1, %eax
    cpuid
    shr $24, %ebx               /* BL = this AP's APIC id */
    mov $T(ap_msg_cpu), %si
    call ap_puts
    movzbw %bl, %ax
    call ap_putdec
    mov $T(ap_msg_up), %si
    call ap_puts
    movzbw T(ap_count), %si     /* record the id, then count it: the BSP reads in that order */
    cmp $MAX_CPUS, %si
    jae 3f
    mov %bl, T(ap_ids)(%si)
    incb T(ap_count)
3:  movb $0, T(ap_lock)
ap_halt:
    cli
    hlt
    jmp ap_halt

ap_puts:                        /* DS:SI, NUL-terminated */
    push %ax
    push %dx
    mov $COM1, %dx
1:  lodsb
    test %al, %al
    jz 2f
    out %al, %dx
    jmp 1b
2:  pop %dx
    pop %ax
    ret

ap_putdec:                      /* AX, unsigned decimal */
    push %ax
    push %bx
    push %cx
    push %dx
    mov $10, %bx
    xor %cx, %cx
1:  xor %dx, %dx
    div %bx
    push %dx
    inc %cx
    test %ax, %ax
    jnz 1b
    mov $COM1, %dx
2:  pop %ax
    add $'0', %al
    out %al, %dx
    loop 2b
    pop %dx
    pop %cx
    pop %bx
    pop %ax
    ret

ap_msg_cpu: .asciz "cpu "
ap_msg_up:  .asciz " up\n"
ap_lock:    .byte 0
ap_count:   .byte 0
ap_ids:     .skip MAX_CPUS
    .balign 2
ap_stack:   .skip 64
ap_stack_top:
ap_tramp_end:
    .code32
    .text
