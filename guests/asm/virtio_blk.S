/*
 * Drives the first virtio-blk device on PCI bus 0 as a minimal driver would: finds ECAM through
 * ACPI, lists the bus, moves the device's BAR below 4 GiB, negotiates features, sets up queue 0
 * with an MSI-X interrupt, then reads sector 0, asks for the disk's id, writes sector 1 (and
 * reads it back) and flushes, waiting for each completion with `hlt`.
 *
 * `expect=readonly` on the command line: the disk is read-only, so the device must offer
 * VIRTIO_BLK_F_RO and refuse the write with IOERR.
 *
 * `wait=hotplug` on the command line: no disk is looked for at boot. The guest routes the ACPI
 * generic event device's interrupt (I/O APIC pin 5) as the hotplug guest does, prints
 * `virtio_blk: waiting for a hot-plugged disk`, sleeps (hlt, under the watchdog) until the GED
 * announces a slot added, then runs the same test on the device in that slot.
 */
#define GUEST_NAME "virtio_blk"
#include "guest.h"
#include "pvh.h"
#include "irq.h"
#include "pci.h"
#include "ged.h"
#include "pvh_note.h"

#define BAR_ADDRESS PCI_WINDOW
#define VECTOR 0x40                 /* queue 0's MSI-X interrupt */
/* Guest RAM for the queue and the requests, clear of the image at 1 MiB. */
#define RING 0x300000
#define QUEUE_SIZE 8
#define DESC RING                   /* 16 bytes a descriptor */
#define AVAIL (RING + 0x1000)       /* flags, idx, ring[] (u16 each) */
#define USED (RING + 0x2000)        /* flags, idx, ring[] of {id u32, len u32} */
#define REQ_HEADER (RING + 0x3000)  /* type u32, reserved u32, sector u64 */
#define REQ_STATUS (RING + 0x3010)
#define READ_BUF (RING + 0x4000)
#define WRITE_BUF (RING + 0x4400)
#define ID_BUF (RING + 0x4800)
#define RING_END (RING + 0x5000)
#define DESC_F_NEXT 1
#define DESC_F_WRITE 2
#define BLK_T_IN 0
#define BLK_T_OUT 1
#define BLK_T_FLUSH 4
#define BLK_T_GET_ID 8
#define BLK_S_OK 0
#define BLK_S_IOERR 1
#define BLK_S_UNSUPP 2
#define BLK_F_RO (1 << 5)
#define BLK_F_FLUSH (1 << 9)
#define SECTOR_SIZE 512
#define ID_BYTES 20
#define WRITE_SECTOR 1
#define SECTOR0_SHOWN 80            /* bytes of sector 0's first line printed at most */
/* Watchdog periods (each at least 10 s) to wait for a disk to be hot-plugged: generous, the
 * tests add it as soon as they see the waiting line. */
#define HOTPLUG_WAIT_PERIODS 6
#define STATUS_FEATURES \
    (VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK)

    .globl _start
_start:
    GUEST_SETUP
    PVH_START_INFO
    mov SI_CMDLINE(%ebp), %esi
    test %esi, %esi
    jz 2f
    mov $word_readonly, %edi
    call has_word
    mov %eax, expect_readonly
    mov $word_hotplug, %edi
    call has_word
    mov %eax, wait_hotplug
2:  call irq_init
    mov $VECTOR, %eax
    mov $blk_irq, %edx
    call irq_set_handler
    cmpl $0, wait_hotplug
    je 21f
    call ged_setup
21: sti

    /* ACPI: the RSDP from the start info, through the XSDT to the MCFG table. */
    cmpl $0, (SI_RSDP + 4)(%ebp)
    jne 3f
    mov SI_RSDP(%ebp), %esi
    test %esi, %esi
    jnz 4f
3:  FAIL "the start info gives no RSDP below 4 GiB"
4:  call acpi_find_ecam
    PRINT "ecam: "
    mov pci_ecam, %eax
    call puthex
    PRINTLN " (MCFG)"
    cmpl $0, wait_hotplug
    je 41f
    PRINTLN "virtio_blk: waiting for a hot-plugged disk"
    mov $HOTPLUG_WAIT_PERIODS, %ecx
    call ged_wait_added             /* EBX = the slot announced */
    mov %ebx, blk_slot

    /* List bus 0; ECAM and port 0xcf8 must agree on every id. */
