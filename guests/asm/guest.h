/*
 * Routines and macros shared by the test guests.
 *
 * Every guest needs the same few things: write to COM1, print numbers, add up a memory map,
 * find a word on the command line, power off or reset, and report its verdict. Writing them
 * once keeps each guest down to the behaviour it tests, and makes every verdict line the same
 * shape (`PASS <name>...` / `FAIL <name>: <why>`) for the tests that look for it. Each guest is
 * one assembly file, so the routines are simply assembled into every guest that includes this
 * header; they take a few hundred bytes.
 *
 * Before including, a guest defines GUEST_NAME (a string) and, for 64-bit code (the Linux
 * entry), GUEST_BITS 64; the default is 32-bit code (the PVH entry). The X* register names
 * below are the natural width of the mode, so the same source serves both.
 *
 * Conventions: arguments in registers as each routine says; a routine preserves every
 * register except the results it documents (and the flags). They need a stack: start with
 * GUEST_SETUP, which also clears the direction flag.
 */

#ifndef GUEST_NAME
#error "define GUEST_NAME before including guest.h"
#endif
#ifndef GUEST_BITS
#define GUEST_BITS 32
#endif

#if GUEST_BITS == 64
#define XAX %rax
#define XBX %rbx
#define XCX %rcx
#define XDX %rdx
#define XSI %rsi
#define XDI %rdi
#define XBP %rbp
#define XSP %rsp
    .code64
#else
#define XAX %eax
#define XBX %ebx
#define XCX %ecx
#define XDX %edx
#define XSI %esi
#define XDI %edi
#define XBP %ebp
#define XSP %esp
    .code32
#endif

#define COM1 0x3f8
#define COM1_LSR 0x3fd
#define ACPI_SLEEP 0x600
#define ACPI_S5 0x34
#define ACPI_RESET 0x01
#define I8042_COMMAND 0x64
#define I8042_RESET 0xfe
#define E820_RAM 1
/* Spins of `pause` after asking the VMM to power off or reset before declaring it ignored:
 * a few seconds of emulated time, far longer than the VMM takes to stop the vCPU. */
#define STOP_WAIT 2000000
#define STACK_SIZE 4096
/* Where the reboot and triple guests leave a marker that survives a warm reset: free low RAM
 * below the EBDA, clear of the VMM's boot structures and outside any guest image. */
#define RAM_MARKER 0x90000

/* Stack and direction flag; preserves every other register (EBX/RSI carry boot info). */
.macro GUEST_SETUP
    cld
    mov $guest_stack_top, XSP
.endm

/* Prints a literal string (escapes such as \n are allowed). */
.macro PRINT str:req
    .pushsection .rodata
.Lprint_str\@:
    .asciz "\str"
    .popsection
    push XSI
    mov $.Lprint_str\@, XSI
    call puts
    pop XSI
.endm

/* PRINT, then a newline. */
.macro PRINTLN str:req
    PRINT "\str\n"
.endm

/* Prints `FAIL <name>: <why>` and powers off. */
.macro FAIL why:req
    .pushsection .rodata
.Lfail_str\@:
    .ascii "FAIL "
    .ascii GUEST_NAME
    .ascii ": \why\n"
    .byte 0
    .popsection
    mov $.Lfail_str\@, XSI
    call puts
    jmp poweroff
.endm

/* Prints `FAIL <name>: `; the guest prints the rest of the line and jumps to poweroff. */
.macro FAIL_BEGIN
    PRINT "FAIL "
    PRINT GUEST_NAME
    PRINT ": "
.endm

/* Prints `PASS <name>` without a newline: the guest may add detail. */
.macro PASS_BEGIN
    PRINT "PASS "
    PRINT GUEST_NAME
.endm

/* Prints `PASS <name>` and powers off. */
.macro PASS
    PASS_BEGIN
    call newline
    jmp poweroff
.endm

    .text

/* putc: writes AL to COM1. Palisade's 16550 takes every byte at once (its transmitter is
 * always empty), so there is no LSR poll to bound. */
putc:
    push XDX
    mov $COM1, %dx
    out %al, %dx
    pop XDX
    ret

newline:
    push XAX
    mov $'\n', %al
    call putc
    pop XAX
    ret

/* puts: prints the NUL-terminated string at XSI. */
puts:
    push XSI
    push XAX
1:  lodsb
    test %al, %al
    jz 2f
    call putc
    jmp 1b
2:  pop XAX
    pop XSI
    ret

/* putline: prints at most ECX bytes from XSI, stopping at NUL, CR or LF; other control and
 * non-ASCII bytes print as '.', so binary data cannot upset the terminal. */
putline:
    push XSI
    push XCX
    push XAX
    test %ecx, %ecx
    jz 3f
1:  lodsb
    test %al, %al
    jz 3f
    cmp $'\n', %al
    je 3f
    cmp $'\r', %al
    je 3f
    cmp $' ', %al
    jb 4f
    cmp $'~', %al
    jbe 2f
4:  mov $'.', %al
2:  call putc
    dec %ecx
    jnz 1b
3:  pop XAX
    pop XCX
    pop XSI
    ret

/* putdec: prints EAX as an unsigned decimal number. */
putdec:
    push XAX
    push XBX
    push XCX
    push XDX
    mov $10, %ebx
    xor %ecx, %ecx
1:  xor %edx, %edx
    div %ebx
    push XDX
    inc %ecx
    test %eax, %eax
    jnz 1b
2:  pop XAX
    add $'0', %al
    call putc
    dec %ecx
    jnz 2b
    pop XDX
    pop XCX
    pop XBX
    pop XAX
    ret

