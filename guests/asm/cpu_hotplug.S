/*
 * Takes part in ACPI vCPU hot-plug as an operating system would, without ACPI's interpreter:
 * on each generic event device (GED) interrupt with the vCPU event pending, walks the vCPU
 * hot-plug controller. A vCPU just added is acknowledged, must be present, and is started with
 * INIT-SIPI-SIPI (it prints `cpu N up` and halts); a vCPU the VMM wants back is acknowledged
 * and, halted already, ejected, after which the controller must say it is gone. After two
 * additions and one removal: PASS.
 */
#define GUEST_NAME "cpu_hotplug"
#include "guest.h"
#include "irq.h"
#include "pci.h"
#include "ged.h"
#include "ap.h"
#include "pvh_note.h"

#define CPU_SELECT 0xfe002000       /* write: the vCPU the status register speaks of */
#define CPU_STATUS 0xfe002004       /* read: bits below; write: acknowledge, eject */
#define CPU_PRESENT 1
#define CPU_INSERTING 2
#define CPU_REMOVING 4
#define CPU_EJECT 8
#define GED_CPU_HOTPLUG 4
#define SCAN_CPUS 8                 /* vCPUs 1-7 are looked at */
#define UP_WAIT 2000000             /* spins waiting for a started AP to check in */

    .globl _start
_start:
    GUEST_SETUP
    call irq_init
    call ged_setup
    mov $LAPIC_BASE, %ebp
    call ap_enable_lapic
    call ap_copy_trampoline
    sti
    PRINTLN "cpu_hotplug: ready"

events:
    mov ged_irqs, %eax
    mov %eax, ged_irqs_seen
    mov GED_EVENTS, %eax
    test $GED_CPU_HOTPLUG, %eax
    jz 1f
    call cpu_events
1:  cmpl $2, added
    jb 2f
    cmpl $1, removed
    jb 2f
    PASS
2:  cli
    mov ged_irqs, %eax
    cmp ged_irqs_seen, %eax
    jne 3f
    sti
    hlt
    jmp 2b
3:  sti
    jmp events

/* cpu_events: handles every vCPU added or to remove. */
cpu_events:
    mov $1, %ebx
1:  mov %ebx, CPU_SELECT
    mov CPU_STATUS, %eax
    test $CPU_INSERTING, %eax
    jz 2f
    call cpu_added
2:  test $CPU_REMOVING, %eax
    jz 3f
    call cpu_removing
3:  inc %ebx
    cmp $SCAN_CPUS, %ebx
    jb 1b
    ret

/* cpu_added: EBX = the vCPU (APIC id = index), EAX = its status. */
cpu_added:
    push %eax
    movl $CPU_INSERTING, CPU_STATUS
    test $CPU_PRESENT, %eax
    jnz 1f
    FAIL "an added vCPU is not present"
1:  PRINT "cpu event: vCPU "
    mov %ebx, %eax
    call putdec
    PRINTLN " added"
    movzbl TR(ap_count), %edx
    mov %ebx, %eax
    call start_ap
    mov $UP_WAIT, %ecx
2:  movzbl TR(ap_count), %eax
    cmp %edx, %eax
    jne 3f
    pause
    dec %ecx
    jnz 2b
    FAIL "a hot-added vCPU never came up"
3:  incl added
    pop %eax
    ret

/* cpu_removing: EBX = the vCPU; it is halted, so it is ejected at once. */
cpu_removing:
    push %eax
    movl $CPU_REMOVING, CPU_STATUS
    PRINT "cpu event: vCPU "
    mov %ebx, %eax
    call putdec
    PRINTLN " to remove"
    movl $CPU_EJECT, CPU_STATUS
    mov %ebx, CPU_SELECT
    testl $CPU_PRESENT, CPU_STATUS
    jz 1f
    FAIL "an ejected vCPU is still present"
1:  PRINT "cpu "
    mov %ebx, %eax
    call putdec
    PRINTLN " ejected"
    incl removed
    pop %eax
    ret

    .data
    .balign 4
added: .long 0
removed: .long 0

PVH_ENTRY(_start)
