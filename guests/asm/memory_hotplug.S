/* ld: linux64.ld */
/*
 * Takes part in ACPI memory hot-plug as an operating system would, without ACPI's
 * interpreter, in long mode (entered through the Linux 64-bit boot protocol): polls the
 * memory hot-plug controller, slot after slot. Each block just added is acknowledged, must be
 * present, above 4 GiB and made of whole 128 MiB blocks, and is then used: its first and its
 * last 2 MiB are mapped at WINDOW and a word written at each end must read back (memory KVM
 * does not back reads as 0xff). After two blocks: PASS.
 */
#define GUEST_NAME "memory_hotplug"
#define GUEST_BITS 64
#include "guest.h"

#define MEM_REGS 0xfe003000         /* the controller; offsets below */
#define MEM_SELECT 0x0              /* write: the slot the other registers speak of */
#define MEM_STATUS 0x4              /* read: bits below; write: acknowledge */
#define MEM_BASE_LOW 0x8
#define MEM_BASE_HIGH 0xc
#define MEM_LENGTH_LOW 0x10
#define MEM_LENGTH_HIGH 0x14
#define MEM_PRESENT 1
#define MEM_INSERTING 2
#define BLOCK_MASK 0x07ffffff       /* 128 MiB blocks */
#define PAGE_2M 0x200000
#define PDE_LARGE 0x83              /* present, writable, 2 MiB page */
#define PDPTE_TABLE 0x3             /* present, writable */
#define WINDOW 0x40000000           /* virtual 1 GiB: PDPT entry 1 */
#define POLLS 40000                 /* status polls per block (each an exit): tens of seconds */
#define POLL_DELAY 200

    .globl _start
_start:
    GUEST_SETUP
    call map_tables
    PRINTLN "memory_hotplug: ready"
    mov $MEM_REGS, %rbp
    xor %ebx, %ebx              /* the slot expected next */
1:  mov $POLLS, %ecx
2:  mov %ebx, MEM_SELECT(%rbp)
    mov MEM_STATUS(%rbp), %eax
    test $MEM_INSERTING, %eax
    jnz 4f
    mov $POLL_DELAY, %edx
3:  pause
    dec %edx
    jnz 3b
    dec %ecx
    jnz 2b
    FAIL "no memory was hot-plugged in time"
4:  call block_added
    inc %ebx
    cmp $2, %ebx
    jb 1b
    PASS

/*
 * map_tables: to the boot page tables (the first GiB, identity), adds the top GiB (the
 * devices' registers, identity) and the window, both in 2 MiB pages.
 */
map_tables:
    xor %ecx, %ecx
    mov $0xc0000000, %edx       /* zero-extended: the top GiB's first address */
1:  mov %rcx, %rax
    shl $21, %rax
    add %rdx, %rax
    or $PDE_LARGE, %rax
    mov %rax, pd_top(, %rcx, 8)
    inc %ecx
    cmp $512, %ecx
    jb 1b
    mov %cr3, %rax
    and $~0xfff, %rax
    mov (%rax), %rdi            /* PML4[0]: the PDPT */
    and $~0xfff, %rdi
    mov $pd_window, %rax
    or $PDPTE_TABLE, %rax
    mov %rax, 8(%rdi)
    mov $pd_top, %rax
    or $PDPTE_TABLE, %rax
    mov %rax, 24(%rdi)
    mov %cr3, %rax
    mov %rax, %cr3
    ret

/* block_added: EBX = the slot, EAX = its status, RBP = the controller. */
block_added:
    movl $MEM_INSERTING, MEM_STATUS(%rbp)
    test $MEM_PRESENT, %eax
    jnz 1f
    FAIL "an added memory block is not present"
1:  mov MEM_BASE_LOW(%rbp), %esi
    mov MEM_BASE_HIGH(%rbp), %edi
    mov MEM_LENGTH_LOW(%rbp), %r8d
    mov MEM_LENGTH_HIGH(%rbp), %r9d
    shl $32, %rdi
    or %rdi, %rsi               /* RSI = base */
    shl $32, %r9
    or %r9, %r8                 /* R8 = length */
    mov $0xffffffff, %eax
    cmp %rax, %rsi
    ja 2f
    FAIL "hot-plugged memory below 4 GiB"
2:  test $BLOCK_MASK, %rsi
    jnz 3f
    test $BLOCK_MASK, %r8
    jnz 3f
    test %r8, %r8
    jnz 4f
3:  FAIL "a memory block not made of whole 128 MiB blocks"
4:  PRINT "memory slot "
    mov %ebx, %eax
    call putdec
    PRINT ": base "
    mov %rsi, %rax
    shr $32, %rax
    call puthex
    mov $' ', %al
    call putc
    mov %esi, %eax
    mov $8, %ecx
    call puthexw
    PRINT ", "
    mov %r8, %rax
    shr $20, %rax
    call putdec
    PRINTLN " MiB"
    /* The block's first 2 MiB at WINDOW, its last at WINDOW + 2 MiB. */
    mov %rsi, %rax
    or $PDE_LARGE, %rax
    mov %rax, pd_window
    lea -PAGE_2M(%rsi, %r8), %rax
    or $PDE_LARGE, %rax
    mov %rax, pd_window + 8
    mov %cr3, %rax              /* forget the old translations */
    mov %rax, %cr3
    mov $WINDOW, %rdi
    mov %ebx, %eax
    or $0x5a5a0000, %eax
    mov %eax, (%rdi)
    not %eax
    mov %eax, 2 * PAGE_2M - 4(%rdi)
    mov %ebx, %eax
    or $0x5a5a0000, %eax
    cmp (%rdi), %eax
    jne 5f
    not %eax
    cmp 2 * PAGE_2M - 4(%rdi), %eax
    je 6f
5:  FAIL "a word written to hot-plugged memory did not read back"
6:  PRINTLN "memory_hotplug: block usable"
    ret

    .data
    .balign 4096
pd_window: .skip 4096
pd_top: .skip 4096
