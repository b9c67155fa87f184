/* Reboots once (i8042, or ACPI with `method=acpi` on the command line) and checks on the
 * second boot that the VMM loaded the kernel image again. */
#define GUEST_NAME "reboot"
#include "guest.h"
#include "pvh.h"
#include "pvh_note.h"

#define MARKER_MAGIC 0x31544252     /* "RBT1": the first boot has happened */
#define INITIAL 0x600dda7a
#define CHANGED 0xbadda7a0

    .globl _start
_start:
    GUEST_SETUP
    PVH_START_INFO
    cmpl $MARKER_MAGIC, RAM_MARKER
    je second_boot

    PRINTLN "reboot: first boot"
    cmpl $INITIAL, canary
    je 2f
    FAIL "the .data variable does not hold its initial value on the first boot"
2:  movl $MARKER_MAGIC, RAM_MARKER
    movl $CHANGED, canary
    mov SI_CMDLINE(%ebp), %esi
    test %esi, %esi
    jz 3f
    mov $method_acpi, %edi
    call has_word
    test %eax, %eax
    jz 3f
    PRINTLN "reboot: resetting through ACPI (byte 1 to port 0x600)"
    jmp reset_acpi
3:  PRINTLN "reboot: resetting through the i8042 (byte 0xfe to port 0x64)"
    jmp reset_i8042

second_boot:
    PRINTLN "reboot: second boot"
    movl $0, RAM_MARKER
    cmpl $INITIAL, canary
    je 4f
    FAIL "a .data variable kept its first-boot value: the kernel image was not loaded again"
4:  PASS

    .section .rodata
method_acpi: .asciz "method=acpi"
    .data
    .balign 4
canary: .long INITIAL

PVH_ENTRY(_start)
