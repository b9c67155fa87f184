/* Jumps to guest-physical memory with nothing behind it: the VMM must report a vCPU fault
 * (KVM cannot fetch the instruction) and exit non-zero. There is no success line. */
#define GUEST_NAME "fault"
#include "guest.h"
#include "pvh_note.h"

#define UNBACKED 0xd0000000         /* in the 32-bit MMIO hole, no device there */

    .globl _start
_start:
    GUEST_SETUP
    PRINTLN "fault: jumping to unbacked memory"
    mov $UNBACKED, %eax
    jmp *%eax

PVH_ENTRY(_start)
