/*
 * A small virtio 1.x PCI driver core for 32-bit guests, shared by the virtio_blk, virtio_net,
 * virtio_rng and virtio_console guests: find a device on bus 0, move its BAR below 4 GiB, negotiate
 * features, set up split virtqueues with MSI-X interrupts, post buffers and wait (hlt, under
 * the watchdog) for the device to use them. Waiting for a hot-plugged device is ged.h's.
 * Include after guest.h, irq.h and pci.h.
 *
 * One device at a time: the addresses pci.h finds (vp_common, vp_notify, ...) are global.
 *
 * A virtqueue is described by a VIRTQUEUE block (below) that the routines take in ESI: its
 * index, its size, where its rings lie in guest memory, and the driver's shadow indices. Each
 * buffer is a single descriptor whose number the caller chooses (so it can find the buffer
 * again when the device returns that descriptor); the caller never posts a descriptor the
 * device still holds. A caller that needs chains writes them itself and publishes their head
 * (vq_publish).
 *
 * Every queue interrupt arrives at VIRTIO_VECTOR and counts in virtio_irqs; queue n uses MSI-X
 * table entry n.
 */

#define VIRTIO_VECTOR 0x40
#define VIRTIO_NET_ID ((0x1041 << 16) | VIRTIO_VENDOR)
#define VIRTIO_CONSOLE_ID ((0x1043 << 16) | VIRTIO_VENDOR)
#define VIRTIO_RNG_ID ((0x1044 << 16) | VIRTIO_VENDOR)
#define VIRTIO_STATUS_FEATURES \
    (VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK)
#define VRING_DESC_F_WRITE 2

/* A virtqueue block: all 32-bit fields. */
#define VQ_INDEX 0                  /* the queue's index on the device */
#define VQ_SIZE 4                   /* entries: a power of two, at most 128 */
#define VQ_DESC 8                   /* descriptor table (16 bytes an entry) */
#define VQ_AVAIL 12                 /* available ring: flags, idx, ring[] (u16 each) */
#define VQ_USED 16                  /* used ring: flags, idx, ring[] of {id u32, len u32} */
#define VQ_NOTIFY 20                /* the queue's notification address (set by vq_setup) */
#define VQ_AVAIL_IDX 24             /* the driver's next available index */
#define VQ_USED_IDX 28              /* the next used entry the driver will look at */
/* Guest memory a queue's rings take from its base: the three parts, each 2 KiB apart. */
#define VQ_RING_BYTES 0x1800

/* Declares (in .data) a virtqueue block `name` for queue `index` of `size` entries whose
 * rings lie at `base` (VQ_RING_BYTES of free, 4 KiB-aligned guest RAM). */
.macro VIRTQUEUE name:req, index:req, size:req, base:req
    .pushsection .data
    .balign 4
\name:
    .long \index, \size, \base, \base + 0x800, \base + 0x1000, 0, 0, 0
    .popsection
.endm

    .text

/* virtio_irq_init: installs the queue interrupt handler (after irq_init, interrupts off). */
virtio_irq_init:
    push %eax
    push %edx
    mov $VIRTIO_VECTOR, %eax
    mov $virtio_irq, %edx
    call irq_set_handler
    pop %edx
    pop %eax
    ret

virtio_irq:
    incl virtio_irqs
    LAPIC_EOI
    IRET

/* virtio_find: EBX = the first slot of bus 0 whose id register reads EAX, or -1; prints
 * `pci 00:SS.0 VVVV:DDDD` for every device on the bus. */
virtio_find:
    push %eax
    push %ecx
    push %edx
    mov %eax, %edx
    mov $-1, %eax
    push %eax                       /* the slot found */
    xor %ebx, %ebx
1:  mov $PCI_ID, %ecx
    call pci_read32
    cmp $PCI_NO_DEVICE, %ax
    je 2f
    PRINT "pci "
    call pci_print_bdf
    push %eax
    mov $' ', %al
    call putc
    pop %eax
    call pci_print_id
    call newline
    cmp %edx, %eax
    jne 2f
    cmpl $-1, (%esp)
    jne 2f
    mov %ebx, (%esp)
2:  inc %ebx
    cmp $PCI_SLOTS, %ebx
    jb 1b
    pop %ebx
    pop %edx
    pop %ecx
    pop %eax
    ret

/*
 * virtio_open: takes the virtio device in slot EBX whose id register reads EDX: checks the
 * id, moves BAR 0 to EAX (prints `bar0: OLD moved to NEW, size SIZE`), finds the virtio structures,
 * checks that MSI-X is off and the device status 0 (as after power-on or a VMM reset), turns
 * MSI-X on (every table entry masked until virtio_msix_entry), resets the device and sets
 * ACKNOWLEDGE and DRIVER. FAILs if any of it goes wrong.
 */
