/*
 * Drives the virtio memory balloon (1af4:1045): negotiates VIRTIO_F_VERSION_1, sets up the
 * inflate and deflate queues, reads the target (`num_pages`) and gives up that many pages
 * (at most MAX_PAGES) on the inflate queue, writes `actual`, and checks the pages read as
 * zeros once the host has them back. Then it waits for the target to drop to 0 (`vm.resize
 * desired_balloon`), takes the pages back on the deflate queue, writes `actual` 0, and
 * prints `PASS virtio_balloon` — and stays up, halted, so the test can read the counters.
 */
#define GUEST_NAME "virtio_balloon"
#include "guest.h"
#include "pvh.h"
#include "irq.h"
#include "pci.h"
#include "virtio.h"
#include "pvh_note.h"

#define VIRTIO_BALLOON_ID ((0x1045 << 16) | VIRTIO_VENDOR)
#define BAR_ADDRESS (PCI_WINDOW + 0x20000)
#define INFLATE_BASE 0x300000
#define DEFLATE_BASE 0x302000
#define QUEUE_SIZE 8
#define PFN_BUF 0x310000
#define PAGES 0x400000              /* the pages given up, one after the other */
#define MAX_PAGES 16
#define PAGE 4096
#define WAIT_PERIODS 2
#define TARGET_POLLS 2000000        /* reads of num_pages while waiting for 0 (seconds) */

    VIRTQUEUE inflateq, 0, QUEUE_SIZE, INFLATE_BASE
    VIRTQUEUE deflateq, 1, QUEUE_SIZE, DEFLATE_BASE

    .globl _start
_start:
    GUEST_SETUP
    PVH_START_INFO
    call irq_init
    call virtio_irq_init
    sti
    mov $VIRTIO_BALLOON_ID, %eax
    call virtio_find
    cmp $-1, %ebx
    jne 1f
    FAIL "no virtio balloon (1af4:1045) on bus 0"
1:  PRINT "virtio-balloon: "
    call pci_print_bdf
    call newline
    mov $BAR_ADDRESS, %eax
    mov $VIRTIO_BALLOON_ID, %edx
    call virtio_open
    xor %eax, %eax
    xor %edx, %edx
    call virtio_negotiate
    mov $inflateq, %esi
    call vq_setup
    mov $deflateq, %esi
    call vq_setup
    call virtio_driver_ok

    mov vp_device, %edi
    mov (%edi), %eax                /* num_pages */
    PRINT "balloon: target "
    call putdec
    PRINTLN " pages"
    test %eax, %eax
    jnz 2f
    FAIL "the balloon asks for no page"
2:  cmp $MAX_PAGES, %eax
    jbe 3f
    mov $MAX_PAGES, %eax
3:  mov %eax, pages
    /* Fill the pages, list their frame numbers, hand them over. */
    mov $PAGES, %edi
    mov pages, %ecx
    shl $10, %ecx                   /* dwords */
    mov $0xabababab, %eax
    rep stosl
    xor %ecx, %ecx
4:  mov %ecx, %eax
    add $(PAGES / PAGE), %eax
    mov %eax, PFN_BUF(, %ecx, 4)
    inc %ecx
    cmp pages, %ecx
    jb 4b
    mov $inflateq, %esi
    call give_frames
    mov vp_device, %edi
    mov pages, %eax
    mov %eax, 4(%edi)               /* actual */
    /* The host has them back: they read as zeros. */
    mov $PAGES, %esi
    mov pages, %ecx
    shl $10, %ecx
5:  cmpl $0, (%esi)
    je 6f
    FAIL "a page given to the balloon still holds what the guest wrote"
6:  add $4, %esi
    dec %ecx
    jnz 5b
    PRINT "balloon: inflated "
    mov pages, %eax
    call putdec
    PRINTLN " pages, which read as zeros"

    /* Wait for the host to want them no more. */
    mov $TARGET_POLLS, %ecx
    mov vp_device, %edi
7:  cmpl $0, (%edi)
    je 8f
    pause
    dec %ecx
    jnz 7b
    FAIL "the target never went back to 0"
8:  mov $deflateq, %esi
    call give_frames
    mov vp_device, %edi
    movl $0, 4(%edi)
    PRINTLN "balloon: deflated"
    PASS_BEGIN
    call newline
9:  cli
    hlt
    jmp 9b

/* give_frames: posts the `pages` frame numbers at PFN_BUF on the queue at ESI and waits. */
give_frames:
    mov $PFN_BUF, %eax
    xor %ebx, %ebx
    mov pages, %ecx
    shl $2, %ecx
    xor %edx, %edx
    call vq_post
    call vq_kick
    mov $WAIT_PERIODS, %ecx
    call vq_wait
    jnc 1f
    FAIL "the balloon did not return the frames within the watchdog's time"
1:  call vq_take
    ret

    .data
    .balign 4
pages: .long 0

PVH_ENTRY(_start)
