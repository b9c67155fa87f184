/*
 * PCI for 32-bit guests: configuration space of bus 0 through the legacy mechanism (ports
 * 0xCF8/0xCFC) and through ECAM (found in the ACPI MCFG table), moving a 64-bit memory BAR
 * into the 32-bit window, and the virtio PCI capabilities (virtio 1.x, section 4.1.4).
 * 32-bit code; include after guest.h.
 *
 * A device is named by its slot number in EBX (bus 0, function 0); a register by its offset in
 * ECX. The routines preserve every register but their results.
 */

#define PCI_CONFIG_ADDRESS 0xcf8
#define PCI_CONFIG_DATA 0xcfc
#define PCI_ENABLE 0x80000000
#define PCI_SLOTS 32
#define PCI_ID 0x00                 /* vendor (u16), device (u16) */
#define PCI_COMMAND 0x04            /* u16 */
#define PCI_STATUS 0x06             /* u16 */
#define PCI_CLASS 0x0b              /* base class (u8) */
#define PCI_BAR0 0x10
#define PCI_BAR1 0x14
#define PCI_CAP_PTR 0x34            /* u8 */
#define PCI_STATUS_CAP_LIST 0x10
#define PCI_CMD_MEMORY 0x2
#define PCI_CMD_MASTER 0x4
#define PCI_BAR_TYPE_MASK 0x7
#define PCI_BAR_MEM64 0x4
#define PCI_NO_DEVICE 0xffff
/* More capabilities than 256 bytes of configuration space can hold: bounds the walk. */
#define PCI_MAX_CAPS 48
#define PCI_CAP_ID_VENDOR 0x09
#define PCI_CAP_ID_MSIX 0x11
/* MSI-X capability: message control (u16), table and PBA offset/BIR (u32). */
#define MSIX_CONTROL 2
#define MSIX_TABLE 4
#define MSIX_ENABLE 0x8000
#define MSIX_FUNCTION_MASK 0x4000
#define MSIX_BIR_MASK 0x7
/* MSI-X table entry (16 bytes): address low, address high, data, vector control. */
#define MSIX_ENTRY_ADDR_LO 0
#define MSIX_ENTRY_ADDR_HI 4
#define MSIX_ENTRY_DATA 8
#define MSIX_ENTRY_CONTROL 12
#define MSIX_ENTRY_MASKED 1
#define MSI_ADDRESS 0xfee00000      /* local APIC id 0, physical destination */
/* The 32-bit PCI window, where the guests move BARs the VMM placed above 4 GiB. */
#define PCI_WINDOW 0xc0000000
#define PCI_WINDOW_END 0xe0000000

/* Virtio PCI vendor capability (struct virtio_pci_cap). */
#define VIRTIO_VENDOR 0x1af4
#define VIRTIO_ID_BLOCK 0x1042      /* 0x1040 + device type 2 */
#define VIRTIO_BLOCK_ID ((VIRTIO_ID_BLOCK << 16) | VIRTIO_VENDOR)
#define VCAP_CFG_TYPE 3
#define VCAP_BAR 4
#define VCAP_OFFSET 8
#define VCAP_LENGTH 12
#define VCAP_NOTIFY_MULTIPLIER 16
#define VIRTIO_CAP_COMMON 1
#define VIRTIO_CAP_NOTIFY 2
#define VIRTIO_CAP_ISR 3
#define VIRTIO_CAP_DEVICE 4
/* Common configuration (struct virtio_pci_common_cfg). */
#define VC_DEVICE_FEATURE_SELECT 0x00
#define VC_DEVICE_FEATURE 0x04
#define VC_DRIVER_FEATURE_SELECT 0x08
#define VC_DRIVER_FEATURE 0x0c
#define VC_MSIX_CONFIG 0x10
#define VC_NUM_QUEUES 0x12
#define VC_DEVICE_STATUS 0x14
#define VC_CONFIG_GENERATION 0x15
#define VC_QUEUE_SELECT 0x16
#define VC_QUEUE_SIZE 0x18
#define VC_QUEUE_MSIX_VECTOR 0x1a
#define VC_QUEUE_ENABLE 0x1c
#define VC_QUEUE_NOTIFY_OFF 0x1e
#define VC_QUEUE_DESC 0x20
#define VC_QUEUE_DRIVER 0x28
#define VC_QUEUE_DEVICE 0x30
#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 0x40
#define VIRTIO_STATUS_FAILED 0x80
#define VIRTIO_NO_VECTOR 0xffff
#define VIRTIO_F_VERSION_1_HI 1     /* feature bit 32: bit 0 of feature word 1 */