virtio_open:
    push %eax
    push %ecx
    push %edx
    push %esi
    push %edi
    mov %eax, %esi
    mov $PCI_ID, %ecx
    call pci_read32
    cmp %edx, %eax
    je 1f
    FAIL_BEGIN
    PRINT "slot "
    call pci_print_bdf
    PRINT " holds "
    call pci_print_id
    PRINT ", not "
    mov %edx, %eax
    call pci_print_id
    call newline
    jmp poweroff
1:  mov %esi, %eax
    mov %eax, virtio_bar
    call pci_move_bar0
    PRINT "bar0: "
    mov pci_bar_old_lo, %eax
    mov pci_bar_old_hi, %edx
    call pci_print_bar
    PRINT " moved to "
    mov %esi, %eax
    call puthex
    PRINT ", size "
    mov pci_bar_size, %eax
    call puthex
    call newline
    call virtio_find_caps
    mov vp_msix_cap, %ecx
    test %ecx, %ecx
    jnz 2f
    FAIL "the device has no MSI-X capability"
2:  add $MSIX_TABLE, %ecx
    call pci_read32
    test $MSIX_BIR_MASK, %eax
    jz 3f
    FAIL "the MSI-X table is not in BAR 0"
3:  add %esi, %eax
    mov %eax, virtio_msix_table
    mov vp_msix_cap, %ecx
    add $MSIX_CONTROL, %ecx
    call pci_read16
    test $MSIX_ENABLE, %eax
    jz 6f
    FAIL "MSI-X is enabled before the driver turned it on: the device was not reset"
6:  mov vp_common, %edi
    cmpb $0, VC_DEVICE_STATUS(%edi)
    je 7f
    FAIL "the device status is not 0 before the driver's reset: the device was not reset"
7:  call pci_read16
    and $~MSIX_FUNCTION_MASK, %eax
    or $MSIX_ENABLE, %eax
    call pci_write16
    call pci_read16
    and $(MSIX_ENABLE | MSIX_FUNCTION_MASK), %eax
    cmp $MSIX_ENABLE, %eax
    je 4f
    FAIL "MSI-X does not stay enabled and unmasked"
4:  mov vp_common, %edi
    movb $0, VC_DEVICE_STATUS(%edi)
    cmpb $0, VC_DEVICE_STATUS(%edi)
    je 5f
    FAIL "the device status does not read 0 after a reset"
5:  movb $VIRTIO_STATUS_ACKNOWLEDGE, VC_DEVICE_STATUS(%edi)
    movb $(VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER), VC_DEVICE_STATUS(%edi)
    pop %edi
    pop %esi
    pop %edx
    pop %ecx
    pop %eax
    ret

/* virtio_msix_entry: MSI-X table entry ECX delivers vector EAX to APIC 0, unmasked. FAILs if
 * the entry does not read back. */
virtio_msix_entry:
    push %edi
    mov %ecx, %edi
    shl $4, %edi
    add virtio_msix_table, %edi
    movl $MSI_ADDRESS, MSIX_ENTRY_ADDR_LO(%edi)
    movl $0, MSIX_ENTRY_ADDR_HI(%edi)
    mov %eax, MSIX_ENTRY_DATA(%edi)
    movl $0, MSIX_ENTRY_CONTROL(%edi)
    cmp MSIX_ENTRY_DATA(%edi), %eax
    jne 1f
    cmpl $MSI_ADDRESS, MSIX_ENTRY_ADDR_LO(%edi)
    jne 1f
    testl $MSIX_ENTRY_MASKED, MSIX_ENTRY_CONTROL(%edi)
    jz 2f
1:  FAIL "an MSI-X table entry does not read back what was written"
2:  pop %edi
    ret

/*
 * virtio_negotiate: offers the device the features it offers among EDX:EAX (bits 63-32 in
 * EDX); VIRTIO_F_VERSION_1 must be offered and is always taken. Prints `features: ` and the
 * offered bits, sets FEATURES_OK and checks the device keeps it. Returns EDX:EAX = the
 * features taken; virtio_offered_lo/hi hold what the device offered.
 */
virtio_negotiate:
    push %esi
    mov vp_common, %esi
    or $VIRTIO_F_VERSION_1_HI, %edx
    movl $1, VC_DEVICE_FEATURE_SELECT(%esi)
    push %eax
    mov VC_DEVICE_FEATURE(%esi), %eax
    mov %eax, virtio_offered_hi
    movl $0, VC_DEVICE_FEATURE_SELECT(%esi)
    mov VC_DEVICE_FEATURE(%esi), %eax
    mov %eax, virtio_offered_lo
    PRINT "features: "
    mov virtio_offered_hi, %eax
    call puthex
    push %ecx
    mov $8, %ecx
    mov virtio_offered_lo, %eax
    call puthexw
    pop %ecx
    call newline
    pop %eax
    testl $VIRTIO_F_VERSION_1_HI, virtio_offered_hi
    jnz 1f
    FAIL "the device does not offer VIRTIO_F_VERSION_1"