41: xor %ebx, %ebx
5:  mov $PCI_ID, %ecx
    call pci_read32
    cmp $PCI_NO_DEVICE, %ax
    je 8f
    mov %eax, %edx
    call ecam_read32
    cmp %eax, %edx
    je 6f
    FAIL_BEGIN
    PRINT "slot "
    call pci_print_bdf
    PRINT " reads "
    call puthex
    PRINT " through ECAM but "
    mov %edx, %eax
    call puthex
    PRINTLN " through port 0xcf8"
    jmp poweroff
6:  PRINT "pci "
    call pci_print_bdf
    mov $' ', %al
    call putc
    mov %edx, %eax
    call pci_print_id
    PRINT " class "
    mov $PCI_CLASS, %ecx
    call pci_read8
    mov $2, %ecx
    call puthexw
    call newline
    cmp $VIRTIO_BLOCK_ID, %edx
    jne 8f
    incl blk_count
    cmpl $-1, blk_slot
    jne 8f
    mov %ebx, blk_slot
8:  inc %ebx
    cmp $PCI_SLOTS, %ebx
    jb 5b
    mov blk_slot, %ebx
    cmp $-1, %ebx
    jne 9f
    FAIL "no virtio-blk device (1af4:1042) on bus 0"
9:  mov $PCI_ID, %ecx               /* the slot announced by hot-plug must hold one */
    call pci_read32
    cmp $VIRTIO_BLOCK_ID, %eax
    je 91f
    FAIL_BEGIN
    PRINT "the hot-plugged slot "
    call pci_print_bdf
    PRINT " holds "
    call pci_print_id
    PRINTLN ", not a virtio-blk device (1af4:1042)"
    jmp poweroff
91: PRINT "virtio-blk devices: "
    mov blk_count, %eax
    call putdec
    PRINT ", using "
    call pci_print_bdf
    call newline

    /* Move BAR 0 into the 32-bit window and check ECAM sees it there too. */
    mov $BAR_ADDRESS, %eax
    call pci_move_bar0
    PRINT "bar0: "
    mov pci_bar_old_lo, %eax
    mov pci_bar_old_hi, %edx
    call pci_print_bar
    PRINT " moved to "
    mov $BAR_ADDRESS, %eax
    call puthex
    PRINT ", size "
    mov pci_bar_size, %eax
    call puthex
    call newline
    mov $PCI_BAR0, %ecx
    call ecam_read32
    and $~0xf, %eax
    cmp $BAR_ADDRESS, %eax
    je 10f
    FAIL "ECAM does not show BAR 0 where it was moved"
10: mov $BAR_ADDRESS, %esi
    call virtio_find_caps
    call msix_setup
    call virtio_setup

    /* Capacity, from the device configuration. */
    mov vp_device, %edi
    mov (%edi), %eax
    mov 4(%edi), %edx
    PRINT "capacity: "
    call putdec64
    PRINTLN " sectors"
    test %edx, %edx
    jnz 11f
    cmp $(WRITE_SECTOR + 1), %eax
    jae 11f
    FAIL "the disk is too small to write sector 1"

    /* Sector 0: print its first line. */
11: mov $BLK_T_IN, %eax
    xor %edx, %edx
    mov $SECTOR_SIZE, %ecx
    mov $READ_BUF, %edi
    mov $1, %ebx
    call blk_request
    cmp $(SECTOR_SIZE + 1), %ecx
    jne bad_used_len
    test %al, %al
    jz 12f
    FAIL_BEGIN
    PRINT "reading sector 0: "
    jmp bad_status
12: PRINT "sector0: "
    mov $READ_BUF, %esi
    mov $SECTOR0_SHOWN, %ecx
    call putline
    call newline

    /* GET_ID. */
    mov $BLK_T_GET_ID, %eax
    xor %edx, %edx
    mov $ID_BYTES, %ecx
    mov $ID_BUF, %edi
    mov $1, %ebx
    call blk_request
    test %al, %al
    jz 13f
    FAIL_BEGIN
    PRINT "GET_ID: "
    jmp bad_status
