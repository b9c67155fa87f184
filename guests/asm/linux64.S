/* ld: linux64.ld */
/* A 64-bit ELF kernel without the PVH note, entered through the Linux 64-bit boot protocol
 * (long mode, RSI = boot_params): checks and reports boot_params. */
#define GUEST_NAME "linux64"
#define GUEST_BITS 64
#include "guest.h"
#include "linux.h"

    .globl _start
_start:
    GUEST_SETUP
    call linux_report
    PASS