/* ACPI. */
#define ACPI_RSDP_SIG_LO 0x20445352 /* "RSD " */
#define ACPI_RSDP_SIG_HI 0x20525450 /* "PTR " */
#define ACPI_RSDP_REVISION 15
#define ACPI_RSDP_RSDT 16
#define ACPI_RSDP_LENGTH 20
#define ACPI_RSDP_XSDT 24
#define ACPI_RSDP_V1_SIZE 20
#define ACPI_SDT_LENGTH 4
#define ACPI_SDT_HEADER 36
#define ACPI_SIG_MCFG 0x4746434d    /* "MCFG" */
#define ACPI_MCFG_ENTRIES 44        /* after the header and 8 reserved bytes */
#define ACPI_MCFG_ENTRY 16          /* base (u64), segment (u16), start bus, end bus, reserved */
/* No table Palisade writes comes near this: bounds the walks over garbage. */
#define ACPI_MAX_TABLE 0x10000

    .text

/* pci_select: points CONFIG_ADDRESS at register ECX of slot EBX; returns DX = the data port
 * of that register's byte. */
pci_select:
    push %eax
    push %ecx
    mov %ebx, %eax
    and $0x1f, %eax
    shl $11, %eax
    and $0xfc, %ecx
    or %ecx, %eax
    or $PCI_ENABLE, %eax
    mov $PCI_CONFIG_ADDRESS, %dx
    out %eax, %dx
    pop %ecx
    mov %ecx, %edx
    and $3, %edx
    add $PCI_CONFIG_DATA, %edx
    pop %eax
    ret

/* pci_read32 / pci_read16 / pci_read8: EAX = register ECX of slot EBX (zero-extended). */
pci_read32:
    push %edx
    call pci_select
    in %dx, %eax
    pop %edx
    ret

pci_read16:
    push %edx
    call pci_select
    xor %eax, %eax
    in %dx, %ax
    pop %edx
    ret

pci_read8:
    push %edx
    call pci_select
    xor %eax, %eax
    in %dx, %al
    pop %edx
    ret

/* pci_write32 / pci_write16 / pci_write8: register ECX of slot EBX = EAX / AX / AL. */
pci_write32:
    push %edx
    call pci_select
    out %eax, %dx
    pop %edx
    ret

pci_write16:
    push %edx
    call pci_select
    out %ax, %dx
    pop %edx
    ret

pci_write8:
    push %edx
    call pci_select
    out %al, %dx
    pop %edx
    ret

/* ecam_read32: EAX = register ECX of slot EBX through ECAM (pci_ecam must be set). */
ecam_read32:
    push %ebx
    and $0x1f, %ebx
    shl $15, %ebx
    add pci_ecam, %ebx
    mov (%ebx, %ecx), %eax
    pop %ebx
    ret

/* pci_print_bdf: prints `00:SS.0` for slot EBX. */
pci_print_bdf:
    push %eax
    push %ecx
    PRINT "00:"
    mov %ebx, %eax
    mov $2, %ecx
    call puthexw
    PRINT ".0"
    pop %ecx
    pop %eax
    ret

