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
#include "virtio.h"
#include "ged.h"
#include "pvh_note.h"

#define BAR_ADDRESS PCI_WINDOW
/* Guest RAM for the queue and the requests, clear of the image at 1 MiB. */
#define RING 0x300000
#define QUEUE_SIZE 8
#define REQ_HEADER (RING + 0x2000)  /* type u32, reserved u32, sector u64 */
#define REQ_STATUS (RING + 0x2010)
#define READ_BUF (RING + 0x3000)
#define WRITE_BUF (RING + 0x3400)
#define ID_BUF (RING + 0x3800)
#define DESC_F_NEXT 1
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
/* Watchdog periods to wait for one request: the device answers at once. */
#define REQUEST_WAIT_PERIODS 1

    VIRTQUEUE requestq, 0, QUEUE_SIZE, RING

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
    call virtio_irq_init
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
    mov $VIRTIO_BLOCK_ID, %edx
    call virtio_open
    mov $PCI_BAR0, %ecx
    call ecam_read32
    and $~0xf, %eax
    cmp $BAR_ADDRESS, %eax
    je 10f
    FAIL "ECAM does not show BAR 0 where it was moved"
10: call blk_negotiate
    mov $requestq, %esi
    call vq_setup
    call virtio_driver_ok

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
    mov virtio_irqs, %eax
    call putdec
    call newline
    test %eax, %eax
    jnz 20f
    FAIL "no MSI-X interrupt arrived"
20: call virtio_reset               /* as a driver unloading would */
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

/* blk_negotiate: takes VERSION_1, and RO and FLUSH as offered; RO must be offered exactly
 * when the command line says expect=readonly, and FLUSH always. */
blk_negotiate:
    mov $(BLK_F_RO | BLK_F_FLUSH), %eax
    xor %edx, %edx
    call virtio_negotiate
    mov virtio_offered_lo, %edx
    cmpl $0, expect_readonly
    je 1f
    test $BLK_F_RO, %edx
    jnz 2f
    FAIL "expect=readonly, but the device does not offer VIRTIO_BLK_F_RO"
1:  test $BLK_F_RO, %edx
    jz 2f
    FAIL "the device offers VIRTIO_BLK_F_RO (read-only) without expect=readonly on the command line"
2:  test $BLK_F_FLUSH, %edx
    jnz 3f
    FAIL "the device does not offer VIRTIO_BLK_F_FLUSH"
3:  ret

/*
 * blk_request: one request of type EAX on sector EDX; ECX data bytes at EDI (none if 0),
 * written by the device if EBX is 1. Waits for its completion (with hlt, under the watchdog).
 * Returns AL = the status byte, ECX = the length the device reported. FAILs if the device
 * does not complete it or completes another chain.
 */
blk_request:
    push %ebx
    push %edx
    push %esi
    push %edi
    mov %eax, REQ_HEADER
    movl $0, (REQ_HEADER + 4)
    mov %edx, (REQ_HEADER + 8)
    movl $0, (REQ_HEADER + 12)
    movb $0xff, REQ_STATUS
    mov $requestq, %esi
    mov VQ_DESC(%esi), %edx
    movl $REQ_HEADER, (%edx)            /* descriptor 0: the header */
    movl $0, 4(%edx)
    movl $16, 8(%edx)
    movw $DESC_F_NEXT, 12(%edx)
    movw $2, 14(%edx)
    test %ecx, %ecx
    jz 2f
    movw $1, 14(%edx)
    mov %edi, 16(%edx)                  /* descriptor 1: the data */
    movl $0, 20(%edx)
    mov %ecx, 24(%edx)
    movw $DESC_F_NEXT, 28(%edx)
    test %ebx, %ebx
    jz 1f
    orw $VRING_DESC_F_WRITE, 28(%edx)
1:  movw $2, 30(%edx)
2:  movl $REQ_STATUS, 32(%edx)          /* descriptor 2: the status */
    movl $0, 36(%edx)
    movl $1, 40(%edx)
    movw $VRING_DESC_F_WRITE, 44(%edx)
    movw $0, 46(%edx)
    xor %ebx, %ebx                      /* offer chain 0 */
    call vq_publish
    call vq_kick
    mov $REQUEST_WAIT_PERIODS, %ecx
    call vq_wait
    jnc 3f
    FAIL_BEGIN
    PRINT "request type "
    call putdec
    PRINTLN " did not complete within the watchdog's time"
    jmp poweroff
3:  call vq_take                        /* EBX = the chain, ECX = the used length */
    test %ebx, %ebx
    jz 4f
    FAIL "the device completed a chain that was not offered"
4:  movzbl REQ_STATUS, %eax
    pop %edi
    pop %esi
    pop %edx
    pop %ebx
    ret

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

PVH_ENTRY(_start)
