/* The guest users meet first: a banner, then what the machine looks like from inside. */
#define GUEST_NAME "demo"
#include "guest.h"
#include "pvh.h"
#include "mptable.h"
#include "pvh_note.h"

    .globl _start
_start:
    GUEST_SETUP
    PVH_START_INFO
    PRINTLN "Palisade demo guest"
    PRINTLN "  a few hundred bytes of x86 assembly, booted through PVH"
    PRINT "cmdline: "
    mov SI_CMDLINE(%ebp), %esi
    test %esi, %esi
    jz 2f
    call puts
2:  call newline
    mov SI_MEMMAP(%ebp), %esi
    mov SI_MEMMAP_ENTRIES(%ebp), %ecx
    cmp $MAX_MAP_ENTRIES, %ecx
    jbe 3f
    FAIL "implausible number of memory map entries"
3:  mov $MEMMAP_ENTRY_SIZE, %edx
    call ram_kib
    test %eax, %eax
    jnz 4f
    FAIL "the memory map has no RAM"
4:  PRINT "memory: "
    call putdec
    PRINT " KiB RAM ("
    shr $10, %eax
    call putdec
    PRINTLN " MiB)"
    call mp_find
    call mp_cpus
    PRINT "cpus: "
    mov mp_ncpus, %eax
    call putdec
    PRINTLN " in the MP table"
    PASS

PVH_ENTRY(_start)