/* pci_print_id: prints `VVVV:DDDD` from an id register value in EAX. */
pci_print_id:
    push %eax
    push %ecx
    mov $4, %ecx
    call puthexw
    push %eax
    mov $':', %al
    call putc
    pop %eax
    shr $16, %eax
    call puthexw
    pop %ecx
    pop %eax
    ret

/* pci_print_bar: prints the 64-bit address EDX:EAX as 0x followed by its hex digits. */
pci_print_bar:
    push %eax
    push %ecx
    test %edx, %edx
    jz 1f
    push %eax
    mov %edx, %eax
    call puthex
    pop %eax
    mov $8, %ecx
    call puthexw
    jmp 2f
1:  call puthex
2:  pop %ecx
    pop %eax
    ret

/*
 * pci_move_bar0: moves BAR 0 of slot EBX, a 64-bit memory BAR, to the 32-bit address EAX,
 * as firmware would: memory decoding off, size the BAR (all ones, read back the mask), write
 * the new address, check it reads back, then memory decoding and bus mastering on. Leaves
 * where it was in pci_bar_old_lo/hi and its size in pci_bar_size. FAILs if the BAR is not a
 * 64-bit memory BAR or does not take the address.
 */
pci_move_bar0:
    push %eax
    push %ecx
    push %edx
    push %esi
    mov %eax, %esi
    mov $PCI_COMMAND, %ecx
    call pci_read16
    and $~PCI_CMD_MEMORY, %eax
    call pci_write16
    mov $PCI_BAR0, %ecx
    call pci_read32
    mov %eax, %edx
    and $PCI_BAR_TYPE_MASK, %edx
    cmp $PCI_BAR_MEM64, %edx
    je 1f
    FAIL_BEGIN
    PRINT "BAR 0 of "
    call pci_print_bdf
    PRINT " is not a 64-bit memory BAR (it reads "
    call puthex
    PRINTLN ")"
    jmp poweroff
1:  and $~0xf, %eax
    mov %eax, pci_bar_old_lo
    mov $PCI_BAR1, %ecx
    call pci_read32
    mov %eax, pci_bar_old_hi
    mov $-1, %eax                   /* size it: the low dword's mask gives sizes below 4 GiB */
    mov $PCI_BAR0, %ecx
    call pci_write32
    call pci_read32
    and $~0xf, %eax
    neg %eax
    mov %eax, pci_bar_size
    mov %esi, %eax                  /* the new place */
    call pci_write32
    xor %eax, %eax
    mov $PCI_BAR1, %ecx
    call pci_write32
    call pci_read32
    test %eax, %eax
    jnz 2f
    mov $PCI_BAR0, %ecx
    call pci_read32
    and $~0xf, %eax
    cmp %esi, %eax
    je 3f
2:  FAIL_BEGIN
    PRINT "BAR 0 of "
    call pci_print_bdf
    PRINT " did not take the address "
    mov %esi, %eax
    call puthex
    call newline
    jmp poweroff
3:  mov $PCI_COMMAND, %ecx
    call pci_read16
    or $(PCI_CMD_MEMORY | PCI_CMD_MASTER), %eax
    call pci_write16
    call pci_read16
    and $(PCI_CMD_MEMORY | PCI_CMD_MASTER), %eax
    cmp $(PCI_CMD_MEMORY | PCI_CMD_MASTER), %eax
    je 4f
    FAIL "the command register did not keep memory decoding and bus mastering on"
4:  pop %esi
    pop %edx
    pop %ecx
    pop %eax
    ret

/*
 * virtio_find_caps: walks the capability list of slot EBX, whose BAR 0 is at ESI, and sets
 * vp_common, vp_notify, vp_isr, vp_device (addresses), vp_notify_multiplier and vp_msix_cap
 * (configuration offset, 0 if none). FAILs if a virtio structure is missing or lies outside
 * BAR 0, or the list is malformed.
 */
