/*
 * Drives a virtio network device (1af4:1041) far enough to talk to the host: reads
 * `host=A.B.C.D me=E.F.G.H` from the command line, moves the device's BAR below 4 GiB,
 * negotiates VIRTIO_F_VERSION_1, VIRTIO_NET_F_MAC and VIRTIO_NET_F_STATUS, prints the MAC
 * address from the configuration space (`mac: xx:xx:xx:xx:xx:xx`) and the link status, sets
 * up the receive queue (0) and the transmit queue (1) with MSI-X interrupts, posts receive
 * buffers, and broadcasts an ARP request (who-has host, tell me, from its MAC). It waits
 * (hlt, under the watchdog; the request is repeated once a period, three times at most) for
 * the host's ARP reply addressed to its MAC, skipping any other frame the host sends (IPv6
 * router solicitations and the like) and giving its buffer back, then prints
 * `arp: <host> is at <mac>` and PASS.
 *
 * Every received buffer must carry `num_buffers` = 1 in its virtio-net header (a frame in one
 * buffer, as without VIRTIO_NET_F_MRG_RXBUF).
 *
 * `arp=once` on the command line: the request is sent once, and the guest waits one watchdog
 * period for the reply (for a test that expects none).
 *
 * `wait=hotplug` on the command line: no device is looked for at boot. The guest prints
 * `virtio_net: waiting for a hot-plugged device`, sleeps until the ACPI generic event device
 * announces a slot added, then does the same with the device in that slot.
 */
#define GUEST_NAME "virtio_net"
#include "guest.h"
#include "pvh.h"
#include "irq.h"
#include "pci.h"
#include "virtio.h"
#include "ged.h"
#include "pvh_note.h"

#define BAR_ADDRESS (PCI_WINDOW + 0x10000)
#define NET_F_MAC (1 << 5)
#define NET_F_STATUS (1 << 16)
#define NET_S_LINK_UP 1
/* Device configuration (struct virtio_net_config). */
#define NET_CONFIG_MAC 0
#define NET_CONFIG_STATUS 6
#define QUEUE_SIZE 8
#define RXQ_BASE 0x300000
#define TXQ_BASE 0x302000
#define RX_BUFS 8
#define RX_BUF_SIZE 2048            /* room for a 1514-byte frame and its header */
#define RX_BUF 0x310000             /* RX_BUFS buffers of RX_BUF_SIZE bytes */
#define TX_BUF 0x318000
/* struct virtio_net_hdr_v1: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
 * num_buffers. */
#define NET_HDR_SIZE 12
#define NET_HDR_NUM_BUFFERS 10
/* Ethernet and ARP (for IPv4 over Ethernet). */
#define ETH_DST 0
#define ETH_SRC 6
#define ETH_TYPE 12
#define ETH_HEADER 14
#define ETH_MIN_FRAME 60            /* without the frame check sequence */
#define ETH_TYPE_ARP_LE 0x0608      /* 0x0806 as it lies in memory, read little-endian */
#define ARP_HTYPE 14
#define ARP_PTYPE 16
#define ARP_HLEN 18
#define ARP_PLEN 19
#define ARP_OPER 20
#define ARP_SHA 22
#define ARP_SPA 28
#define ARP_THA 32
#define ARP_TPA 38
#define ARP_FRAME_END 42
#define ARP_REQUEST_LE 0x0100       /* operation 1, big-endian, read little-endian */
#define ARP_REPLY_LE 0x0200
/* Watchdog periods (each at least 10 s): to wait for a transmit, the ARP requests sent
 * (one a period) and the wait for a hot-plugged device. */
#define TX_PERIODS 2
#define ARP_TRIES 3
#define HOTPLUG_PERIODS 6

    VIRTQUEUE receiveq, 0, QUEUE_SIZE, RXQ_BASE
    VIRTQUEUE transmitq, 1, QUEUE_SIZE, TXQ_BASE

    .globl _start
_start:
    GUEST_SETUP
    PVH_START_INFO
    mov SI_CMDLINE(%ebp), %esi
    test %esi, %esi
    jnz 2f
    FAIL "no command line: give host=A.B.C.D me=E.F.G.H"
2:  mov $word_hotplug, %edi
    call has_word
    mov %eax, wait_hotplug
    mov $word_once, %edi
    call has_word
    mov %eax, arp_once
    mov $key_host, %edi
    call cmdline_ipv4
    mov %eax, host_ip
    mov $key_me, %edi
    call cmdline_ipv4
    mov %eax, my_ip

    call irq_init
    call virtio_irq_init
    cmpl $0, wait_hotplug
    je 3f
    call ged_setup
