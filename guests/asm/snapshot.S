/*
 * A guest whose state lives in RAM and in device registers, for snapshot, restore and
 * migration: it sets up the entropy device's request queue with an MSI-X vector and sets the
 * serial port's scratch register to 0x5a; then, for ever, it counts in RAM, asks the entropy
 * device for 16 bytes (descriptor `count mod 8`, waiting for its interrupt under the local
 * APIC timer's watchdog), checks the scratch register still holds 0x5a, and prints
 * `tick <count> irqs <interrupts so far>`. A restored guest goes on counting from where it
 * was; any lost queue position, interrupt route, timer or register shows as a FAIL line.
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

    VIRTQUEUE requestq, 0, QUEUE_SIZE, QUEUE_BASE

    .globl _start
_start:
    GUEST_SETUP
    call irq_init
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
    mov $SCRATCH_VALUE, %al
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
5:  mov $COM1_SCRATCH, %dx
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

    .data
    .balign 4
count: .long 0

PVH_ENTRY(_start)
