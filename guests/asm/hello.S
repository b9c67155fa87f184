/* Prints one known line on COM1 and powers off through the ACPI sleep register. */
#include "pvh_note.h"

    .code32
    .text
    .globl _start
_start:
    mov $msg, %esi
    mov $0x3f8, %dx
1:  lodsb
    test %al, %al
    jz 2f
    out %al, %dx
    jmp 1b
2:  mov $0x600, %dx
    mov $0x34, %al
    out %al, %dx
3:  hlt
    jmp 3b

    .section .rodata
msg: .asciz "Hello from the Palisade test guest\n"

PVH_ENTRY(_start)
