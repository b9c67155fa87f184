/*
 * The Linux 64-bit boot protocol as the linux64 and bzimage guests check it
 * (Documentation/arch/x86/boot.rst and zero-page.rst): offsets into boot_params, and the
 * report both guests print. Include after guest.h, in 64-bit code.
 */
#define BP_E820_ENTRIES 0x1e8       /* u8 */
#define BP_SETUP_SECTS 0x1f1        /* u8 */
#define BP_BOOT_FLAG 0x1fe          /* u16, 0xaa55 */
#define BP_HEADER 0x202             /* u32, "HdrS" */
#define BP_VERSION 0x206            /* u16 */
#define BP_TYPE_OF_LOADER 0x210     /* u8 */
#define BP_LOADFLAGS 0x211          /* u8 */
#define BP_CODE32_START 0x214       /* u32 */
#define BP_RAMDISK_IMAGE 0x218      /* u32 */
#define BP_RAMDISK_SIZE 0x21c       /* u32 */
#define BP_CMD_LINE_PTR 0x228       /* u32 */
#define BP_XLOADFLAGS 0x236         /* u16 */
#define BP_CMDLINE_SIZE 0x238       /* u32 */
#define BP_E820_TABLE 0x2d0         /* 20-byte entries */
#define E820_ENTRY_SIZE 20
#define E820_MAX_ENTRIES 128        /* slots in boot_params */
#define BOOT_FLAG 0xaa55
#define HDRS 0x53726448

/* linux_report: checks boot_params at RSI and prints the command line, the e820 map and the
 * initrd's first line; FAILs (and powers off) on a bad header or map. Clobbers RAX-RDI, RBP. */
linux_report:
    mov %rsi, %rbp
    cmpw $BOOT_FLAG, BP_BOOT_FLAG(%rbp)
    je 1f
    FAIL "boot_params has no boot_flag 0xaa55"
1:  cmpl $HDRS, BP_HEADER(%rbp)
    je 2f
    FAIL "boot_params has no HdrS signature"
2:  cmpb $0, BP_TYPE_OF_LOADER(%rbp)
    jne 3f
    FAIL "type_of_loader is not set"

3:  PRINT "cmdline: "
    mov BP_CMD_LINE_PTR(%rbp), %esi
    test %esi, %esi
    jz 4f
    call puts
4:  call newline

    movzbl BP_E820_ENTRIES(%rbp), %ecx
    test %ecx, %ecx
    jnz 5f
    FAIL "the e820 map is empty"
5:  cmp $E820_MAX_ENTRIES, %ecx
    jbe 6f
    FAIL "more e820 entries than boot_params holds"
6:  lea BP_E820_TABLE(%rbp), %rsi
    mov $E820_ENTRY_SIZE, %edx
    call ram_kib
    test %eax, %eax
    jnz 7f
    FAIL "the e820 map has no RAM"
7:  PRINT "e820: "
    xchg %eax, %ecx
    call putdec
    PRINT " entries, "
    mov %ecx, %eax
    call putdec
    PRINTLN " KiB RAM"

    mov BP_RAMDISK_SIZE(%rbp), %eax
    test %eax, %eax
    jz 9f
    mov BP_RAMDISK_IMAGE(%rbp), %esi
    test %esi, %esi
    jnz 8f
    FAIL "ramdisk_size is set but ramdisk_image is 0"
8:  PRINT "initrd: "
    call putdec
    PRINT " bytes: "
    mov $40, %ecx
    cmp %ecx, %eax
    jae 10f
    mov %eax, %ecx
10: call putline
    call newline
9:  ret
