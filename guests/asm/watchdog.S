/*
 * Arms the IB700 watchdog (Linux's ib700wdt: value 13 on port 0x443 is 4 seconds), pets it
 * a few times, then stops petting it and spins: the VMM must reset the VM. Each boot prints
 * `watchdog: armed, boot N`, N counted in RAM, which a reset (warm, RAM kept) does not clear.
 * Boot 2 stops the watchdog (a write to port 0x441) and prints `PASS watchdog`.
 */
#define GUEST_NAME "watchdog"
#include "guest.h"
#include "pvh_note.h"

#define WDT_STOP 0x441
#define WDT_START 0x443
#define TIMEOUT_4S 13
#define BOOTS 0x500000              /* a RAM word outside the image: counts the boots */
#define MAGIC 0x77647400            /* "wdt" in the top bytes marks the count as ours */
#define PETS 3
#define PET_SPINS 200000            /* well under 4 seconds emulated between pets */

    .globl _start
_start:
    GUEST_SETUP
    mov BOOTS, %eax
    mov %eax, %edx
    and $0xffffff00, %edx
    cmp $MAGIC, %edx
    je 1f
    mov $MAGIC, %eax
1:  inc %eax
    mov %eax, BOOTS
    and $0xff, %eax
    mov %eax, %ebx                  /* EBX = this boot's number */
    mov $WDT_START, %dx
    mov $TIMEOUT_4S, %al
    out %al, %dx
    PRINT "watchdog: armed, boot "
    mov %ebx, %eax
    call putdec
    call newline
    cmp $2, %ebx
    jb 2f
    mov $WDT_STOP, %dx
    out %al, %dx
    PASS
2:  mov $PETS, %esi
3:  mov $PET_SPINS, %ecx
4:  pause
    dec %ecx
    jnz 4b
    mov $WDT_START, %dx
    mov $TIMEOUT_4S, %al
    out %al, %dx
    dec %esi
    jnz 3b
    PRINTLN "watchdog: no more pets"
5:  pause
    jmp 5b

PVH_ENTRY(_start)
