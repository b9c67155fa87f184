/* Triple-faults on purpose (an empty IDT, then ud2); the VMM resets the machine, and the
 * second boot, finding the RAM marker, reports success. */
#define GUEST_NAME "triple"
#include "guest.h"
#include "pvh_note.h"

#define MARKER_MAGIC 0x31505254     /* "TRP1": the first boot has happened */

    .globl _start
_start:
    GUEST_SETUP
    cmpl $MARKER_MAGIC, RAM_MARKER
    je 1f
    PRINTLN "triple: first boot"
    movl $MARKER_MAGIC, RAM_MARKER
    lidt empty_idt
    ud2                             /* #UD -> no IDT entry -> #GP -> #DF -> shutdown */
    FAIL "ud2 with an empty IDT did not fault"

1:  movl $0, RAM_MARKER
    PASS_BEGIN
    PRINTLN ": reset after triple fault"
    jmp poweroff

    .section .rodata
    .balign 8
empty_idt:
    .word 0                         /* limit 0: no vector can be delivered */
    .long 0

PVH_ENTRY(_start)
