/*
 * Talks FUSE to a virtio-fs device (1af4:105a) whose backend is virtiofsd, as Linux's
 * virtiofs driver does, on request queue 1 (queue 0, the high-priority one, is set up and
 * left idle): FUSE_INIT (protocol 7.31), then LOOKUP of `hello.txt` in the shared directory's
 * root, OPEN, READ (its first bytes are printed), LOOKUP of `guest.txt`, OPEN for writing and
 * WRITE of a line, and prints `PASS virtio_fs` once every answer came back without error.
 * The tag the device reports is printed first.
 */
#define GUEST_NAME "virtio_fs"
#include "guest.h"
#include "pvh.h"
#include "irq.h"
#include "pci.h"
#include "virtio.h"
#include "pvh_note.h"

#define VIRTIO_FS_ID ((0x105a << 16) | VIRTIO_VENDOR)
#define BAR_ADDRESS (PCI_WINDOW + 0x20000)
#define HIPRIO_BASE 0x300000
#define REQUEST_BASE 0x302000
#define QUEUE_SIZE 8
#define REQ 0x310000                /* the request: fuse_in_header, then its body */
#define REPLY 0x320000              /* the answer: fuse_out_header, then its body */
#define REPLY_SIZE 0x1000
#define WAIT_PERIODS 3
#define DESC_F_NEXT 1

#define IN_HEADER 40                /* len, opcode, unique, nodeid, uid, gid, pid, extlen */
#define OUT_HEADER 16               /* len, error, unique */
#define FUSE_LOOKUP 1
#define FUSE_OPEN 14
#define FUSE_READ 15
#define FUSE_WRITE 16
#define FUSE_INIT 26
#define ROOT_ID 1
#define O_RDONLY 0
#define O_WRONLY 1
#define READ_SIZE 64

    VIRTQUEUE hiprioq, 0, QUEUE_SIZE, HIPRIO_BASE
    VIRTQUEUE requestq, 1, QUEUE_SIZE, REQUEST_BASE

    .globl _start
_start:
    GUEST_SETUP
    PVH_START_INFO
    call irq_init
    call virtio_irq_init
    sti
    mov $VIRTIO_FS_ID, %eax
    call virtio_find
    cmp $-1, %ebx
    jne 1f
    FAIL "no virtio-fs device (1af4:105a) on bus 0"
1:  PRINT "virtio-fs: "
    call pci_print_bdf
    call newline
    mov $BAR_ADDRESS, %eax
    mov $VIRTIO_FS_ID, %edx
    call virtio_open
    xor %eax, %eax
    xor %edx, %edx
    call virtio_negotiate
    mov $hiprioq, %esi
    call vq_setup
    mov $requestq, %esi
    call vq_setup
    call virtio_driver_ok
    /* The tag (36 bytes, NUL-padded) and the number of request queues. */
    PRINT "fs: tag "
    mov vp_device, %esi
    mov $36, %ecx
2:  lodsb
    test %al, %al
    jz 3f
    call putc
    dec %ecx
    jnz 2b
3:  PRINT ", request queues "
    mov vp_device, %esi
    mov 36(%esi), %eax
    call putdec
    call newline

    /* FUSE_INIT: major 7, minor 31, no readahead, no flags. */
    mov $64, %ecx
    mov $FUSE_INIT, %eax
    xor %edx, %edx
    call fuse_header
    movl $7, REQ + IN_HEADER
    movl $31, REQ + IN_HEADER + 4
    mov $(OUT_HEADER + 64), %edx
    call fuse_call
    mov REPLY + OUT_HEADER, %eax
    cmp $7, %eax
    je 4f
    FAIL "FUSE_INIT did not answer protocol 7"
4:  PRINT "fuse: init 7."
    mov REPLY + OUT_HEADER + 4, %eax
    call putdec
    call newline

    /* The host's file: looked up, opened, read. */
    mov $name_hello, %esi
    call fuse_lookup
    mov $O_RDONLY, %eax
    call fuse_open
    mov $40, %ecx
    mov $FUSE_READ, %eax
    mov node, %edx
    call fuse_header
    mov fh, %eax
    mov %eax, REQ + IN_HEADER
    mov fh + 4, %eax
    mov %eax, REQ + IN_HEADER + 4
    movl $READ_SIZE, REQ + IN_HEADER + 16
    mov $(OUT_HEADER + READ_SIZE), %edx
    call fuse_call
    PRINT "fuse: read \""
    mov REPLY, %ecx                 /* the answer's length */
    sub $OUT_HEADER, %ecx
    jz 6f
    mov $(REPLY + OUT_HEADER), %esi
5:  lodsb
    cmp $'\n', %al
    je 6f
    call putc
    dec %ecx
    jnz 5b
