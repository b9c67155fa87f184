/* Starts every CPU of the MP table with INIT-SIPI-SIPI and checks each one checks in. */
#define GUEST_NAME "smp"
#include "guest.h"
#include "mptable.h"
#include "pvh_note.h"

#include "ap.h"

#define CHECKIN_WAIT 1000000        /* spins waiting for the APs (a few seconds emulated) */


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

    call ap_enable_lapic
    call ap_copy_trampoline

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


    .data
    .balign 4
bsp_id: .long 0

PVH_ENTRY(_start)
