/*
 * Drives virtio persistent memory (1af4:105b): negotiates VIRTIO_F_VERSION_1, sets up the
 * request queue, reads where the region is (`start`, `size` in the configuration space: above
 * 4 GiB, whole 2 MiB pages) and reaches it through long-mode paging, which this 32-bit guest
 * turns on and then runs under in compatibility mode (its code stays 32-bit; interrupts stay
 * off, since the IDT is a 32-bit one): the first 4 GiB identity-mapped, the region's first
 * and last 2 MiB at WINDOW. It prints
 * the region's first 16 bytes (what the host put in the file), writes a line at WINDOW +
 * 0x100 and one in the region's last 64 bytes, reads both back, sends a flush request,
 * polls for the answer, and prints `PASS virtio_pmem` once the device answers it with OK.
 */
#define GUEST_NAME "virtio_pmem"
#include "guest.h"
#include "pvh.h"
#include "irq.h"
#include "pci.h"
#include "virtio.h"
#include "pvh_note.h"

#define VIRTIO_PMEM_ID ((0x105b << 16) | VIRTIO_VENDOR)
#define BAR_ADDRESS (PCI_WINDOW + 0x20000)
#define REQUEST_BASE 0x300000
#define QUEUE_SIZE 8
#define REQ 0x310000                /* the request type (u32), then the status (u32) */
#define REQ_STATUS (REQ + 4)
#define WINDOW 0x80000000           /* PDPT entry 2: the region's first and last 2 MiB */
#define PAGE_2M 0x200000
#define PDE_LARGE 0x83              /* present, writable, 2 MiB page */
#define CR4_PAE 0x20
#define CR0_PG 0x80000000
#define MSR_EFER 0xc0000080
#define EFER_LME 0x100
#define ANSWER_POLLS 1000000        /* reads of the used ring while waiting for the flush */
#define DESC_F_NEXT 1

    VIRTQUEUE requestq, 0, QUEUE_SIZE, REQUEST_BASE

    .globl _start
_start:
    GUEST_SETUP
    PVH_START_INFO
    call irq_init
    call virtio_irq_init
    sti
    mov $VIRTIO_PMEM_ID, %eax
    call virtio_find
    cmp $-1, %ebx
    jne 1f
    FAIL "no virtio pmem (1af4:105b) on bus 0"
1:  PRINT "virtio-pmem: "
    call pci_print_bdf
    call newline
    mov $BAR_ADDRESS, %eax
    mov $VIRTIO_PMEM_ID, %edx
    call virtio_open
    xor %eax, %eax
    xor %edx, %edx
    call virtio_negotiate
    mov $requestq, %esi
    call vq_setup
    call virtio_driver_ok

    /* The region: start (bytes 0-7) and size (8-15). */
    mov vp_device, %edi
    mov (%edi), %eax
    mov %eax, start_lo
    mov 4(%edi), %eax
    mov %eax, start_hi
    mov 8(%edi), %eax
    mov %eax, size_lo
    mov 12(%edi), %eax
    mov %eax, size_hi
    PRINT "pmem: region at "
    mov start_hi, %eax
    call puthex
    mov $' ', %al
    call putc
    mov start_lo, %eax
    mov $8, %ecx
    call puthexw
    PRINT ", "
    mov size_lo, %eax
    mov size_hi, %edx
    shrd $20, %edx, %eax
    call putdec
    PRINTLN " MiB"
    cmpl $0, start_hi
    jne 2f
    FAIL "the region is below 4 GiB"
2:  testl $(PAGE_2M - 1), start_lo
    jnz 3f
    testl $(PAGE_2M - 1), size_lo
    jnz 3f
    mov size_lo, %eax
    or size_hi, %eax
    jnz 4f
3:  FAIL "the region is not whole 2 MiB pages"
4:  call map_region

    /* What the host wrote. */
    PRINT "pmem: host wrote \""
    mov $WINDOW, %esi
    mov $16, %ecx
