/*
 * Drives virtio vsock (1af4:1053): negotiates VIRTIO_F_VERSION_1, sets up the receive,
 * transmit and event queues, reads its context id and prints `vsock: cid N, listening`.
 * Then, as a guest program on port 1234 would:
 *  - accepts the host's connection request to port 1234 (a host client's `CONNECT 1234`),
 *    waits for its data (`ping`) and answers `pong`;
 *  - connects to host port 5000 (the host's socket PATH_5000) from port 4000, sends
 *    `hello host` once the host accepts, and shuts the connection down;
 * and prints `PASS virtio_vsock`. Each packet is one descriptor: the 44-byte header and
 * the payload after it.
 */
#define GUEST_NAME "virtio_vsock"
#include "guest.h"
#include "pvh.h"
#include "irq.h"
#include "pci.h"
#include "virtio.h"
#include "pvh_note.h"

#define VIRTIO_VSOCK_ID ((0x1053 << 16) | VIRTIO_VENDOR)
#define BAR_ADDRESS (PCI_WINDOW + 0x20000)
#define QUEUE_SIZE 8
#define RX_BUFS 4
#define RX_BUF 0x320000             /* RX_BUFS buffers of BUF_LEN bytes */
#define TX_BUF 0x330000
#define EVENT_BUF 0x338000
#define BUF_LEN 256
#define WAIT_PERIODS 6              /* watchdog periods to wait for each packet */
#define HOST_CID 2
#define LISTEN_PORT 1234
#define LOCAL_PORT 4000
#define HOST_PORT 5000
#define BUF_ALLOC 4096

/* The header's fields. */
#define H_SRC_CID 0
#define H_DST_CID 8
#define H_SRC_PORT 16
#define H_DST_PORT 20
#define H_LEN 24
#define H_TYPE 28
#define H_OP 30
#define H_FLAGS 32
#define H_BUF_ALLOC 36
#define H_FWD_CNT 40
#define HDR_LEN 44

#define OP_REQUEST 1
#define OP_RESPONSE 2
#define OP_RST 3
#define OP_SHUTDOWN 4
#define OP_RW 5

    VIRTQUEUE rxq, 0, QUEUE_SIZE, 0x300000
    VIRTQUEUE txq, 1, QUEUE_SIZE, 0x304000
    VIRTQUEUE eventq, 2, QUEUE_SIZE, 0x308000

    .globl _start
_start:
    GUEST_SETUP
    PVH_START_INFO
    call irq_init
    call virtio_irq_init
    sti
    mov $VIRTIO_VSOCK_ID, %eax
    call virtio_find
    cmp $-1, %ebx
    jne 1f
    FAIL "no virtio vsock (1af4:1053) on bus 0"
1:  PRINT "virtio-vsock: "
    call pci_print_bdf
    call newline
    mov $BAR_ADDRESS, %eax
    mov $VIRTIO_VSOCK_ID, %edx
    call virtio_open
    xor %eax, %eax
    xor %edx, %edx
    call virtio_negotiate
    mov $rxq, %esi
    call vq_setup
    mov $txq, %esi
    call vq_setup
    mov $eventq, %esi
    call vq_setup
    /* Receive buffers, and one for events (a transport reset). */
    xor %ebx, %ebx
2:  mov %ebx, %eax
    shl $8, %eax
    add $RX_BUF, %eax
    mov $BUF_LEN, %ecx
    mov $VRING_DESC_F_WRITE, %edx
    mov $rxq, %esi
    call vq_post
    inc %ebx
    cmp $RX_BUFS, %ebx
    jb 2b
    mov $EVENT_BUF, %eax
    mov $8, %ecx
    mov $VRING_DESC_F_WRITE, %edx
    xor %ebx, %ebx
    mov $eventq, %esi
    call vq_post
    call virtio_driver_ok
    mov $rxq, %esi
    call vq_kick
    mov $eventq, %esi
    call vq_kick

    /* Our context id: configuration bytes 0-7 (ids fit in 32 bits). */
    mov vp_device, %edi
    mov (%edi), %eax
    mov %eax, guest_cid
    PRINT "vsock: cid "
    call putdec
    PRINTLN ", listening"

    /* A host client's request to our port: accepted. */
    mov $OP_REQUEST, %eax
    call receive
    cmpl $LISTEN_PORT, H_DST_PORT(%edi)
    je 3f
    FAIL "a connection request for a port nobody listens on"
3:  mov H_SRC_PORT(%edi), %eax
    mov %eax, peer_port
    call repost
    PRINT "vsock: accepted host port "
    mov peer_port, %eax
    call putdec
    call newline
    mov $LISTEN_PORT, %eax
    mov peer_port, %edx
    mov $OP_RESPONSE, %ecx
    xor %ebx, %ebx
    call send

    /* Its data, and our answer. */
    mov $OP_RW, %eax
    call receive
    PRINT "vsock: got \""
    lea HDR_LEN(%edi), %esi
    mov H_LEN(%edi), %ecx
    add %ecx, fwd_cnt
    call putline
    PRINTLN "\""
    cmpl $4, H_LEN(%edi)
    jne 4f
    cmpl $0x676e6970, HDR_LEN(%edi)  /* "ping" */
    je 5f