virtio_find_caps:
    push %eax
    push %ecx
    push %edx
    push %edi
    xor %eax, %eax
    mov %eax, vp_common
    mov %eax, vp_notify
    mov %eax, vp_isr
    mov %eax, vp_device
    mov %eax, vp_msix_cap
    mov $PCI_STATUS, %ecx
    call pci_read16
    test $PCI_STATUS_CAP_LIST, %eax
    jnz 1f
    FAIL "the virtio device has no capability list (status bit 4 clear)"
1:  mov $PCI_CAP_PTR, %ecx
    call pci_read8
    mov $PCI_MAX_CAPS, %edi
2:  and $0xfc, %eax                 /* EAX = this capability's offset, 0 at the end */
    jz 8f
    dec %edi
    jnz 3f
    FAIL "the capability list does not end (a loop?)"
3:  mov %eax, %ecx
    call pci_read8                  /* the id */
    cmp $PCI_CAP_ID_MSIX, %eax
    jne 4f
    mov %ecx, vp_msix_cap
    jmp 7f
4:  cmp $PCI_CAP_ID_VENDOR, %eax
    jne 7f
    push %ecx
    add $VCAP_BAR, %ecx
    call pci_read8
    pop %ecx
    test %eax, %eax
    jnz 7f                          /* a structure in another BAR: not used here */
    push %ecx
    add $VCAP_OFFSET, %ecx
    call pci_read32
    pop %ecx
    cmp pci_bar_size, %eax
    jb 5f
    FAIL "a virtio capability points beyond BAR 0"
5:  lea (%esi, %eax), %edx          /* EDX = the structure's address */
    push %ecx
    add $VCAP_CFG_TYPE, %ecx
    call pci_read8
    pop %ecx
    cmp $VIRTIO_CAP_COMMON, %eax
    jne 6f
    mov %edx, vp_common
    jmp 7f
6:  cmp $VIRTIO_CAP_ISR, %eax
    jne 61f
    mov %edx, vp_isr
    jmp 7f
61: cmp $VIRTIO_CAP_DEVICE, %eax
    jne 62f
    mov %edx, vp_device
    jmp 7f
62: cmp $VIRTIO_CAP_NOTIFY, %eax
    jne 7f
    mov %edx, vp_notify
    push %ecx
    add $VCAP_NOTIFY_MULTIPLIER, %ecx
    call pci_read32
    pop %ecx
    mov %eax, vp_notify_multiplier
7:  inc %ecx                        /* the next pointer */
    call pci_read8
    jmp 2b
8:  cmpl $0, vp_common
    jne 9f
    FAIL "no virtio common configuration capability"
9:  cmpl $0, vp_notify
    jne 10f
    FAIL "no virtio notification capability"
10: cmpl $0, vp_device
    jne 11f
    FAIL "no virtio device configuration capability"
11: cmpl $0, vp_isr
    jne 12f
    FAIL "no virtio ISR capability"
12: pop %edi
    pop %edx
    pop %ecx
    pop %eax
    ret

/* acpi_checksum: AL = the byte sum of ECX bytes at ESI (0 for a valid table). */
acpi_checksum:
    push %esi
    push %ecx
    xor %eax, %eax
    test %ecx, %ecx
    jz 2f
1:  add (%esi), %al
    inc %esi
    dec %ecx
    jnz 1b
2:  pop %ecx
    pop %esi
    ret

/* acpi_table_ok: whether the table at ESI has a plausible length and a valid checksum: ZF set
 * if so. */
acpi_table_ok:
    push %eax
    push %ecx
    mov ACPI_SDT_LENGTH(%esi), %ecx
    cmp $ACPI_SDT_HEADER, %ecx
    jb 1f
    cmp $ACPI_MAX_TABLE, %ecx
    ja 1f
    call acpi_checksum
    test %al, %al
    jmp 2f
1:  or $1, %ecx                     /* clears ZF */
2:  pop %ecx
    pop %eax
    ret