1:  and virtio_offered_lo, %eax
    and virtio_offered_hi, %edx
    movl $0, VC_DRIVER_FEATURE_SELECT(%esi)
    mov %eax, VC_DRIVER_FEATURE(%esi)
    movl $1, VC_DRIVER_FEATURE_SELECT(%esi)
    mov %edx, VC_DRIVER_FEATURE(%esi)
    movb $VIRTIO_STATUS_FEATURES, VC_DEVICE_STATUS(%esi)
    testb $VIRTIO_STATUS_FEATURES_OK, VC_DEVICE_STATUS(%esi)
    jnz 2f
    FAIL "the device refused FEATURES_OK"
2:  movw $VIRTIO_NO_VECTOR, VC_MSIX_CONFIG(%esi)
    pop %esi
    ret

/*
 * vq_setup: sets up the queue whose block is at ESI: checks the device has it and it holds
 * enough entries, clears its rings, gives the device their addresses and MSI-X entry VQ_INDEX
 * (programmed to VIRTIO_VECTOR), finds its notification address and enables it. FAILs if the
 * device does not take any of it.
 */
vq_setup:
    push %eax
    push %ecx
    push %edx
    push %edi
    mov vp_common, %edi
    mov VQ_INDEX(%esi), %ecx
    cmp VC_NUM_QUEUES(%edi), %cx
    jb 1f
    FAIL_BEGIN
    PRINT "the device has "
    movzwl VC_NUM_QUEUES(%edi), %eax
    call putdec
    PRINT " queues; queue "
    mov %ecx, %eax
    call putdec
    PRINTLN " is missing"
    jmp poweroff
1:  mov $VIRTIO_VECTOR, %eax
    call virtio_msix_entry
    mov %cx, VC_QUEUE_SELECT(%edi)
    mov VQ_SIZE(%esi), %eax
    cmp VC_QUEUE_SIZE(%edi), %ax
    jbe 2f
    FAIL "a queue holds fewer entries than the guest wants"
2:  mov %ax, VC_QUEUE_SIZE(%edi)
    mov %cx, VC_QUEUE_MSIX_VECTOR(%edi)
    cmp VC_QUEUE_MSIX_VECTOR(%edi), %cx
    je 3f
    FAIL "the device refused a queue's MSI-X vector"
3:  push %edi                       /* clear the rings */
    push %ecx
    mov VQ_DESC(%esi), %edi
    mov $(VQ_RING_BYTES / 4), %ecx
    xor %eax, %eax
    rep stosl
    pop %ecx
    pop %edi
    movl $0, VQ_AVAIL_IDX(%esi)
    movl $0, VQ_USED_IDX(%esi)
    mov VQ_DESC(%esi), %eax
    mov %eax, VC_QUEUE_DESC(%edi)
    movl $0, (VC_QUEUE_DESC + 4)(%edi)
    mov VQ_AVAIL(%esi), %eax
    mov %eax, VC_QUEUE_DRIVER(%edi)
    movl $0, (VC_QUEUE_DRIVER + 4)(%edi)
    mov VQ_USED(%esi), %eax
    mov %eax, VC_QUEUE_DEVICE(%edi)
    movl $0, (VC_QUEUE_DEVICE + 4)(%edi)
    movzwl VC_QUEUE_NOTIFY_OFF(%edi), %eax
    imul vp_notify_multiplier, %eax
    add vp_notify, %eax
    mov %eax, VQ_NOTIFY(%esi)
    movw $1, VC_QUEUE_ENABLE(%edi)
    cmpw $1, VC_QUEUE_ENABLE(%edi)
    je 4f
    FAIL "a queue does not read back enabled"
4:  pop %edi
    pop %edx
    pop %ecx
    pop %eax
    ret

/* virtio_driver_ok: sets DRIVER_OK; FAILs if the device then reports an error. */
virtio_driver_ok:
    push %esi
    mov vp_common, %esi
    movb $(VIRTIO_STATUS_FEATURES | VIRTIO_STATUS_DRIVER_OK), VC_DEVICE_STATUS(%esi)
    testb $(VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED), VC_DEVICE_STATUS(%esi)
    jz 1f
    FAIL "the device reports an error after DRIVER_OK"
1:  pop %esi
    ret