4:  FAIL "the host's data is not \"ping\""
5:  call repost
    movl $0x676e6f70, TX_BUF + HDR_LEN   /* "pong" */
    mov $LISTEN_PORT, %eax
    mov peer_port, %edx
    mov $OP_RW, %ecx
    mov $4, %ebx
    call send
    PRINTLN "vsock: answered \"pong\""

    /* Out: a connection to host port 5000. */
    movl $0, fwd_cnt
    mov $LOCAL_PORT, %eax
    mov $HOST_PORT, %edx
    mov $OP_REQUEST, %ecx
    xor %ebx, %ebx
    call send
    mov $OP_RESPONSE, %eax
    call receive
    cmpl $HOST_PORT, H_SRC_PORT(%edi)
    jne 6f
    cmpl $LOCAL_PORT, H_DST_PORT(%edi)
    je 7f
6:  FAIL "the response is not for our connection"
7:  call repost
    PRINTLN "vsock: connected to host port 5000"
    mov $hello, %esi
    mov $(TX_BUF + HDR_LEN), %edi
    mov $hello_len, %ecx
    rep movsb
    mov $LOCAL_PORT, %eax
    mov $HOST_PORT, %edx
    mov $OP_RW, %ecx
    mov $hello_len, %ebx
    call send
    /* Done with it: no more sending or receiving. */
    movl $3, shutdown_flags
    mov $LOCAL_PORT, %eax
    mov $HOST_PORT, %edx
    mov $OP_SHUTDOWN, %ecx
    xor %ebx, %ebx
    call send
    PRINTLN "vsock: sent \"hello host\" and shut down"
    PASS

/*
 * receive: waits for a packet of type EAX from the host and returns EDI = its buffer (its
 * descriptor in rx_desc, for repost); control packets of other types (credit updates) are taken
 * and skipped. FAILs on a reset, on a packet from elsewhere, or when none comes in time.
 */
receive:
    mov %eax, want_op
1:  mov $rxq, %esi
    mov $WAIT_PERIODS, %ecx
    call vq_wait
    jnc 2f
    FAIL "no packet from the host within the watchdog's time"
2:  call vq_take
    cmp $RX_BUFS, %ebx
    jb 3f
    FAIL "the device returned a receive buffer that was not posted"
3:  cmp $HDR_LEN, %ecx
    jae 4f
    FAIL "a received packet shorter than its header"
4:  mov %ebx, rx_desc
    mov %ebx, %edi
    shl $8, %edi
    add $RX_BUF, %edi
    cmpl $HOST_CID, H_SRC_CID(%edi)
    jne 5f
    mov guest_cid, %eax
    cmp H_DST_CID(%edi), %eax
    je 6f
5:  FAIL "a packet that is not from the host to us"
6:  movzwl H_OP(%edi), %eax
    cmp want_op, %eax
    je 8f
    cmp $OP_RST, %eax
    jne 7f
    FAIL "the host reset the connection"
7:  call repost
    jmp 1b
8:  ret

/* repost: gives the last receive buffer (rx_desc) back to the device. */
repost:
    push %edi
    push %ebx
    mov rx_desc, %ebx
    mov %ebx, %eax
    shl $8, %eax
    add $RX_BUF, %eax
    mov $BUF_LEN, %ecx
    mov $VRING_DESC_F_WRITE, %edx
    mov $rxq, %esi
    call vq_post
    call vq_kick
    pop %ebx
    pop %edi
    ret

/*
 * send: sends a packet of type ECX from our port EAX to host port EDX with EBX bytes of
 * payload (already at TX_BUF + HDR_LEN), and waits for the device to take it.
 */
send:
    mov $TX_BUF, %edi
    mov guest_cid, %esi
    mov %esi, H_SRC_CID(%edi)
    movl $0, H_SRC_CID + 4(%edi)
    movl $HOST_CID, H_DST_CID(%edi)
    movl $0, H_DST_CID + 4(%edi)
    mov %eax, H_SRC_PORT(%edi)
    mov %edx, H_DST_PORT(%edi)
    mov %ebx, H_LEN(%edi)
    movw $1, H_TYPE(%edi)
    mov %cx, H_OP(%edi)
    movl $0, H_FLAGS(%edi)
    cmp $OP_SHUTDOWN, %ecx
    jne 1f
    mov shutdown_flags, %eax
    mov %eax, H_FLAGS(%edi)
1:  movl $BUF_ALLOC, H_BUF_ALLOC(%edi)
    mov fwd_cnt, %eax
    mov %eax, H_FWD_CNT(%edi)
    mov $TX_BUF, %eax
    lea HDR_LEN(%ebx), %ecx
    xor %edx, %edx
    xor %ebx, %ebx
    mov $txq, %esi
    call vq_post
    call vq_kick
    mov $WAIT_PERIODS, %ecx
    call vq_wait
    jnc 2f
    FAIL "the device did not take a packet within the watchdog's time"
2:  call vq_take
    ret

    .data
hello:
    .ascii "hello host"
    .set hello_len, . - hello
    .balign 4
guest_cid: .long 0
peer_port: .long 0
want_op: .long 0
rx_desc: .long 0
fwd_cnt: .long 0
shutdown_flags: .long 0

PVH_ENTRY(_start)