3:  sti

    cmpl $0, wait_hotplug
    je 4f
    PRINTLN "virtio_net: waiting for a hot-plugged device"
    mov $HOTPLUG_PERIODS, %ecx
    call ged_wait_added                /* EBX = the slot */
    jmp 5f
4:  mov $VIRTIO_NET_ID, %eax
    call virtio_find
    cmp $-1, %ebx
    jne 5f
    FAIL "no virtio network device (1af4:1041) on bus 0"
5:  PRINT "virtio-net: "
    call pci_print_bdf
    call newline
    mov $BAR_ADDRESS, %eax
    mov $VIRTIO_NET_ID, %edx
    call virtio_open
    mov $(NET_F_MAC | NET_F_STATUS), %eax
    xor %edx, %edx
    call virtio_negotiate
    mov %eax, features
    test $NET_F_MAC, %eax
    jnz 6f
    FAIL "the device does not offer VIRTIO_NET_F_MAC"

    /* The MAC address and the link status. */
6:  mov vp_device, %esi
    mov $my_mac, %edi
    mov $6, %ecx
    rep movsb
    PRINT "mac: "
    mov $my_mac, %esi
    call put_mac
    call newline
    testl $NET_F_STATUS, features
    jz 7f
    mov vp_device, %esi
    movzwl NET_CONFIG_STATUS(%esi), %eax
    PRINT "link: "
    test $NET_S_LINK_UP, %eax
    jz 61f
    PRINTLN "up"
    jmp 7f
61: PRINTLN "down"
    FAIL "the device reports its link down"

7:  mov $receiveq, %esi
    call vq_setup
    mov $transmitq, %esi
    call vq_setup
    call virtio_driver_ok

    /* Every receive buffer to the device, its header filled with a pattern the device must
     * overwrite. */
    mov $receiveq, %esi
    xor %ebx, %ebx
8:  call post_rx
    inc %ebx
    cmp $RX_BUFS, %ebx
    jb 8b
    call vq_kick

    call build_arp_request
    movl $ARP_TRIES, arp_tries
    cmpl $0, arp_once
    je send
    movl $1, arp_tries
send:
    call send_arp_request
    call watchdog_arm               /* one period for the reply, whatever else arrives */
wait:
    mov $receiveq, %esi
    call vq_sleep
    jnc got
    decl arp_tries
    jz 1f
    PRINTLN "arp: no reply yet, asking again"
    jmp send
1:  FAIL "no ARP reply from the host within the watchdog's time"
got:
    call vq_take                    /* EBX = the buffer, ECX = header and frame bytes */
    cmp $RX_BUFS, %ebx
    jb 1f
    FAIL "the device returned a receive buffer that was not posted"
1:  cmp $RX_BUF_SIZE, %ecx
    jbe 2f
    FAIL "the device wrote more into a receive buffer than it holds"
2:  cmp $(NET_HDR_SIZE + ETH_HEADER), %ecx
    jae 3f
    FAIL_BEGIN
    PRINT "a received buffer holds only "
    mov %ecx, %eax
    call putdec
    PRINTLN " bytes, less than a header and an Ethernet header"
    jmp poweroff
3:  mov %ebx, %eax
    imul $RX_BUF_SIZE, %eax
    lea RX_BUF(%eax), %esi          /* ESI = the header */
    cmpw $1, NET_HDR_NUM_BUFFERS(%esi)
    je 4f
    FAIL_BEGIN
    PRINT "num_buffers is "
    movzwl NET_HDR_NUM_BUFFERS(%esi), %eax
    call puthex
    PRINTLN " in a received header, not 1"
    jmp poweroff
4:  incl frames_received
    add $NET_HDR_SIZE, %esi         /* ESI = the frame */
    sub $NET_HDR_SIZE, %ecx
    call is_arp_reply
    jz matched
    incl frames_ignored             /* not for us: the buffer goes back */
    push %esi
    mov $receiveq, %esi
    call post_rx
    call vq_kick
    pop %esi
    jmp wait

matched:
    call watchdog_disarm
    PRINT "arp: "
    mov host_ip, %eax
    call put_ipv4
    PRINT " is at "
    add $ARP_SHA, %esi
    call put_mac
    call newline
    PRINT "frames: received "
    mov frames_received, %eax
    call putdec
    PRINT ", ignored "
    mov frames_ignored, %eax
    call putdec
    PRINT ", sent "
    mov frames_sent, %eax
    call putdec
    call newline
    PRINT "interrupts: "
    mov virtio_irqs, %eax
    call putdec
    call newline
    test %eax, %eax
    jnz 5f
    FAIL "no MSI-X interrupt arrived"
