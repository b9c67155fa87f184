/*
 * A guest whose state lives in RAM and in device registers, for snapshot, restore and
 * migration: it sets up the entropy device's request queue with an MSI-X vector and sets the
 * serial port's scratch register to 0x5a; then, for ever, it counts in RAM, asks the entropy
 * device for 16 bytes (descriptor `count mod 8`, waiting for its interrupt under the local
 * APIC timer's watchdog), checks the scratch register still holds 0x5a, and prints
 * `tick <count> irqs <interrupts so far>`. A restored guest goes on counting from where it
 * was; any lost queue position, interrupt route, timer or register shows as a FAIL line.
 *
 * `disk` on the command line: the first virtio-blk device is driven too, and each tick first
 * writes sector `count` (128 copies of the count, as 32-bit words) and waits for the device to
 * acknowledge it, so every tick printed is a write the guest saw done.
 */
#define GUEST_NAME "snapshot"
#include "guest.h"
#include "pvh.h"
#include "irq.h"
#include "pci.h"
#include "virtio.h"
#include "pvh_note.h"

#define BAR_ADDRESS (PCI_WINDOW + 0x20000)
#define QUEUE_BASE 0x300000
#define QUEUE_SIZE 8
#define READ_BYTES 16
#define BUFFER 0x310000
#define COM1_SCRATCH 0x3ff
#define SCRATCH_VALUE 0x5a
/* Iterations of the pause between two ticks (a few tenths of a second here). */
#define DELAY 200000
#define WAIT_PERIODS 2
#define DISK_BAR (PCI_WINDOW + 0x40000)
#define DISK_QUEUE 0x320000
#define DISK_HEADER 0x330000    /* type u32, reserved u32, sector u64 */
#define DISK_STATUS 0x330010
#define DISK_DATA 0x331000
#define BLK_T_OUT 1
#define SECTOR_SIZE 512

    VIRTQUEUE requestq, 0, QUEUE_SIZE, QUEUE_BASE
    VIRTQUEUE diskq, 0, QUEUE_SIZE, DISK_QUEUE

    .globl _start
_start:
    GUEST_SETUP
    PVH_START_INFO
    mov SI_CMDLINE(%ebp), %esi
    test %esi, %esi
    jz 0f
    mov $word_disk, %edi
    call has_word
    mov %eax, with_disk
0:  call irq_init
    call virtio_irq_init
    sti
    mov $VIRTIO_RNG_ID, %eax
    call virtio_find
    cmp $-1, %ebx
    jne 1f
    FAIL "no virtio entropy device (1af4:1044) on bus 0"
1:  mov $BAR_ADDRESS, %eax
    mov $VIRTIO_RNG_ID, %edx
    call virtio_open
    xor %eax, %eax
    xor %edx, %edx
    call virtio_negotiate
    mov $requestq, %esi
    call vq_setup
    call virtio_driver_ok
    cmpl $0, with_disk
    je 1f
    mov $VIRTIO_BLOCK_ID, %eax
    call virtio_find
    cmp $-1, %ebx
    jne 0f
    FAIL "disk: no virtio-blk device (1af4:1042) on bus 0"
0:  mov $DISK_BAR, %eax
    mov $VIRTIO_BLOCK_ID, %edx
    call virtio_open
    xor %eax, %eax
    xor %edx, %edx
    call virtio_negotiate
    mov $diskq, %esi
    call vq_setup
    call virtio_driver_ok
1:  mov $SCRATCH_VALUE, %al
    mov $COM1_SCRATCH, %dx
    outb %al, %dx
    PRINTLN "counting"

tick:
    mov $DELAY, %ecx
2:  dec %ecx
    jnz 2b
    incl count
    mov count, %ebx
    and $(QUEUE_SIZE - 1), %ebx
    push %ebx
    mov $requestq, %esi
    mov $BUFFER, %eax
    mov $READ_BYTES, %ecx
    mov $VRING_DESC_F_WRITE, %edx
    call vq_post
    call vq_kick
    mov $WAIT_PERIODS, %ecx
    call vq_wait
    jnc 3f
    FAIL "the entropy request did not complete within the watchdog's time"
3:  call vq_take
    pop %eax
    cmp %eax, %ebx
    je 4f
    FAIL "the device returned a buffer that was not posted"
4:  cmp $READ_BYTES, %ecx
    je 5f
    FAIL "the device did not fill the buffer"
5:  cmpl $0, with_disk
    je 51f
    call disk_write
51: mov $COM1_SCRATCH, %dx
    inb %dx, %al
    cmp $SCRATCH_VALUE, %al
    je 6f
    FAIL "the serial port's scratch register lost its value"
6:  PRINT "tick "
    mov count, %eax
    call putdec
    PRINT " irqs "
    mov virtio_irqs, %eax
    call putdec
    call newline
    jmp tick

/* disk_write: writes sector `count` with the count, and waits for the device's answer. */
disk_write:
    mov $DISK_DATA, %edi
    mov $(SECTOR_SIZE / 4), %ecx
    mov count, %eax
    rep stosl
    movl $BLK_T_OUT, DISK_HEADER
    movl $0, (DISK_HEADER + 4)
    mov count, %eax
    mov %eax, (DISK_HEADER + 8)
    movl $0, (DISK_HEADER + 12)
    movb $0xff, DISK_STATUS
    mov $diskq, %esi
    mov VQ_DESC(%esi), %edx
    movl $DISK_HEADER, (%edx)           /* descriptor 0: the header */
    movl $0, 4(%edx)
    movl $16, 8(%edx)
    movw $1, 12(%edx)                   /* NEXT */
    movw $1, 14(%edx)
    movl $DISK_DATA, 16(%edx)           /* descriptor 1: the sector */
    movl $0, 20(%edx)
    movl $SECTOR_SIZE, 24(%edx)
    movw $1, 28(%edx)
    movw $2, 30(%edx)
    movl $DISK_STATUS, 32(%edx)         /* descriptor 2: the status */
    movl $0, 36(%edx)
    movl $1, 40(%edx)
    movw $VRING_DESC_F_WRITE, 44(%edx)
    movw $0, 46(%edx)
    xor %ebx, %ebx
    call vq_publish
    call vq_kick
    mov $WAIT_PERIODS, %ecx
    call vq_wait
    jnc 1f
    FAIL "disk: the write did not complete within the watchdog's time"
1:  call vq_take
    test %ebx, %ebx
    jz 2f
    FAIL "disk: the device completed a chain that was not offered"
2:  cmpb $0, DISK_STATUS
    je 3f
    FAIL "disk: the write failed"
3:  ret

    .section .rodata
word_disk: .asciz "disk"

    .data
    .balign 4
count: .long 0
with_disk: .long 0

PVH_ENTRY(_start)
