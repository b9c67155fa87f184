/*
 * Takes part in ACPI PCI hot-plug as an operating system would, without ACPI's interpreter:
 * waits (hlt) for the generic event device's interrupt (I/O APIC pin 5), then asks the
 * hot-plug controller which slots were added or should be ejected. An added virtio-blk device
 * gets its BAR moved below 4 GiB and its capacity read; an eject request is honoured by
 * quiescing the device, writing the slot to the eject register and checking the slot empties.
 * Once a slot has been added and removed again: PASS.
 */
#define GUEST_NAME "hotplug"
#include "guest.h"
#include "irq.h"
#include "pci.h"
#include "ged.h"
#include "pvh_note.h"

#define BAR_STRIDE 0x8000           /* one BAR window per slot: PCI_WINDOW + slot * stride */
/* Polls of the slot after an eject (each a port access, an exit to the VMM): seconds. */
#define EJECT_POLLS 100000
#define GENERATION_TRIES 16

    .globl _start
_start:
    GUEST_SETUP
    call irq_init
    call ged_setup
    sti
    PRINTLN "hotplug: ready"

    /* Take the events the GED holds; sleep until its next interrupt (see ged.h). */
events:
    mov ged_irqs, %eax
    mov %eax, ged_irqs_seen
    mov GED_EVENTS, %eax
    test $GED_PCI_HOTPLUG, %eax
    jz 2f
    call pci_hotplug_events
2:  mov added, %eax
    and removed, %eax
    jz 3f
    PASS
3:  cli
    mov ged_irqs, %eax
    cmp ged_irqs_seen, %eax
    jne 4f
    sti
    hlt
    jmp 3b
4:  sti
    jmp events

/* pci_hotplug_events: handles every slot added, then every slot to eject. */
pci_hotplug_events:
    mov HOTPLUG_UP, %esi
    mov HOTPLUG_DOWN, %edi
    xor %ebx, %ebx
1:  bt %ebx, %esi
    jnc 2f
    call slot_added
2:  inc %ebx
    cmp $PCI_SLOTS, %ebx
    jb 1b
    xor %ebx, %ebx
3:  bt %ebx, %edi
    jnc 4f
    call slot_eject
4:  inc %ebx
    cmp $PCI_SLOTS, %ebx
    jb 3b
    ret

/* print_slot: prints `hotplug: slot N ` for slot EBX. */
print_slot:
    push %eax
    PRINT "hotplug: slot "
    mov %ebx, %eax
    call putdec
    mov $' ', %al
    call putc
    pop %eax
    ret

/* slot_added: slot EBX was just plugged: identify it, move its BAR, read its capacity. */
slot_added:
    push %esi
    push %edi
    mov $PCI_ID, %ecx
    call pci_read32
    cmp $PCI_NO_DEVICE, %ax
    jne 1f
    FAIL_BEGIN
    PRINT "slot "
    mov %ebx, %eax
    call putdec
    PRINTLN " was announced as added but is empty"
    jmp poweroff
1:  call print_slot
    PRINT "added: "
    call pci_print_id
    call newline
    cmp $VIRTIO_BLOCK_ID, %eax
    je 2f
    FAIL "the added device is not virtio-blk (1af4:1042)"
2:  mov %ebx, %eax
    imul $BAR_STRIDE, %eax
    add $PCI_WINDOW, %eax
    call pci_move_bar0
    mov %eax, %esi
    call print_slot
    PRINT "bar0: "
    mov pci_bar_old_lo, %eax
    mov pci_bar_old_hi, %edx
    call pci_print_bar
    PRINT " moved to "
    mov %esi, %eax
    call puthex
    call newline
    call virtio_find_caps
    mov vp_common, %esi             /* reset, then acknowledge it: enough to read the config */
    mov %esi, slot_common(, %ebx, 4)
    movb $0, VC_DEVICE_STATUS(%esi)
    movb $VIRTIO_STATUS_ACKNOWLEDGE, VC_DEVICE_STATUS(%esi)
    movb $(VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER), VC_DEVICE_STATUS(%esi)
    mov vp_device, %edi
    mov $GENERATION_TRIES, %ecx
3:  movzbl VC_CONFIG_GENERATION(%esi), %edx
    mov (%edi), %eax                /* capacity, u64 */
    push %eax
    mov 4(%edi), %eax
    cmpb VC_CONFIG_GENERATION(%esi), %dl
    mov %eax, %edx
    pop %eax
    je 4f
    dec %ecx
    jnz 3b
    FAIL "the device configuration keeps changing while read"
4:  call print_slot
    PRINT "capacity: "
    call putdec64
    PRINTLN " sectors"
    bts %ebx, added
    pop %edi
    pop %esi
    ret

/* slot_eject: the VMM asks for slot EBX: quiesce it, eject it, check it is gone. */
slot_eject:
    push %ecx
    call print_slot
    PRINTLN "eject requested"
    mov $PCI_ID, %ecx
    call pci_read32
    cmp $PCI_NO_DEVICE, %ax
    jne 1f
    FAIL "the slot to eject is already empty"
1:  bt %ebx, added                  /* a device this guest drives: reset it first */
    jnc 2f
    mov slot_common(, %ebx, 4), %eax
    movb $0, VC_DEVICE_STATUS(%eax)
2:  xor %eax, %eax                  /* no decoding, no bus mastering */
    mov $PCI_COMMAND, %ecx
    call pci_write16
    mov %ebx, HOTPLUG_EJECT
    mov $EJECT_POLLS, %edx
3:  mov $PCI_ID, %ecx
    call pci_read32
    cmp $PCI_NO_DEVICE, %ax
    je 4f
    pause
    dec %edx
    jnz 3b
    FAIL "the slot still holds its device after the eject"
4:  call print_slot
    PRINTLN "removed"
    bts %ebx, removed
    pop %ecx
    ret

    .data
    .balign 4
added: .long 0                      /* bitmaps of slots */
removed: .long 0
slot_common: .skip PCI_SLOTS * 4    /* each added slot's virtio common configuration */

PVH_ENTRY(_start)
