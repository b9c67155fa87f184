/*
 * Waits (hlt) for a non-maskable interrupt (vector 2), as `vm.nmi` sends one: the handler
 * counts it, and the guest passes once one has arrived. Maskable interrupts stay off
 * (`cli`): only an NMI can wake the halted vCPU.
 */
#define GUEST_NAME "nmi"
#include "guest.h"
#include "irq.h"
#include "pvh_note.h"

#define NMI_VECTOR 2

    .globl _start
_start:
    GUEST_SETUP
    call irq_init
    mov $NMI_VECTOR, %eax
    mov $nmi_handler, %edx
    call irq_set_handler
    PRINTLN "nmi: waiting"
1:  cmpl $0, nmis
    jne 2f
    hlt
    jmp 1b
2:  PRINTLN "nmi: received"
    PASS

nmi_handler:
    incl nmis
    IRET

    .data
    .balign 4
nmis: .long 0

PVH_ENTRY(_start)