5:  call virtio_reset
    PASS

/* post_rx: gives receive buffer EBX to the device (queue at ESI; no kick), its header
 * filled with 0xa5. */
post_rx:
    push %eax
    push %ecx
    push %edx
    push %edi
    mov %ebx, %eax
    imul $RX_BUF_SIZE, %eax
    add $RX_BUF, %eax
    push %eax
    mov %eax, %edi
    mov $NET_HDR_SIZE, %ecx
    mov $0xa5, %al
    rep stosb
    pop %eax
    mov $RX_BUF_SIZE, %ecx
    mov $VRING_DESC_F_WRITE, %edx
    call vq_post
    pop %edi
    pop %edx
    pop %ecx
    pop %eax
    ret

/* build_arp_request: the header (all zero) and the request frame at TX_BUF. */
build_arp_request:
    mov $TX_BUF, %edi
    mov $(NET_HDR_SIZE + ETH_MIN_FRAME), %ecx
    xor %eax, %eax
    rep stosb
    mov $(TX_BUF + NET_HDR_SIZE), %edi
    movl $0xffffffff, ETH_DST(%edi)
    movw $0xffff, (ETH_DST + 4)(%edi)
    mov $my_mac, %esi
    push %edi
    lea ETH_SRC(%edi), %edi
    mov $6, %ecx
    rep movsb
    pop %edi
    movw $ETH_TYPE_ARP_LE, ETH_TYPE(%edi)
    movw $0x0100, ARP_HTYPE(%edi)   /* Ethernet (1) */
    movw $0x0008, ARP_PTYPE(%edi)   /* IPv4 (0x0800) */
    movb $6, ARP_HLEN(%edi)
    movb $4, ARP_PLEN(%edi)
    movw $ARP_REQUEST_LE, ARP_OPER(%edi)
    mov $my_mac, %esi
    push %edi
    lea ARP_SHA(%edi), %edi
    mov $6, %ecx
    rep movsb
    pop %edi
    mov my_ip, %eax
    mov %eax, ARP_SPA(%edi)
    mov host_ip, %eax
    mov %eax, ARP_TPA(%edi)
    ret

/* send_arp_request: transmits the frame at TX_BUF (descriptor 0) and waits until the device
 * has taken it. */
send_arp_request:
    PRINT "arp: who-has "
    mov host_ip, %eax
    call put_ipv4
    PRINT " tell "
    mov my_ip, %eax
    call put_ipv4
    call newline
    mov $transmitq, %esi
    mov $TX_BUF, %eax
    mov $(NET_HDR_SIZE + ETH_MIN_FRAME), %ecx
    xor %edx, %edx
    xor %ebx, %ebx
    call vq_post
    call vq_kick
    mov $TX_PERIODS, %ecx
    call vq_wait
    jnc 1f
    FAIL "the transmit queue did not return the ARP request within the watchdog's time"
1:  call vq_take
    test %ebx, %ebx
    jz 2f
    FAIL "the device returned a transmit buffer that was not posted"
2:  incl frames_sent
    ret

/* is_arp_reply: ZF set if the frame of ECX bytes at ESI is the host's ARP reply to this
 * guest: to its MAC, an ARP reply from host_ip to my_ip for my_mac. */
is_arp_reply:
    push %ecx
    push %esi
    push %edi
    cmp $ARP_FRAME_END, %ecx
    jb 1f
    cmpw $ETH_TYPE_ARP_LE, ETH_TYPE(%esi)
    jne 2f
    cmpw $ARP_REPLY_LE, ARP_OPER(%esi)
    jne 2f
    mov host_ip, %ecx
    cmp ARP_SPA(%esi), %ecx
    jne 2f
    mov my_ip, %ecx
    cmp ARP_TPA(%esi), %ecx
    jne 2f
    push %esi
    lea ARP_THA(%esi), %esi
    mov $my_mac, %edi
    mov $6, %ecx
    repe cmpsb
    pop %esi
    jne 2f
    lea ETH_DST(%esi), %esi
    mov $my_mac, %edi
    mov $6, %ecx
    repe cmpsb
    jmp 2f
1:  or $1, %ecx                     /* clears ZF */
2:  pop %edi
    pop %esi
    pop %ecx
    ret

