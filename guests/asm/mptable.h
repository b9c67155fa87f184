/*
 * Finding the CPUs in the Intel MultiProcessor Specification 1.4 tables (smp and demo guests).
 * 32-bit code; include after guest.h.
 */
#define MP_SEARCH_START 0xf0000     /* the BIOS ROM area, where Palisade writes the tables */
#define MP_SEARCH_END 0x100000
#define MP_FLOATING_SIG 0x5f504d5f  /* "_MP_" */
#define MP_CONFIG_SIG 0x504d4350    /* "PCMP" */
#define MPF_CONFIG 4                /* floating pointer: config table address (u32) */
#define MPC_LENGTH 4                /* config table: base table length (u16) */
#define MPC_ENTRY_COUNT 34          /* u16 */
#define MPC_LAPIC 36                /* u32 */
#define MPC_ENTRIES 44
#define MP_PROCESSOR 0              /* entry type; 20 bytes, other types are 8 */
#define MP_LAST_TYPE 4
#define MPP_APIC_ID 1
#define MPP_FLAGS 3
#define MPP_ENABLED 1
#define MPP_BOOT 2
#define MAX_CPUS 255                /* APIC ids are one byte */

/* checksum: AL = the byte sum of ECX bytes at ESI (0 for a valid table). */
checksum:
    push %esi
    push %ecx
    push %edx
    xor %eax, %eax
    test %ecx, %ecx
    jz 2f
1:  add (%esi), %al
    inc %esi
    dec %ecx
    jnz 1b
2:  pop %edx
    pop %ecx
    pop %esi
    ret

/* mp_find: EDI = the validated MP configuration table; FAILs if there is none. */
mp_find:
    push %esi
    push %ecx
    push %eax
    mov $MP_SEARCH_START, %esi
1:  cmpl $MP_FLOATING_SIG, (%esi)
    jne 2f
    mov $16, %ecx
    call checksum
    test %al, %al
    jz 3f
2:  add $16, %esi
    cmp $MP_SEARCH_END, %esi
    jb 1b
    FAIL "no MP floating pointer (_MP_ with a valid checksum) in 0xf0000-0xfffff"
3:  mov MPF_CONFIG(%esi), %edi
    test %edi, %edi
    jnz 4f
    FAIL "the MP floating pointer has no configuration table"
4:  cmpl $MP_CONFIG_SIG, (%edi)
    je 5f
    FAIL "no PCMP signature at the MP configuration table"
5:  mov %edi, %esi
    movzwl MPC_LENGTH(%edi), %ecx
    call checksum
    test %al, %al
    jz 6f
    FAIL "bad MP configuration table checksum"
6:  pop %eax
    pop %ecx
    pop %esi
    ret

/* mp_cpus: walks the configuration table at EDI and fills mp_ncpus, mp_ids (the enabled
 * processors' APIC ids), mp_boot_id (-1 if no entry is flagged boot processor) and mp_lapic.
 * Clobbers EAX, EBX, ECX, EDX, ESI. */
mp_cpus:
    mov MPC_LAPIC(%edi), %eax
    mov %eax, mp_lapic
    movl $-1, mp_boot_id
    movzwl MPC_ENTRY_COUNT(%edi), %ecx
    movzwl MPC_LENGTH(%edi), %edx
    add %edi, %edx              /* end of the table */
    lea MPC_ENTRIES(%edi), %esi
    xor %ebx, %ebx              /* processors found */
1:  test %ecx, %ecx
    jz 5f
    cmp %edx, %esi
    jb 2f
    FAIL "MP entries run past the end of the configuration table"
2:  movzbl (%esi), %eax
    cmp $MP_PROCESSOR, %eax
    je 3f
    cmp $MP_LAST_TYPE, %eax
    jbe 7f
    FAIL "unknown MP configuration entry type"
7:  add $8, %esi
    jmp 4f
3:  testb $MPP_ENABLED, MPP_FLAGS(%esi)
    jz 6f
    cmp $MAX_CPUS, %ebx
    jb 8f
    FAIL "more processors in the MP table than APIC ids"
8:  movzbl MPP_APIC_ID(%esi), %eax
    mov %al, mp_ids(%ebx)
    inc %ebx
    testb $MPP_BOOT, MPP_FLAGS(%esi)
    jz 6f
    mov %eax, mp_boot_id
6:  add $20, %esi
4:  dec %ecx
    jmp 1b
5:  mov %ebx, mp_ncpus
    ret

    .data
    .balign 4
mp_ncpus:   .long 0
mp_boot_id: .long -1
mp_lapic:   .long 0
mp_ids:     .skip MAX_CPUS
    .text
