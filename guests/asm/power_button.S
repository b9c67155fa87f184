/*
 * Waits (hlt) for the generic event device's interrupt and checks that its event register
 * says the power button was pressed (bit 1), as an operating system's ACPI would before it
 * notifies \_SB.PWRB and shuts down.
 */
#define GUEST_NAME "power_button"
#include "guest.h"
#include "irq.h"
#include "pci.h"
#include "ged.h"
#include "pvh_note.h"

#define GED_POWER_BUTTON 2

    .globl _start
_start:
    GUEST_SETUP
    call irq_init
    call ged_setup
    sti
    PRINTLN "power_button: waiting"

events:
    mov ged_irqs, %eax
    mov %eax, ged_irqs_seen
    mov GED_EVENTS, %eax
    test $GED_POWER_BUTTON, %eax
    jz 2f
    test $GED_PCI_HOTPLUG, %eax
    jz 1f
    FAIL "the power button came with a PCI hot-plug event"
1:  PRINTLN "power_button: pressed"
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

PVH_ENTRY(_start)