13: cmp $(ID_BYTES + 1), %ecx
    jne bad_used_len
    PRINT "id: "
    mov $ID_BUF, %esi
    mov $ID_BYTES, %ecx
    call putline
    call newline

    /* Write sector 1: the text, then zeros. */
    mov $WRITE_BUF, %edi
    mov $(SECTOR_SIZE / 4), %ecx
    xor %eax, %eax
    rep stosl
    mov $written_text, %esi
    mov $WRITE_BUF, %edi
    mov $(written_text_end - written_text), %ecx
    rep movsb
    mov $BLK_T_OUT, %eax
    mov $WRITE_SECTOR, %edx
    mov $SECTOR_SIZE, %ecx
    mov $WRITE_BUF, %edi
    xor %ebx, %ebx
    call blk_request
    cmp $1, %ecx
    jne bad_used_len
    cmpl $0, expect_readonly
    je 15f
    cmp $BLK_S_IOERR, %al
    je 14f
    FAIL_BEGIN
    PRINT "a write to the read-only disk: "
    jmp bad_status
14: PRINTLN "write refused: IOERR"
    jmp 17f
15: test %al, %al
    jz 16f
    FAIL_BEGIN
    PRINT "writing sector 1: "
    jmp bad_status
16: PRINTLN "write: OK"
    /* Read it back. */
    mov $BLK_T_IN, %eax
    mov $WRITE_SECTOR, %edx
    mov $SECTOR_SIZE, %ecx
    mov $READ_BUF, %edi
    mov $1, %ebx
    call blk_request
    test %al, %al
    jz 161f
    FAIL_BEGIN
    PRINT "reading sector 1 back: "
    jmp bad_status
161: mov $READ_BUF, %esi
    mov $WRITE_BUF, %edi
    mov $SECTOR_SIZE, %ecx
    repe cmpsb
    je 162f
    FAIL "sector 1 reads back different from what was written"
162: PRINTLN "read back: OK"

    /* Flush: must succeed on a writable disk; on a read-only one it may be refused. */
17: mov $BLK_T_FLUSH, %eax
    xor %edx, %edx
    xor %ecx, %ecx
    xor %ebx, %ebx
    call blk_request
    cmp $1, %ecx
    jne bad_used_len
    test %al, %al
    jz 18f
    cmpl $0, expect_readonly
    je 171f
    cmp $BLK_S_IOERR, %al
    jne 171f
    PRINTLN "flush: IOERR"
    jmp 19f
171: FAIL_BEGIN
    PRINT "flush: "
    jmp bad_status
18: PRINTLN "flush: OK"

19: PRINT "interrupts: "
    mov irq_count, %eax
    call putdec
    call newline
    test %eax, %eax
    jnz 20f
    FAIL "no MSI-X interrupt arrived"
20: mov vp_common, %esi             /* leave the device reset, as a driver unloading would */
    movb $0, VC_DEVICE_STATUS(%esi)
    PASS

/* The rest of a FAIL line: `status <name>`, for the status in AL. */
bad_status:
    PRINT "status "
    call print_status
    call newline
    jmp poweroff

/* A completion whose used length is wrong (ECX). */
bad_used_len:
    FAIL_BEGIN
    PRINT "the device reported "
    mov %ecx, %eax
    call putdec
    PRINT " bytes written for a request of type "
    mov REQ_HEADER, %eax
    call putdec
    call newline
    jmp poweroff

/* print_status: prints the virtio-blk status AL by name. */
print_status:
    push %eax
    cmp $BLK_S_OK, %al
    jne 1f
    PRINT "OK"
    jmp 4f
1:  cmp $BLK_S_IOERR, %al
    jne 2f
    PRINT "IOERR"
    jmp 4f
2:  cmp $BLK_S_UNSUPP, %al
    jne 3f
    PRINT "UNSUPP"
    jmp 4f
3:  movzbl %al, %eax
    call puthex
4:  pop %eax
    ret

/* msix_setup: MSI-X table entry 0 -> VECTOR on APIC 0, unmasked; MSI-X on. */
msix_setup:
    mov vp_msix_cap, %ecx
    test %ecx, %ecx
    jnz 1f
    FAIL "the device has no MSI-X capability"
1:  add $MSIX_TABLE, %ecx
    call pci_read32
    test $MSIX_BIR_MASK, %eax
    jz 2f
    FAIL "the MSI-X table is not in BAR 0"