/*
 * acpi_find_ecam: follows the RSDP at ESI to the XSDT (or, for ACPI 1.0, the RSDT) and its
 * MCFG, checking every signature and checksum, and sets pci_ecam to the ECAM base of segment
 * 0, bus 0. FAILs if any of that is missing or invalid.
 */
acpi_find_ecam:
    push %eax
    push %ebx
    push %ecx
    push %edx
    push %esi
    push %edi
    cmpl $ACPI_RSDP_SIG_LO, (%esi)
    jne 1f
    cmpl $ACPI_RSDP_SIG_HI, 4(%esi)
    jne 1f
    mov $ACPI_RSDP_V1_SIZE, %ecx
    call acpi_checksum
    test %al, %al
    jz 2f
1:  FAIL "no valid RSDP (signature and checksum) where the start info points"
2:  mov $4, %edx                    /* entry size: 4 in the RSDT, 8 in the XSDT */
    mov ACPI_RSDP_RSDT(%esi), %edi
    cmpb $2, ACPI_RSDP_REVISION(%esi)
    jb 3f
    mov ACPI_RSDP_LENGTH(%esi), %ecx
    call acpi_checksum
    test %al, %al
    jz 21f
    FAIL "the RSDP's extended checksum is wrong"
21: cmpl $0, (ACPI_RSDP_XSDT + 4)(%esi)
    je 22f
    FAIL "the XSDT lies above 4 GiB"
22: mov ACPI_RSDP_XSDT(%esi), %edi
    mov $8, %edx
3:  mov %edi, %esi                  /* ESI = the RSDT or XSDT */
    call acpi_table_ok
    jz 4f
    FAIL "the XSDT (or RSDT) has a bad length or checksum"
4:  mov ACPI_SDT_LENGTH(%esi), %ecx
    lea (%esi, %ecx), %ebx          /* EBX = its end */
    lea ACPI_SDT_HEADER(%esi), %edi /* EDI = the entry */
5:  lea (%edi, %edx), %eax
    cmp %ebx, %eax
    jbe 6f
    FAIL "no MCFG table in the XSDT"
6:  cmp $8, %edx
    jne 7f
    cmpl $0, 4(%edi)
    jne 8f                          /* a table above 4 GiB: not MCFG here */
7:  mov (%edi), %esi
    cmpl $ACPI_SIG_MCFG, (%esi)
    je 9f
8:  add %edx, %edi
    jmp 5b
9:  call acpi_table_ok
    jz 10f
    FAIL "the MCFG table has a bad length or checksum"
10: mov %esi, pci_mcfg
    mov ACPI_SDT_LENGTH(%esi), %ecx
    lea (%esi, %ecx), %ebx
    lea ACPI_MCFG_ENTRIES(%esi), %edi
11: lea ACPI_MCFG_ENTRY(%edi), %eax
    cmp %ebx, %eax
    jbe 12f
    FAIL "the MCFG table has no entry for segment 0, bus 0"
12: cmpw $0, 8(%edi)                /* segment 0 */
    jne 13f
    cmpb $0, 10(%edi)               /* from bus 0 */
    je 14f
13: add $ACPI_MCFG_ENTRY, %edi
    jmp 11b
14: cmpl $0, 4(%edi)
    je 15f
    FAIL "the ECAM window lies above 4 GiB"
15: mov (%edi), %eax
    mov %eax, pci_ecam
    pop %edi
    pop %esi
    pop %edx
    pop %ecx
    pop %ebx
    pop %eax
    ret

    .data
    .balign 4
pci_ecam: .long 0
pci_mcfg: .long 0                   /* the MCFG table, once acpi_find_ecam found it */
pci_bar_old_lo: .long 0
pci_bar_old_hi: .long 0
pci_bar_size: .long 0
vp_common: .long 0
vp_notify: .long 0
vp_notify_multiplier: .long 0
vp_isr: .long 0
vp_device: .long 0
vp_msix_cap: .long 0

    .text
