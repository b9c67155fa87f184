/* Offsets in the PVH hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h). */
#define PVH_MAGIC 0x336ec578
#define SI_MAGIC 0
#define SI_VERSION 4
#define SI_NR_MODULES 12
#define SI_MODLIST 16
#define SI_CMDLINE 24
#define SI_RSDP 32                  /* rsdp_paddr (u64), version 1 and later */
#define SI_MEMMAP 40
#define SI_MEMMAP_ENTRIES 48
/* hvm_modlist_entry: paddr, size (both u64), 32 bytes an entry. */
#define MOD_PADDR 0
#define MOD_SIZE 8
/* hvm_memmap_table_entry: addr, size (u64), type (u32), 24 bytes an entry. */
#define MEMMAP_ENTRY_SIZE 24
/* More entries than any sane map has: guards the loops against garbage. */
#define MAX_MAP_ENTRIES 128

/* Takes the start info PVH entry leaves in EBX into EBP and checks its magic. Include after
 * guest.h (FAIL). */
.macro PVH_START_INFO
    mov %ebx, %ebp
    cmpl $PVH_MAGIC, SI_MAGIC(%ebp)
    je 98f
    FAIL "bad hvm_start_info magic (EBX does not point at the start info)"
98:
.endm