/* puthex: prints EAX as 0x followed by its hex digits, without leading zeros. */
puthex:
    push XAX
    push XBX
    push XCX
    push XDX
    mov %eax, %edx
    mov $'0', %al
    call putc
    mov $'x', %al
    call putc
    mov $8, %ecx
    xor %ebx, %ebx          /* set once a digit has been printed */
1:  rol $4, %edx
    mov %edx, %eax
    and $0xf, %eax
    cmp $1, %ecx            /* the last digit always prints */
    je 2f
    test %ebx, %ebx
    jnz 2f
    test %eax, %eax
    jz 4f
2:  mov $1, %ebx
    cmp $10, %al
    jb 3f
    add $('a' - '0' - 10), %al
3:  add $'0', %al
    call putc
4:  dec %ecx
    jnz 1b
    pop XDX
    pop XCX
    pop XBX
    pop XAX
    ret

/* puthexw: prints the low ECX (1-8) hex digits of EAX, zero-padded, without a prefix. */
puthexw:
    push XAX
    push XCX
    push XDX
    mov %eax, %edx
    mov %ecx, %eax          /* rotate the first digit wanted into the top nibble */
    neg %eax
    add $8, %eax
    shl $2, %eax
    xchg %eax, %ecx
    rol %cl, %edx
    mov %eax, %ecx
1:  rol $4, %edx
    mov %edx, %eax
    and $0xf, %eax
    cmp $10, %al
    jb 2f
    add $('a' - '0' - 10), %al
2:  add $'0', %al
    call putc
    dec %ecx
    jnz 1b
    pop XDX
    pop XCX
    pop XAX
    ret

/* putdec64: prints EDX:EAX as an unsigned decimal number. */
putdec64:
    push XAX
    push XBX
    push XCX
    push XDX
    push XSI
    push XDI
    mov %edx, %esi          /* ESI:EDI = what is left to print */
    mov %eax, %edi
    mov $10, %ebx
    xor %ecx, %ecx
1:  xor %edx, %edx          /* divide the high half, then the low half with its remainder */
    mov %esi, %eax
    div %ebx
    mov %eax, %esi
    mov %edi, %eax
    div %ebx
    mov %eax, %edi
    push XDX
    inc %ecx
    mov %esi, %eax
    or %edi, %eax
    jnz 1b
2:  pop XAX
    add $'0', %al
    call putc
    dec %ecx
    jnz 2b
    pop XDI
    pop XSI
    pop XDX
    pop XCX
    pop XBX
    pop XAX
    ret

/* ram_kib: adds up the usable RAM (type 1) of a memory map: XSI = first entry, ECX = number
 * of entries, EDX = entry size (24 for PVH, 20 for e820; both keep addr, size and type at 0,
 * 8 and 16). Returns EAX = KiB. */
ram_kib:
    push XSI
    push XCX
    push XBX
    push XDI
    xor %edi, %edi
    test %ecx, %ecx
    jz 3f
1:  cmpl $E820_RAM, 16(XSI)
    jne 2f
    mov 8(XSI), %eax
    mov 12(XSI), %ebx
    shrd $10, %ebx, %eax
    add %eax, %edi
2:  add XDX, XSI
    dec %ecx
    jnz 1b
3:  mov %edi, %eax
    pop XDI
    pop XBX
    pop XCX
    pop XSI
    ret

/* has_word: whether the NUL-terminated command line at XSI holds the word at XDI as a whole
 * space-separated token. Returns EAX = 1 if so, else 0. */
has_word:
    push XSI
    push XBX
    push XCX
    xor %ecx, %ecx
0:  mov (XSI), %al          /* skip spaces before a token */
    test %al, %al
    jz 5f
    cmp $' ', %al
    jne 1f
    inc XSI
    jmp 0b
1:  mov XDI, XBX            /* compare the token with the word */
2:  mov (XSI), %al
    mov (XBX), %ah
    test %ah, %ah
    jz 3f
    cmp %al, %ah
    jne 4f
    inc XSI
    inc XBX
    jmp 2b
3:  test %al, %al           /* the word ended: a match if the token ends too */
    jz 6f
    cmp $' ', %al
    je 6f
4:  mov (XSI), %al          /* no match: skip the rest of the token */
    test %al, %al
    jz 5f
    cmp $' ', %al
    je 0b
    inc XSI
    jmp 4b
6:  inc %ecx
5:  mov %ecx, %eax
    pop XCX
    pop XBX
    pop XSI
    ret

/* Asks the VMM to stop, through the port and byte in DX and AL, and waits for it; if the VMM
 * lets the vCPU run on for STOP_WAIT spins, says so and halts for good. */
stop_machine:
    out %al, %dx
    mov $STOP_WAIT, %ecx
1:  pause
    dec %ecx
    jnz 1b
    FAIL_BEGIN
    PRINT "the VMM ignored the request (byte "
    movzbl %al, %eax
    call puthex
    PRINT " to port "
    movzwl %dx, %eax
    call puthex
    PRINTLN ")"
halt_forever:
    cli
    hlt
    jmp halt_forever

/* Powers off through the ACPI sleep register (S5). Does not return. */
poweroff:
    mov $ACPI_SLEEP, %dx
    mov $ACPI_S5, %al
    jmp stop_machine

/* Resets through the i8042 keyboard controller. Does not return. */
reset_i8042:
    mov $I8042_COMMAND, %dx
    mov $I8042_RESET, %al
    jmp stop_machine

/* Resets through the ACPI reset value written to the sleep register. Does not return. */
reset_acpi:
    mov $ACPI_SLEEP, %dx
    mov $ACPI_RESET, %al
    jmp stop_machine

    .section .bss
    .balign 16
guest_stack:
    .skip STACK_SIZE
guest_stack_top:

    .text