5:  lodsb
    call putc
    dec %ecx
    jnz 5b
    PRINTLN "\""
    /* The guest's writes, at the start and at the very end. */
    mov $marker, %esi
    mov $(WINDOW + 0x100), %edi
    mov $marker_len, %ecx
    rep movsb
    mov $marker_end, %esi
    mov $(WINDOW + 2 * PAGE_2M - 64), %edi
    mov $marker_end_len, %ecx
    rep movsb
    mov $marker, %esi
    mov $(WINDOW + 0x100), %edi
    mov $marker_len, %ecx
    repe cmpsb
    je 6f
    FAIL "what the guest wrote to the region does not read back"
6:  PRINTLN "pmem: wrote the region"

    /* Flush: a readable request, a writable status. */
    movl $0, REQ
    movl $0xff, REQ_STATUS
    mov $requestq, %esi
    mov VQ_DESC(%esi), %edx
    movl $REQ, (%edx)
    movl $0, 4(%edx)
    movl $4, 8(%edx)
    movw $DESC_F_NEXT, 12(%edx)
    movw $1, 14(%edx)
    movl $REQ_STATUS, 16(%edx)
    movl $0, 20(%edx)
    movl $4, 24(%edx)
    movw $VRING_DESC_F_WRITE, 28(%edx)
    movw $0, 30(%edx)
    xor %ebx, %ebx
    call vq_publish
    call vq_kick
    mov $ANSWER_POLLS, %ecx
7:  call vq_pending
    jnz 10f
    pause
    dec %ecx
    jnz 7b
    FAIL "the device did not answer the flush"
10: call vq_take
    cmp $4, %ecx
    je 8f
    FAIL "the flush's used length is not 4"
8:  cmpl $0, REQ_STATUS
    je 9f
    FAIL "the flush did not answer OK"
9:  PRINTLN "pmem: flushed"
    PASS

/*
 * map_region: turns interrupts off and long-mode paging on (compatibility mode): the first
 * 4 GiB identity-mapped in 2 MiB pages, except the 1 GiB at WINDOW, whose first two entries
 * map the region's first and last 2 MiB.
 */
map_region:
    cli
    xor %ecx, %ecx
1:  mov %ecx, %eax
    shl $21, %eax
    or $PDE_LARGE, %eax
    mov %eax, page_dirs(, %ecx, 8)
    movl $0, page_dirs + 4(, %ecx, 8)
    inc %ecx
    cmp $2048, %ecx
    jb 1b
    mov start_lo, %eax
    or $PDE_LARGE, %eax
    mov %eax, page_dirs + 1024 * 8
    mov start_hi, %eax
    mov %eax, page_dirs + 1024 * 8 + 4
    /* The last 2 MiB: start + size - 2 MiB. */
    mov start_lo, %eax
    mov start_hi, %edx
    add size_lo, %eax
    adc size_hi, %edx
    sub $PAGE_2M, %eax
    sbb $0, %edx
    or $PDE_LARGE, %eax
    mov %eax, page_dirs + 1025 * 8
    mov %edx, page_dirs + 1025 * 8 + 4
    xor %ecx, %ecx
2:  mov %ecx, %eax
    shl $12, %eax
    add $page_dirs, %eax
    or $3, %eax                     /* present, writable */
    mov %eax, pdpt(, %ecx, 8)
    movl $0, pdpt + 4(, %ecx, 8)
    inc %ecx
    cmp $4, %ecx
    jb 2b
    mov $pdpt, %eax
    or $3, %eax
    mov %eax, pml4
    movl $0, pml4 + 4
    mov %cr4, %eax
    or $CR4_PAE, %eax
    mov %eax, %cr4
    mov $pml4, %eax
    mov %eax, %cr3
    mov $MSR_EFER, %ecx
    rdmsr
    or $EFER_LME, %eax
    wrmsr
    mov %cr0, %eax
    or $CR0_PG, %eax
    mov %eax, %cr0
    ret

    .data
    .balign 4
start_lo: .long 0
start_hi: .long 0
size_lo: .long 0
size_hi: .long 0
marker: .ascii "written by the virtio_pmem guest\n"
    .set marker_len, . - marker
marker_end: .ascii "the last bytes of the region\n"
    .set marker_end_len, . - marker_end

    .bss
    .balign 4096
page_dirs: .skip 4 * 4096
pdpt: .skip 4096
pml4: .skip 4096

PVH_ENTRY(_start)
