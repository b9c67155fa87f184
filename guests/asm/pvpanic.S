/*
 * Reports a panic through the pvpanic PCI device (1b36:0011), as Linux's pvpanic-pci does:
 * finds it on bus 0, moves a 64-bit BAR below 4 GiB (a 32-bit one is used where it is), reads
 * which events it knows (both bits: PANICKED and CRASH_LOADED), writes PANICKED, and prints
 * `PASS pvpanic`.
 */
#define GUEST_NAME "pvpanic"
#include "guest.h"
#include "pvh.h"
#include "irq.h"
#include "pci.h"
#include "virtio.h"
#include "pvh_note.h"

#define PVPANIC_ID ((0x0011 << 16) | 0x1b36)
#define BAR_ADDRESS (PCI_WINDOW + 0x40000)
#define PVPANIC_PANICKED 1
#define PVPANIC_EVENTS 3

    .globl _start
_start:
    GUEST_SETUP
    PVH_START_INFO
    mov $PVPANIC_ID, %eax
    call virtio_find
    cmp $-1, %ebx
    jne 1f
    FAIL "no pvpanic device (1b36:0011) on bus 0"
1:  PRINT "pvpanic: "
    call pci_print_bdf
    call newline
    mov $PCI_BAR0, %ecx
    call pci_read32
    mov %eax, %edx
    and $~0xf, %edx                 /* a 32-bit BAR's address */
    and $PCI_BAR_TYPE_MASK, %eax
    cmp $PCI_BAR_MEM64, %eax
    jne 3f
    mov $BAR_ADDRESS, %eax
    call pci_move_bar0
    mov $BAR_ADDRESS, %edx
    jmp 4f
3:  mov $PCI_COMMAND, %ecx
    call pci_read16
    or $PCI_CMD_MEMORY, %eax
    call pci_write16
4:  movzbl (%edx), %eax
    PRINT "pvpanic: events "
    call puthex
    call newline
    cmp $PVPANIC_EVENTS, %eax
    je 2f
    FAIL "the device does not know both events"
2:  movb $PVPANIC_PANICKED, (%edx)
    PRINTLN "pvpanic: reported a panic"
    PASS

PVH_ENTRY(_start)
