/* ld: bzimage.ld; image: bzimage */
/* A bzImage (boot protocol 2.15 setup header, then code loaded at 1 MiB) entered through the
 * Linux 64-bit boot protocol at load address + 0x200: checks that boot_params carries the
 * image's own setup header, then reports like linux64. */
#define GUEST_NAME "bzimage"
#define GUEST_BITS 64
#include "guest.h"
#include "linux.h"

#define SETUP_SECTS 1               /* the file's setup is (1 + 1) * 512 bytes */
#define LOAD_ADDRESS 0x100000       /* code32_start */
#define VERSION 0x020f
#define LOADED_HIGH 0x01
#define XLF_KERNEL_64 0x0001

    .section .setup, "a"
    .code16
setup:
    .org BP_SETUP_SECTS
header:
    .byte SETUP_SECTS
    .word 0                         /* root_flags */
    .long _syssize
    .word 0                         /* ram_size */
    .word 0xffff                    /* vid_mode: normal */
    .word 0                         /* root_dev */
    .word BOOT_FLAG
    .byte 0xeb, 0x26c - 0x202      /* jmp setup_code, the real-mode entry */
    .ascii "HdrS"
    .word VERSION
    .long 0                         /* realmode_swtch */
    .word 0                         /* start_sys_seg */
    .word 0                         /* kernel_version */
    .byte 0                         /* type_of_loader: the loader's */
    .byte LOADED_HIGH               /* loadflags */
    .word 0                         /* setup_move_size */
    .long LOAD_ADDRESS              /* code32_start */
    .long 0                         /* ramdisk_image */
    .long 0                         /* ramdisk_size */
    .long 0                         /* bootsect_kludge */
    .word 0                         /* heap_end_ptr */
    .byte 0, 0                      /* ext_loader_ver, ext_loader_type */
    .long 0                         /* cmd_line_ptr */
    .long 0x7fffffff                /* initrd_addr_max */
    .long 0x200000                  /* kernel_alignment */
    .byte 0                         /* relocatable_kernel: no */
    .byte 0                         /* min_alignment */
    .word XLF_KERNEL_64             /* xloadflags */
    .long 4095                      /* cmdline_size: the longest command line read */
    .long 0                         /* hardware_subarch */
    .quad 0                         /* hardware_subarch_data */
    .long 0, 0                      /* payload_offset, payload_length */
    .quad 0                         /* setup_data */
    .quad LOAD_ADDRESS              /* pref_address */
    .long _init_size
    .long 0                         /* handover_offset */
    .long 0                         /* kernel_info_offset */
    .ifne . - header - (0x26c - BP_SETUP_SECTS)
    .error "the setup header does not end at 0x26c"
    .endif
setup_code:                         /* 16-bit entry: not supported, so stop here */
    cli
    hlt
    jmp setup_code
    .org (SETUP_SECTS + 1) * 512

    .section .text.head, "ax"
    /* 32-bit entry at code32_start: not supported; say so rather than crash. */
    .code32
startup_32:
    mov $entered_32, %esi
    mov $COM1, %dx
1:  lodsb
    test %al, %al
    jz 2f
    out %al, %dx
    jmp 1b
2:  mov $ACPI_SLEEP, %dx
    mov $ACPI_S5, %al
    out %al, %dx
3:  cli
    hlt
    jmp 3b

    /* 64-bit entry, where the 64-bit boot protocol enters a bzImage. */
    .code64
    .org 0x200
    .globl startup_64
startup_64:
    GUEST_SETUP
    cmpw $VERSION, BP_VERSION(%rsi)
    jne 1f
    cmpl $LOAD_ADDRESS, BP_CODE32_START(%rsi)
    jne 1f
    testw $XLF_KERNEL_64, BP_XLOADFLAGS(%rsi)
    jz 1f
    call linux_report
    PASS
1:  FAIL "boot_params does not carry the image's setup header (version, code32_start, xloadflags)"

    .section .rodata
entered_32:
    .ascii "FAIL "
    .ascii GUEST_NAME
    .asciz ": entered through the 32-bit entry point, not the 64-bit one\n"