2:  and $~MSIX_BIR_MASK, %eax
    lea BAR_ADDRESS(%eax), %edi
    movl $MSI_ADDRESS, MSIX_ENTRY_ADDR_LO(%edi)
    movl $0, MSIX_ENTRY_ADDR_HI(%edi)
    movl $VECTOR, MSIX_ENTRY_DATA(%edi)
    movl $0, MSIX_ENTRY_CONTROL(%edi)
    cmpl $VECTOR, MSIX_ENTRY_DATA(%edi)
    jne 3f
    cmpl $MSI_ADDRESS, MSIX_ENTRY_ADDR_LO(%edi)
    jne 3f
    testl $MSIX_ENTRY_MASKED, MSIX_ENTRY_CONTROL(%edi)
    jz 4f
3:  FAIL "MSI-X table entry 0 does not read back what was written"
4:  mov vp_msix_cap, %ecx
    add $MSIX_CONTROL, %ecx
    call pci_read16
    and $~MSIX_FUNCTION_MASK, %eax
    or $MSIX_ENABLE, %eax
    call pci_write16
    call pci_read16
    and $(MSIX_ENABLE | MSIX_FUNCTION_MASK), %eax
    cmp $MSIX_ENABLE, %eax
    je 5f
    FAIL "MSI-X does not stay enabled and unmasked"
5:  ret

/* virtio_setup: reset, features (VERSION_1, and RO and FLUSH if offered), queue 0 with MSI-X
 * vector 0, DRIVER_OK. */
virtio_setup:
    mov vp_common, %esi
    movb $0, VC_DEVICE_STATUS(%esi)
    cmpb $0, VC_DEVICE_STATUS(%esi)
    je 1f
    FAIL "the device status does not read 0 after a reset"
1:  movb $VIRTIO_STATUS_ACKNOWLEDGE, VC_DEVICE_STATUS(%esi)
    movb $(VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER), VC_DEVICE_STATUS(%esi)
    movl $1, VC_DEVICE_FEATURE_SELECT(%esi)
    mov VC_DEVICE_FEATURE(%esi), %eax
    test $VIRTIO_F_VERSION_1_HI, %eax
    jnz 2f
    FAIL "the device does not offer VIRTIO_F_VERSION_1"
2:  movl $0, VC_DEVICE_FEATURE_SELECT(%esi)
    mov VC_DEVICE_FEATURE(%esi), %edx
    PRINT "features: "
    call puthex
    mov $8, %ecx
    mov %edx, %eax
    call puthexw
    call newline
    cmpl $0, expect_readonly
    je 3f
    test $BLK_F_RO, %edx
    jnz 4f
    FAIL "expect=readonly, but the device does not offer VIRTIO_BLK_F_RO"
3:  test $BLK_F_RO, %edx
    jz 4f
    FAIL "the device offers VIRTIO_BLK_F_RO (read-only) without expect=readonly on the command line"
4:  test $BLK_F_FLUSH, %edx
    jnz 5f
    FAIL "the device does not offer VIRTIO_BLK_F_FLUSH"
5:  and $(BLK_F_RO | BLK_F_FLUSH), %edx
    movl $0, VC_DRIVER_FEATURE_SELECT(%esi)
    mov %edx, VC_DRIVER_FEATURE(%esi)
    movl $1, VC_DRIVER_FEATURE_SELECT(%esi)
    movl $VIRTIO_F_VERSION_1_HI, VC_DRIVER_FEATURE(%esi)
    movb $STATUS_FEATURES, VC_DEVICE_STATUS(%esi)
    testb $VIRTIO_STATUS_FEATURES_OK, VC_DEVICE_STATUS(%esi)
    jnz 6f
    FAIL "the device refused FEATURES_OK"
6:  movw $VIRTIO_NO_VECTOR, VC_MSIX_CONFIG(%esi)
    cmpw $0, VC_NUM_QUEUES(%esi)
    jne 7f
    FAIL "the device has no queues"
7:  movw $0, VC_QUEUE_SELECT(%esi)
    cmpw $QUEUE_SIZE, VC_QUEUE_SIZE(%esi)
    jae 8f
    FAIL "queue 0 holds fewer than 8 entries"
8:  movw $QUEUE_SIZE, VC_QUEUE_SIZE(%esi)
    movw $0, VC_QUEUE_MSIX_VECTOR(%esi)
    cmpw $0, VC_QUEUE_MSIX_VECTOR(%esi)
    je 9f
    FAIL "the device refused MSI-X vector 0 for queue 0"
