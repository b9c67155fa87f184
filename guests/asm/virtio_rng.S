/*
 * Drives the virtio entropy device (1af4:1044) every VM has: moves its BAR below 4 GiB,
 * negotiates VIRTIO_F_VERSION_1, sets up its request queue with an MSI-X interrupt, then asks
 * twice for 64 bytes (one device-writable buffer each) and prints them in hex, one line each:
 * `rng: <128 hex digits>`. Both reads must be complete (64 bytes), not all zero, and differ.
 *
 * `expect=file` on the command line: the source is a regular file the test wrote whose first
 * 64 bytes are 0, 1, ..., 63; the first read must be exactly that (`rng: matches the file`).
 */
#define GUEST_NAME "virtio_rng"
#include "guest.h"
#include "pvh.h"
#include "irq.h"
#include "pci.h"
#include "virtio.h"
#include "pvh_note.h"

#define BAR_ADDRESS (PCI_WINDOW + 0x20000)
#define QUEUE_BASE 0x300000
#define QUEUE_SIZE 8
#define READ_BYTES 64
#define FIRST_BUF 0x310000
#define SECOND_BUF 0x310100
#define WAIT_PERIODS 2

    VIRTQUEUE requestq, 0, QUEUE_SIZE, QUEUE_BASE

    .globl _start
_start:
    GUEST_SETUP
    PVH_START_INFO
    mov SI_CMDLINE(%ebp), %esi
    test %esi, %esi
    jz 2f
    mov $word_file, %edi
    call has_word
    mov %eax, expect_file
2:  call irq_init
    call virtio_irq_init
    sti

    mov $VIRTIO_RNG_ID, %eax
    call virtio_find
    cmp $-1, %ebx
    jne 3f
    FAIL "no virtio entropy device (1af4:1044) on bus 0"
3:  PRINT "virtio-rng: "
    call pci_print_bdf
    call newline
    mov $BAR_ADDRESS, %eax
    mov $VIRTIO_RNG_ID, %edx
    call virtio_open
    xor %eax, %eax
    xor %edx, %edx
    call virtio_negotiate
    mov $requestq, %esi
    call vq_setup
    call virtio_driver_ok

    /* Fill both buffers with a pattern the device must overwrite, then read each. */
    mov $FIRST_BUF, %edi
    mov $(2 * 0x100 / 4), %ecx
    mov $0xa5a5a5a5, %eax
    rep stosl
    mov $FIRST_BUF, %eax
    xor %ebx, %ebx
    call read_random
    mov $SECOND_BUF, %eax
    mov $1, %ebx
    call read_random

    /* Not all zero. */
    mov $FIRST_BUF, %esi
    call all_zero
    jnz 4f
    FAIL "the first read is all zero"
4:  mov $SECOND_BUF, %esi
    call all_zero
    jnz 5f
    FAIL "the second read is all zero"
    /* The two reads differ. */
5:  mov $FIRST_BUF, %esi
    mov $SECOND_BUF, %edi
    mov $READ_BYTES, %ecx
    repe cmpsb
    jne 6f
    FAIL "the two reads are the same"
6:  cmpl $0, expect_file
    je 8f
    mov $FIRST_BUF, %esi
    xor %ecx, %ecx
7:  cmp (%esi, %ecx), %cl
    jne 71f
    inc %ecx
    cmp $READ_BYTES, %ecx
    jb 7b
    PRINTLN "rng: matches the file"
    jmp 8f
71: FAIL_BEGIN
    PRINT "expect=file, but byte "
    mov %ecx, %eax
    call putdec
    PRINT " of the first read is "
    movzbl (%esi, %ecx), %eax
    call puthex
    PRINTLN ", not its index"
    jmp poweroff
8:  PRINT "interrupts: "
    mov virtio_irqs, %eax
    call putdec
    call newline
    test %eax, %eax
    jnz 9f
    FAIL "no MSI-X interrupt arrived"
9:  call virtio_reset
    PASS

/* read_random: asks for READ_BYTES into the buffer at EAX as descriptor EBX, waits, checks
 * the device returned that descriptor full, and prints `rng: <hex>`. */
read_random:
    push %esi
    push %eax
    push %ebx
    mov $requestq, %esi
    mov $READ_BYTES, %ecx
    mov $VRING_DESC_F_WRITE, %edx
    call vq_post
    call vq_kick
    mov $WAIT_PERIODS, %ecx
    call vq_wait
    jnc 1f
    FAIL "the entropy request did not complete within the watchdog's time"
1:  call vq_take
    cmp (%esp), %ebx
    je 2f
    FAIL "the device returned a buffer that was not posted"
2:  cmp $READ_BYTES, %ecx
    je 3f
    FAIL_BEGIN
    PRINT "the device wrote "
    mov %ecx, %eax
    call putdec
    PRINT " bytes, not "
    mov $READ_BYTES, %eax
    call putdec
    call newline
    jmp poweroff
3:  PRINT "rng: "
    mov 4(%esp), %esi
    call puthexbytes
    call newline
    pop %ebx
    pop %eax
    pop %esi
    ret

/* all_zero: ZF set if the READ_BYTES at ESI are all zero. */
all_zero:
    push %ecx
    push %esi
    push %eax
    mov $READ_BYTES, %ecx
    xor %eax, %eax
1:  or (%esi), %al
    inc %esi
    dec %ecx
    jnz 1b
    test %al, %al
    pop %eax
    pop %esi
    pop %ecx
    ret

    .section .rodata
word_file: .asciz "expect=file"

    .data
    .balign 4
expect_file: .long 0

PVH_ENTRY(_start)
