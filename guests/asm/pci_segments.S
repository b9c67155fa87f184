/*
 * Lists every PCI segment the MCFG describes, as an operating system finds them: for each
 * entry, the devices on its bus 0 through its own ECAM region, printed as
 * `pci SSSS:00:DD.0 VVVV:DDDD`. Then `PASS pci_segments: N segments`.
 */
#define GUEST_NAME "pci_segments"
#include "guest.h"
#include "pvh.h"
#include "pci.h"
#include "pvh_note.h"

#define SLOTS 32

    .globl _start
_start:
    GUEST_SETUP
    PVH_START_INFO
    cmpl $0, (SI_RSDP + 4)(%ebp)
    jne 1f
    mov SI_RSDP(%ebp), %esi
    test %esi, %esi
    jnz 2f
1:  FAIL "the start info gives no RSDP below 4 GiB"
2:  call acpi_find_ecam
    mov pci_mcfg, %esi
    mov ACPI_SDT_LENGTH(%esi), %ecx
    lea (%esi, %ecx), %ebp          /* EBP = the table's end */
    lea ACPI_MCFG_ENTRIES(%esi), %edi
    xor %esi, %esi                  /* ESI = segments seen */
3:  lea ACPI_MCFG_ENTRY(%edi), %eax
    cmp %ebp, %eax
    ja 6f
    cmpl $0, 4(%edi)
    je 31f
    FAIL "an ECAM region lies above 4 GiB"
31: inc %esi
    xor %ebx, %ebx                  /* EBX = the slot */
4:  mov %ebx, %eax
    shl $15, %eax
    add (%edi), %eax
    mov (%eax), %edx                /* the id register */
    cmp $0xffff, %dx
    je 5f
    PRINT "pci "
    movzwl 8(%edi), %eax
    mov $4, %ecx
    push %edx
    call puthexw
    pop %edx
    mov $':', %al
    call putc
    call pci_print_bdf
    mov $' ', %al
    call putc
    mov %edx, %eax
    call pci_print_id
    call newline
5:  inc %ebx
    cmp $SLOTS, %ebx
    jb 4b
    add $ACPI_MCFG_ENTRY, %edi
    jmp 3b
6:  PASS_BEGIN
    PRINT ": "
    mov %esi, %eax
    call putdec
    PRINTLN " segments"
    jmp poweroff

PVH_ENTRY(_start)
