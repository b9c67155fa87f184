/*
 * ACPI PCI hot-plug as an operating system takes part in it, without ACPI's interpreter: the
 * generic event device (GED) interrupts on I/O APIC pin 5 and says which events are pending;
 * the PCI hot-plug controller says which slots were just added or should be ejected. Shared
 * by the hotplug, virtio_blk and virtio_* guests. Include after guest.h, irq.h and pci.h.
 *
 * Every GED interrupt counts in ged_irqs. A guest that waits for events copies ged_irqs to
 * ged_irqs_seen *before* it reads the registers, and sleeps only while the two are equal, so
 * that an event arriving between the read and the sleep is not missed.
 */

#define GED_EVENTS 0xfe000000       /* read: pending events, cleared by the read */
#define GED_PCI_HOTPLUG 1
#define HOTPLUG_UP 0xfe001000       /* read: slots just added, cleared by the read */
#define HOTPLUG_DOWN 0xfe001004     /* read: slots to eject, cleared by the read */
#define HOTPLUG_EJECT 0xfe001008    /* write: the slot number to eject */
#define GED_PIN 5
#define GED_VECTOR 0x41

    .text

/* ged_setup: routes the GED's interrupt to GED_VECTOR and checks the route reads back.
 * After irq_init, interrupts off. */
ged_setup:
    push %eax
    push %ecx
    push %edx
    mov $GED_VECTOR, %eax
    mov $ged_irq, %edx
    call irq_set_handler
    mov $GED_PIN, %ecx
    call ioapic_route
    mov $(IOAPIC_REDIR + 2 * GED_PIN), %ecx
    call ioapic_read
    and $0x1ffff, %eax              /* vector and mask */
    cmp $GED_VECTOR, %eax
    je 1f
    FAIL "the I/O APIC redirection entry of pin 5 does not read back"
1:  pop %edx
    pop %ecx
    pop %eax
    ret

ged_irq:
    incl ged_irqs
    LAPIC_EOI
    IRET

/*
 * ged_wait_added: takes the GED's events until one announces a slot added, for at most ECX
 * watchdog periods; returns EBX = that slot (the lowest, if several) and prints
 * `hot-plugged: 00:SS.0`. FAILs when the time runs out. Interrupts must be on.
 */
ged_wait_added:
    push %eax
    push %ecx
    call watchdog_arm
1:  mov ged_irqs, %eax
    mov %eax, ged_irqs_seen
    mov GED_EVENTS, %eax
    test $GED_PCI_HOTPLUG, %eax
    jz 2f
    mov HOTPLUG_UP, %eax
    bsf %eax, %ebx
    jnz 5f                          /* ZF is clear when a bit was found */
2:  cli
    mov ged_irqs, %eax
    cmp ged_irqs_seen, %eax
    jne 4f
    cmpl $0, watchdog_fired
    jne 3f
    sti
    hlt
    jmp 2b
3:  sti
    dec %ecx
    jnz 31f
    FAIL "no device was hot-plugged within the watchdog's time"
31: call watchdog_arm
    jmp 1b
4:  sti
    jmp 1b
5:  call watchdog_disarm
    PRINT "hot-plugged: "
    call pci_print_bdf
    call newline
    pop %ecx
    pop %eax
    ret

    .data
    .balign 4
ged_irqs: .long 0
ged_irqs_seen: .long 0

    .text
