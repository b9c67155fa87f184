/* Reports what the PVH start info gives the guest: command line, memory map, initramfs. */
#define GUEST_NAME "pvh_info"
#include "guest.h"
#include "pvh.h"
#include "pvh_note.h"

    .globl _start
_start:
    GUEST_SETUP
    PVH_START_INFO
    PRINT "cmdline: "
    mov SI_CMDLINE(%ebp), %esi
    test %esi, %esi
    jz 2f
    call puts
2:  call newline

    mov SI_MEMMAP_ENTRIES(%ebp), %ecx
    test %ecx, %ecx
    jnz 3f
    FAIL "the memory map is empty"
3:  cmp $MAX_MAP_ENTRIES, %ecx
    jbe 4f
    FAIL "implausible number of memory map entries"
4:  mov SI_MEMMAP(%ebp), %esi
    mov $MEMMAP_ENTRY_SIZE, %edx
    call ram_kib
    test %eax, %eax
    jnz 5f
    FAIL "the memory map has no RAM"
5:  PRINT "memmap: "
    xchg %eax, %ecx
    call putdec
    PRINT " entries, "
    mov %ecx, %eax
    call putdec
    PRINTLN " KiB RAM"

    cmpl $0, SI_NR_MODULES(%ebp)
    je 7f
    mov SI_MODLIST(%ebp), %edi
    test %edi, %edi
    jnz 6f
    FAIL "modules announced but no module list"
6:  PRINT "initramfs: "
    mov MOD_SIZE(%edi), %eax
    call putdec
    PRINT " bytes: "
    mov MOD_PADDR(%edi), %esi
    mov $40, %ecx
    cmp %ecx, %eax                  /* the first line, within the module */
    jae 8f
    mov %eax, %ecx
8:  call putline
    call newline

7:  PASS

PVH_ENTRY(_start)
