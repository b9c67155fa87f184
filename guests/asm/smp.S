/* Starts every CPU of the MP table with INIT-SIPI-SIPI and checks each one checks in. */
#define GUEST_NAME "smp"
#include "guest.h"
#include "mptable.h"
#include "pvh_note.h"

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
#define CHECKIN_WAIT 1000000        /* spins waiting for the APs (a few seconds emulated) */
#define LOCK_TRIES 1000000          /* spins for the console lock */
/* The trampoline's data, as the BSP sees it once copied. */
#define TR(sym) (TRAMPOLINE + (sym - ap_tramp))

    .globl _start
_start:
    GUEST_SETUP
    call mp_find
    call mp_cpus

    PRINT "mptable: "
    mov mp_ncpus, %eax
    call putdec
    PRINT " cpus, APIC ids:"
    xor %esi, %esi
1:  cmp mp_ncpus, %esi
    jae 3f
    mov $' ', %al
    call putc
    movzbl mp_ids(%esi), %eax
    call putdec
    cmp mp_boot_id, %eax
    jne 2f
    PRINT " (boot)"
2:  inc %esi
    jmp 1b
3:  call newline
    cmpl $0, mp_ncpus
    jne 4f
    FAIL "no enabled processor in the MP table"
4:  cmpl $-1, mp_boot_id
    jne 5f
    FAIL "no boot processor in the MP table"

5:  mov $1, %eax                /* the BSP's APIC id */
    cpuid
    shr $24, %ebx
    mov %ebx, bsp_id
    cmp mp_boot_id, %ebx
    je 6f
    FAIL "the boot cpu's APIC id (CPUID) is not the MP table's boot processor"
6:  mov mp_lapic, %ebp
    mov APIC_ID(%ebp), %eax
    shr $24, %eax
    cmp %ebx, %eax
    je 7f
    FAIL "the local APIC ID register disagrees with CPUID"
7:  PRINT "cpu "
    mov %ebx, %eax
    call putdec
    PRINTLN " up (boot cpu)"

    orl $(APIC_SVR_ENABLE | 0xff), APIC_SVR(%ebp)
    mov $ap_tramp, %esi
    mov $TRAMPOLINE, %edi
    mov $(ap_tramp_end - ap_tramp), %ecx
    rep movsb

    xor %esi, %esi              /* start every AP of the MP table */
8:  cmp mp_ncpus, %esi
    jae 9f
    movzbl mp_ids(%esi), %eax
    cmp bsp_id, %eax
    je 10f
    call start_ap
10: inc %esi
    jmp 8b

9:  mov mp_ncpus, %edx          /* wait for ncpus - 1 to check in */
    dec %edx
    mov $CHECKIN_WAIT, %ecx
11: movzbl TR(ap_count), %eax
    cmp %edx, %eax
    jae 12f
    pause
    dec %ecx
    jnz 11b
    call bsp_lock
    FAIL_BEGIN
    PRINT "only "
    call putdec
    PRINT " of "
    mov %edx, %eax
    call putdec
    PRINTLN " application processors checked in"
    jmp poweroff
12: je 13f
    FAIL "more application processors checked in than the MP table lists"

13: call bsp_lock               /* every AP is done printing; hold the console anyway */
    xor %esi, %esi              /* each id: not the BSP's, in the MP table, seen once */
14: cmp %edx, %esi
    jae 20f
    movzbl TR(ap_ids)(%esi), %eax
    cmp bsp_id, %eax
    jne 15f
    FAIL "an application processor reported the boot cpu's APIC id"
15: xor %edi, %edi
16: cmp mp_ncpus, %edi
    jb 17f
    FAIL_BEGIN
    PRINT "cpu "
    call putdec
    PRINTLN " is not in the MP table"
    jmp poweroff
17: movzbl mp_ids(%edi), %ebx
    inc %edi
    cmp %eax, %ebx
    jne 16b
    xor %edi, %edi
18: cmp %esi, %edi
    jae 19f
    movzbl TR(ap_ids)(%edi), %ebx
    inc %edi
    cmp %eax, %ebx
    jne 18b
    FAIL_BEGIN
    PRINT "two cpus reported APIC id "
    call putdec
    call newline
    jmp poweroff
19: inc %esi
    jmp 14b

20: PASS_BEGIN
    PRINT ": "
    mov mp_ncpus, %eax
    call putdec
    PRINTLN " cpus"
    jmp poweroff

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

    .data
    .balign 4
bsp_id: .long 0

PVH_ENTRY(_start)
