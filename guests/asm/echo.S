/* Echoes what arrives on COM1 (polling the line status register) until it receives `q`. */
#define GUEST_NAME "echo"
#include "guest.h"
#include "pvh_note.h"

#define LSR_DATA_READY 0x01
/* Polls with no input before giving up: each costs about 15 us here (an exit to the VMM),
 * so several seconds here; the count restarts with every byte received. */
#define IDLE_POLLS 600000

    .globl _start
_start:
    GUEST_SETUP
    mov $COM1_LSR, %dx
    in %dx, %al
    cmp $0xff, %al
    jne 1f
    FAIL "no UART at 0x3f8 (its line status reads 0xff)"
1:  PRINTLN "echo: ready"
2:  mov $IDLE_POLLS, %ecx
3:  mov $COM1_LSR, %dx
    in %dx, %al
    test $LSR_DATA_READY, %al
    jnz 4f
    pause
    dec %ecx
    jnz 3b
    call newline
    FAIL "no input for several seconds (end the input with q)"
4:  mov $COM1, %dx
    in %dx, %al
    cmp $'q', %al
    je 5f
    call putc
    jmp 2b
5:  call newline
    PASS

PVH_ENTRY(_start)