/*
 * cmdline_ipv4: the IPv4 address after the key at EDI (e.g. "host=") on the command line at
 * ESI, as it lies in a packet (first number in the low byte) in EAX. FAILs, naming the key,
 * if it is missing or not an address.
 */
cmdline_ipv4:
    push %esi
    call cmdline_value
    jc 1f
    call parse_ipv4
    jc 2f
    pop %esi
    ret
1:  FAIL_BEGIN
    PRINT "no "
    jmp 3f
2:  FAIL_BEGIN
    PRINT "no IPv4 address after "
3:  mov %edi, %esi
    call puts
    PRINTLN " on the command line (give host=A.B.C.D me=E.F.G.H)"
    jmp poweroff

/* cmdline_value: ESI = the value of the first token of the NUL-terminated command line at ESI
 * that starts with the NUL-terminated key at EDI (the text after the key). CF set if none. */
cmdline_value:
    push %eax
    push %ebx
    push %edx
0:  mov (%esi), %al             /* skip spaces before a token */
    test %al, %al
    jz 5f
    cmp $' ', %al
    jne 1f
    inc %esi
    jmp 0b
1:  mov %esi, %edx              /* compare the token's start with the key */
    mov %edi, %ebx
2:  mov (%ebx), %ah
    test %ah, %ah
    jz 4f
    cmp (%edx), %ah
    jne 3f
    inc %edx
    inc %ebx
    jmp 2b
3:  mov (%esi), %al             /* no match: skip the rest of the token */
    test %al, %al
    jz 5f
    cmp $' ', %al
    je 0b
    inc %esi
    jmp 3b
4:  mov %edx, %esi
    pop %edx
    pop %ebx
    pop %eax
    clc
    ret
5:  pop %edx
    pop %ebx
    pop %eax
    stc
    ret

/* parse_ipv4: EAX = the dotted-quad address at ESI (first number in the low byte), which must
 * end with the token (a space or NUL). CF set if it is not an address. */
parse_ipv4:
    push %ebx
    push %ecx
    push %edx
    push %esi
    push %edi
    xor %ebx, %ebx                  /* the address */
    xor %ecx, %ecx                  /* which number */
1:  xor %edx, %edx                  /* its value */
    xor %edi, %edi                  /* its digits */
2:  movzbl (%esi), %eax
    sub $'0', %eax
    cmp $9, %eax
    ja 3f
    imul $10, %edx
    add %eax, %edx
    cmp $255, %edx
    ja 6f
    inc %edi
    inc %esi
    jmp 2b
3:  test %edi, %edi
    jz 6f
    push %ecx
    shl $3, %ecx
    shl %cl, %edx
    pop %ecx
    or %edx, %ebx
    inc %ecx
    movzbl (%esi), %eax
    cmp $4, %ecx
    je 4f
    cmp $'.', %al
    jne 6f
    inc %esi
    jmp 1b
4:  test %al, %al
    jz 5f
    cmp $' ', %al
    jne 6f
5:  mov %ebx, %eax
    pop %edi
    pop %esi
    pop %edx
    pop %ecx
    pop %ebx
    clc
    ret
6:  pop %edi
    pop %esi
    pop %edx
    pop %ecx
    pop %ebx
    stc
    ret

/* put_ipv4: prints the address in EAX (first number in the low byte) as A.B.C.D. */
put_ipv4:
    push %eax
    push %ecx
    push %edx
    mov %eax, %edx
    mov $4, %ecx
1:  movzbl %dl, %eax
    call putdec
    shr $8, %edx
    dec %ecx
    jz 2f
    mov $'.', %al
    call putc
    jmp 1b
2:  pop %edx
    pop %ecx
    pop %eax
    ret

/* put_mac: prints the 6 bytes at ESI as xx:xx:xx:xx:xx:xx. */
put_mac:
    push %eax
    push %ecx
    push %esi
    mov $6, %ecx
1:  lodsb
    call puthex8
    dec %ecx
    jz 2f
    mov $':', %al
    call putc
    jmp 1b
2:  pop %esi
    pop %ecx
    pop %eax
    ret

    .section .rodata
word_hotplug: .asciz "wait=hotplug"
word_once: .asciz "arp=once"
key_host: .asciz "host="
key_me: .asciz "me="

    .data
    .balign 4
wait_hotplug: .long 0
arp_once: .long 0
host_ip: .long 0
my_ip: .long 0
features: .long 0
arp_tries: .long 0
frames_received: .long 0
frames_ignored: .long 0
frames_sent: .long 0
my_mac: .skip 8

PVH_ENTRY(_start)