9:  mov $RING, %edi
    mov $((RING_END - RING) / 4), %ecx
    xor %eax, %eax
    rep stosl
    movl $DESC, VC_QUEUE_DESC(%esi)
    movl $0, (VC_QUEUE_DESC + 4)(%esi)
    movl $AVAIL, VC_QUEUE_DRIVER(%esi)
    movl $0, (VC_QUEUE_DRIVER + 4)(%esi)
    movl $USED, VC_QUEUE_DEVICE(%esi)
    movl $0, (VC_QUEUE_DEVICE + 4)(%esi)
    movzwl VC_QUEUE_NOTIFY_OFF(%esi), %eax
    imul vp_notify_multiplier, %eax
    add vp_notify, %eax
    mov %eax, notify_addr
    movw $1, VC_QUEUE_ENABLE(%esi)
    movb $(STATUS_FEATURES | VIRTIO_STATUS_DRIVER_OK), VC_DEVICE_STATUS(%esi)
    testb $(VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED), VC_DEVICE_STATUS(%esi)
    jz 10f
    FAIL "the device reports an error after DRIVER_OK"
10: cmpw $1, VC_QUEUE_ENABLE(%esi)
    je 11f
    FAIL "queue 0 is not enabled after DRIVER_OK"
11: ret

/*
 * blk_request: one request of type EAX on sector EDX; ECX data bytes at EDI (none if 0),
 * written by the device if EBX is 1. Waits for its completion (with hlt, under the watchdog).
 * Returns AL = the status byte, ECX = the length the device reported. FAILs if the device
 * does not complete it or completes another chain.
 */
blk_request:
    push %edx
    push %esi
    mov %eax, REQ_HEADER
    movl $0, (REQ_HEADER + 4)
    mov %edx, (REQ_HEADER + 8)
    movl $0, (REQ_HEADER + 12)
    movb $0xff, REQ_STATUS
    movl $REQ_HEADER, DESC              /* descriptor 0: the header */
    movl $0, (DESC + 4)
    movl $16, (DESC + 8)
    movw $DESC_F_NEXT, (DESC + 12)
    movw $2, (DESC + 14)
    test %ecx, %ecx
    jz 2f
    movw $1, (DESC + 14)
    mov %edi, (DESC + 16)               /* descriptor 1: the data */
    movl $0, (DESC + 20)
    mov %ecx, (DESC + 24)
    mov $DESC_F_NEXT, %edx
    test %ebx, %ebx
    jz 1f
    or $DESC_F_WRITE, %edx
1:  mov %dx, (DESC + 28)
    movw $2, (DESC + 30)
2:  movl $REQ_STATUS, (DESC + 32)       /* descriptor 2: the status */
    movl $0, (DESC + 36)
    movl $1, (DESC + 40)
    movw $DESC_F_WRITE, (DESC + 44)
    movw $0, (DESC + 46)
    movzwl avail_idx, %edx              /* offer chain 0, then publish the index */
    and $(QUEUE_SIZE - 1), %edx
    movw $0, (AVAIL + 4)(, %edx, 2)
    incw avail_idx
    movzwl avail_idx, %edx
    mov %dx, (AVAIL + 2)
    mov notify_addr, %esi
    movw $0, (%esi)
    call watchdog_arm
3:  cli
    movzwl (USED + 2), %edx
    cmp used_idx, %dx
    jne 4f
    cmpl $0, watchdog_fired
    jne 5f
    sti
    hlt
    jmp 3b
4:  sti
    call watchdog_disarm
    movzwl used_idx, %edx
    and $(QUEUE_SIZE - 1), %edx
    lea (USED + 4)(, %edx, 8), %esi
    incw used_idx
    cmpl $0, (%esi)
    je 6f
    FAIL "the device completed a chain that was not offered"
5:  sti
    FAIL_BEGIN
    PRINT "request type "
    call putdec
    PRINTLN " did not complete within the watchdog's time"
    jmp poweroff
6:  mov 4(%esi), %ecx
    movzbl REQ_STATUS, %eax
    pop %esi
    pop %edx
    ret

blk_irq:
    incl irq_count
    LAPIC_EOI
    IRET

    .section .rodata
word_readonly: .asciz "expect=readonly"
word_hotplug: .asciz "wait=hotplug"
written_text: .ascii "written by the palisade test guest\n"
written_text_end:

    .data
    .balign 4
expect_readonly: .long 0
wait_hotplug: .long 0
blk_slot: .long -1
blk_count: .long 0
irq_count: .long 0
notify_addr: .long 0
avail_idx: .word 0
used_idx: .word 0

PVH_ENTRY(_start)