/* virtio_reset: resets the device, as a driver unloading would. */
virtio_reset:
    push %esi
    mov vp_common, %esi
    movb $0, VC_DEVICE_STATUS(%esi)
    pop %esi
    ret

/*
 * vq_post: makes descriptor EBX of the queue at ESI the buffer of ECX bytes at EAX, writable
 * by the device if EDX is VRING_DESC_F_WRITE (readable if 0), and publishes it on the
 * available ring. The device is not notified (vq_kick).
 */
vq_post:
    push %edi
    mov %ebx, %edi
    shl $4, %edi
    add VQ_DESC(%esi), %edi
    mov %eax, (%edi)
    movl $0, 4(%edi)
    mov %ecx, 8(%edi)
    mov %dx, 12(%edi)
    movw $0, 14(%edi)
    pop %edi
    jmp vq_publish

/* vq_publish: publishes the chain whose head is descriptor EBX (which the caller wrote) on
 * the available ring of the queue at ESI. The device is not notified (vq_kick). */
vq_publish:
    push %eax
    push %ecx
    push %edi
    mov VQ_AVAIL(%esi), %edi
    mov VQ_AVAIL_IDX(%esi), %eax
    mov VQ_SIZE(%esi), %ecx
    dec %ecx
    and %eax, %ecx
    mov %bx, 4(%edi, %ecx, 2)
    incl VQ_AVAIL_IDX(%esi)         /* x86 keeps stores in order: the entry is seen first */
    mov VQ_AVAIL_IDX(%esi), %eax
    mov %ax, 2(%edi)
    pop %edi
    pop %ecx
    pop %eax
    ret

/* vq_kick: notifies the device of the queue at ESI. */
vq_kick:
    push %eax
    push %edi
    mov VQ_NOTIFY(%esi), %edi
    mov VQ_INDEX(%esi), %eax
    mov %ax, (%edi)
    pop %edi
    pop %eax
    ret

/* vq_pending: ZF clear if the device has used a buffer of the queue at ESI that the driver
 * has not taken yet. */
vq_pending:
    push %eax
    push %edi
    mov VQ_USED(%esi), %edi
    movzwl 2(%edi), %eax
    cmp VQ_USED_IDX(%esi), %ax
    pop %edi
    pop %eax
    ret

/* vq_take: takes the next used buffer of the queue at ESI (vq_pending must have said there is
 * one): EBX = its descriptor number, ECX = the length the device wrote. */
vq_take:
    push %eax
    push %edi
    mov VQ_USED_IDX(%esi), %eax
    mov VQ_SIZE(%esi), %ebx
    dec %ebx
    and %eax, %ebx
    mov VQ_USED(%esi), %edi
    lea 4(%edi, %ebx, 8), %edi
    mov (%edi), %ebx
    mov 4(%edi), %ecx
    incl VQ_USED_IDX(%esi)
    pop %edi
    pop %eax
    ret

/*
 * vq_wait: sleeps until the device has used a buffer of the queue at ESI, for at most ECX
 * watchdog periods (each at least 10 s). CF set if the time ran out. Interrupts must be on.
 */
vq_wait:
    push %ecx
    call watchdog_arm
1:  call vq_sleep
    jnc 2f
    dec %ecx
    jz 3f
    call watchdog_arm
    jmp 1b
2:  call watchdog_disarm
    pop %ecx
    clc
    ret
3:  pop %ecx
    stc
    ret

/*
 * vq_sleep: sleeps until the device has used a buffer of the queue at ESI, within the
 * watchdog period the caller started (watchdog_arm), which it leaves running: a caller taking
 * several buffers bounds the whole wait, not each buffer's. CF set once the period is over.
 * Interrupts must be on.
 */
vq_sleep:
1:  cli
    call vq_pending
    jnz 3f
    cmpl $0, watchdog_fired
    jne 2f
    sti
    hlt
    jmp 1b
2:  sti
    stc
    ret
3:  sti
    clc
    ret

/* puthex8: prints AL as two hex digits. */
puthex8:
    push %ecx
    mov $2, %ecx
    call puthexw
    pop %ecx
    ret

/* puthexbytes: prints ECX bytes at ESI as hex, two digits each, with no separator. */
puthexbytes:
    push %eax
    push %ecx
    push %esi
    test %ecx, %ecx
    jz 2f
1:  lodsb
    call puthex8
    dec %ecx
    jnz 1b
2:  pop %esi
    pop %ecx
    pop %eax
    ret

    .data
    .balign 4
virtio_irqs: .long 0
virtio_bar: .long 0
virtio_msix_table: .long 0
virtio_offered_lo: .long 0
virtio_offered_hi: .long 0

    .text
