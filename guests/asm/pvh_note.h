/* The Xen ELF note that marks a PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY). */
#define PVH_ENTRY(sym)                  \
    .pushsection .note.Xen, "a", @note; \
    .balign 4;                          \
    .long 4;                            \
    .long 4;                            \
    .long 18;                           \
    .asciz "Xen";                       \
    .balign 4;                          \
    .long sym;                          \
    .balign 4;                          \
    .popsection