6:  PRINTLN "\""

    /* The guest's file: looked up, opened for writing, written. */
    mov $name_guest, %esi
    call fuse_lookup
    mov $O_WRONLY, %eax
    call fuse_open
    mov $(40 + line_len), %ecx
    mov $FUSE_WRITE, %eax
    mov node, %edx
    call fuse_header
    mov fh, %eax
    mov %eax, REQ + IN_HEADER
    mov fh + 4, %eax
    mov %eax, REQ + IN_HEADER + 4
    movl $line_len, REQ + IN_HEADER + 16
    mov $line, %esi
    mov $(REQ + IN_HEADER + 40), %edi
    mov $line_len, %ecx
    rep movsb
    mov $(OUT_HEADER + 8), %edx
    call fuse_call
    cmpl $line_len, REPLY + OUT_HEADER
    je 7f
    FAIL "FUSE_WRITE wrote less than asked"
7:  PRINT "fuse: wrote "
    mov REPLY + OUT_HEADER, %eax
    call putdec
    PRINTLN " bytes"
    PASS

/* fuse_header: a request header for opcode EAX on node EDX with ECX bytes of body. */
fuse_header:
    push %edi
    push %ecx
    push %eax
    mov $REQ, %edi
    push %ecx
    mov $(IN_HEADER / 4), %ecx
    xor %eax, %eax
    rep stosl
    pop %ecx
    add $IN_HEADER, %ecx
    mov %ecx, REQ                   /* len */
    pop %eax
    mov %eax, REQ + 4               /* opcode */
    incl unique
    mov unique, %ecx
    mov %ecx, REQ + 8               /* unique */
    mov %edx, REQ + 16              /* nodeid */
    pop %ecx
    /* The body starts zeroed. */
    push %ecx
    mov $(REQ + IN_HEADER), %edi
    add $3, %ecx
    shr $2, %ecx
    xor %eax, %eax
    rep stosl
    pop %ecx
    pop %edi
    ret

/*
 * fuse_call: sends the request at REQ (its length in its header) with a reply buffer of EDX
 * bytes at REPLY, waits for the answer, and FAILs if it carries an error or another unique.
 */
fuse_call:
    push %eax
    push %ebx
    push %ecx
    push %esi
    mov $REPLY, %edi
    mov $(REPLY_SIZE / 4), %ecx
    xor %eax, %eax
    rep stosl
    mov $requestq, %esi
    mov VQ_DESC(%esi), %ebx
    movl $REQ, (%ebx)
    movl $0, 4(%ebx)
    mov REQ, %eax
    mov %eax, 8(%ebx)
    movw $DESC_F_NEXT, 12(%ebx)
    movw $1, 14(%ebx)
    movl $REPLY, 16(%ebx)
    movl $0, 20(%ebx)
    mov %edx, 24(%ebx)
    movw $VRING_DESC_F_WRITE, 28(%ebx)
    movw $0, 30(%ebx)
    xor %ebx, %ebx
    call vq_publish
    call vq_kick
    mov $WAIT_PERIODS, %ecx
    call vq_wait
    jnc 1f
    FAIL "the backend did not answer within the watchdog's time"
1:  call vq_take
    cmpl $0, REPLY + 4
    je 2f
    FAIL_BEGIN
    PRINT "FUSE opcode "
    mov REQ + 4, %eax
    call putdec
    PRINT " failed with error "
    mov REPLY + 4, %eax
    neg %eax
    call putdec
    call newline
    jmp poweroff
2:  mov unique, %eax
    cmp REPLY + 8, %eax
    je 3f
    FAIL "an answer for another request"
3:  pop %esi
    pop %ecx
    pop %ebx
    pop %eax
    ret

/* fuse_lookup: looks up the NUL-terminated name at ESI in the root; sets `node`. */
fuse_lookup:
    push %esi
    mov %esi, %edi
    xor %eax, %eax
    mov $-1, %ecx
    repne scasb
    not %ecx                        /* the name's length with its NUL */
    push %ecx
    mov $FUSE_LOOKUP, %eax
    mov $ROOT_ID, %edx
    call fuse_header
    pop %ecx
    mov (%esp), %esi
    mov $(REQ + IN_HEADER), %edi
    rep movsb
    mov $(OUT_HEADER + 128), %edx
    call fuse_call
    mov REPLY + OUT_HEADER, %eax    /* fuse_entry_out.nodeid */
    mov %eax, node
    PRINT "fuse: "
    mov (%esp), %esi
    call puts
    PRINT " is node "
    call putdec
    PRINT ", "
    mov REPLY + OUT_HEADER + 48, %eax   /* fuse_attr.size */
    call putdec
    PRINTLN " bytes"
    pop %esi
    ret

/* fuse_open: opens `node` with flags EAX; sets `fh`. */
fuse_open:
    push %eax
    mov $8, %ecx
    mov $FUSE_OPEN, %eax
    mov node, %edx
    call fuse_header
    pop %eax
    mov %eax, REQ + IN_HEADER
    mov $(OUT_HEADER + 16), %edx
    call fuse_call
    mov REPLY + OUT_HEADER, %eax
    mov %eax, fh
    mov REPLY + OUT_HEADER + 4, %eax
    mov %eax, fh + 4
    ret

    .data
    .balign 4
unique: .long 0
node: .long 0
fh: .long 0, 0
name_hello: .asciz "hello.txt"
name_guest: .asciz "guest.txt"
line: .ascii "written by the virtio_fs guest\n"
    .set line_len, . - line

PVH_ENTRY(_start)
