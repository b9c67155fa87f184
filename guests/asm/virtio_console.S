/*
 * Drives the virtio console (1af4:1043): moves its BAR below 4 GiB, negotiates
 * VIRTIO_F_VERSION_1, sets up receiveq0 (queue 0, host to guest) and transmitq0 (queue 1)
 * with MSI-X interrupts, posts receive buffers, then writes `hello from the virtio console`
 * and a newline through transmitq0. It then echoes, through transmitq0, every byte that
 * arrives on receiveq0 until it receives `q` (not echoed), and writes a newline and
 * `PASS virtio_console` and a newline through the console; the serial port gets its own
 * `PASS virtio_console` line.
 *
 * `expect=noinput` on the command line (a console whose input cannot reach the guest, such
 * as `file=`): only the hello line and the PASS line are written, nothing is waited for.
 *
 * The serial port gets the progress (`console: ...` lines), and any failure.
 */
#define GUEST_NAME "virtio_console"
#include "guest.h"
#include "pvh.h"
#include "irq.h"
#include "pci.h"
#include "virtio.h"
#include "pvh_note.h"

#define BAR_ADDRESS (PCI_WINDOW + 0x30000)
#define QUEUE_SIZE 8
#define RXQ_BASE 0x300000
#define TXQ_BASE 0x302000
#define RX_BUFS 4
#define RX_BUF_SIZE 64
#define RX_BUF 0x310000             /* RX_BUFS buffers of RX_BUF_SIZE bytes */
#define TX_BUF 0x311000
#define TX_BUF_SIZE 256
/* Watchdog periods (each at least 10 s) to wait for a transmit to complete, and for input:
 * generous, a test types as soon as it has read the hello line. */
#define TX_PERIODS 2
#define INPUT_PERIODS 6
/* Device configuration (struct virtio_console_config). */
#define CONSOLE_COLS 0
#define CONSOLE_ROWS 2
#define CONSOLE_MAX_NR_PORTS 4

    VIRTQUEUE receiveq, 0, QUEUE_SIZE, RXQ_BASE
    VIRTQUEUE transmitq, 1, QUEUE_SIZE, TXQ_BASE

    .globl _start
_start:
    GUEST_SETUP
    PVH_START_INFO
    mov SI_CMDLINE(%ebp), %esi
    test %esi, %esi
    jz 2f
    mov $word_noinput, %edi
    call has_word
    mov %eax, no_input
2:  call irq_init
    call virtio_irq_init
    sti

    mov $VIRTIO_CONSOLE_ID, %eax
    call virtio_find
    cmp $-1, %ebx
    jne 3f
    FAIL "no virtio console (1af4:1043) on bus 0 (was it turned off with --console off?)"
3:  PRINT "virtio-console: "
    call pci_print_bdf
    call newline
    mov $BAR_ADDRESS, %eax
    mov $VIRTIO_CONSOLE_ID, %edx
    call virtio_open
    xor %eax, %eax
    xor %edx, %edx
    call virtio_negotiate
    mov vp_device, %edi
    PRINT "console: cols "
    movzwl CONSOLE_COLS(%edi), %eax
    call putdec
    PRINT " rows "
    movzwl CONSOLE_ROWS(%edi), %eax
    call putdec
    PRINT " max_nr_ports "
    mov CONSOLE_MAX_NR_PORTS(%edi), %eax
    call putdec
    call newline
    mov $receiveq, %esi
    call vq_setup
    mov $transmitq, %esi
    call vq_setup
    call virtio_driver_ok

    /* Every receive buffer to the device. */
    mov $receiveq, %esi
    xor %ebx, %ebx
4:  call post_rx
    inc %ebx
    cmp $RX_BUFS, %ebx
    jb 4b
    call vq_kick

    mov $hello, %esi
    mov $(hello_end - hello), %ecx
    call console_write
    PRINTLN "console: hello written"
    cmpl $0, no_input
    jne done

    /* Echo until `q`. */
echo:
    mov $receiveq, %esi
    mov $INPUT_PERIODS, %ecx
    call vq_wait
    jnc 1f
    FAIL "no input on the console's receive queue for a minute (end the input with q)"
1:  call vq_take
    cmp $RX_BUFS, %ebx
    jb 2f
    FAIL "the device returned a receive buffer that was not posted"
2:  cmp $RX_BUF_SIZE, %ecx
    jbe 3f
    FAIL "the device wrote more into a receive buffer than it holds"
3:  mov %ebx, %eax                  /* ESI = the bytes received; look for q */
    imul $RX_BUF_SIZE, %eax
    lea RX_BUF(%eax), %esi
    xor %edx, %edx
4:  cmp %ecx, %edx
    je 5f
    cmpb $'q', (%esi, %edx)
    je 5f
    inc %edx
    jmp 4b
5:  add %ecx, received
    push %ecx
    mov %edx, %ecx                  /* echo what came before any q */
    add %ecx, echoed
    call console_write
    pop %ecx
    cmp %ecx, %edx
    jne 6f                          /* a q: done */
    mov $receiveq, %esi             /* the buffer goes back to the device */
    call post_rx
    call vq_kick
    jmp echo
6:  PRINT "console: received "
    mov received, %eax
    call putdec
    PRINT " bytes, echoed "
    mov echoed, %eax
    call putdec
    call newline
    mov $newline_str, %esi
    mov $1, %ecx
    call console_write

done:
    mov $pass_line, %esi
    mov $(pass_line_end - pass_line), %ecx
    call console_write
    PRINT "interrupts: "
    mov virtio_irqs, %eax
    call putdec
    call newline
    test %eax, %eax
    jnz 1f
    FAIL "no MSI-X interrupt arrived"
1:  call virtio_reset
    PASS

/* post_rx: gives receive buffer EBX to the device (queue at ESI; no kick). */
post_rx:
    push %eax
    push %ecx
    push %edx
    mov %ebx, %eax
    imul $RX_BUF_SIZE, %eax
    add $RX_BUF, %eax
    mov $RX_BUF_SIZE, %ecx
    mov $VRING_DESC_F_WRITE, %edx
    call vq_post
    pop %edx
    pop %ecx
    pop %eax
    ret

/* console_write: writes the ECX bytes at ESI through transmitq0, TX_BUF_SIZE at a time, each
 * piece waited for. */
console_write:
    push %eax
    push %ebx
    push %ecx
    push %edx
    push %esi
    push %edi
1:  test %ecx, %ecx
    jz 4f
    mov %ecx, %edx                  /* EDX = this piece */
    cmp $TX_BUF_SIZE, %edx
    jbe 2f
    mov $TX_BUF_SIZE, %edx
2:  sub %edx, %ecx
    push %ecx
    mov %edx, %ecx
    mov $TX_BUF, %edi
    rep movsb
    push %esi
    mov $transmitq, %esi
    mov $TX_BUF, %eax
    mov %edx, %ecx
    xor %edx, %edx
    xor %ebx, %ebx
    call vq_post
    call vq_kick
    mov $TX_PERIODS, %ecx
    call vq_wait
    jnc 3f
    FAIL "a write to the console's transmit queue did not complete within the watchdog's time"
3:  call vq_take
    test %ebx, %ebx
    jz 31f
    FAIL "the device returned a transmit buffer that was not posted"
31: pop %esi
    pop %ecx
    jmp 1b
4:  pop %edi
    pop %esi
    pop %edx
    pop %ecx
    pop %ebx
    pop %eax
    ret

    .section .rodata
word_noinput: .asciz "expect=noinput"
hello: .ascii "hello from the virtio console\n"
hello_end:
pass_line: .ascii "PASS virtio_console\n"
pass_line_end:
newline_str: .ascii "\n"

    .data
    .balign 4
no_input: .long 0
received: .long 0
echoed: .long 0

PVH_ENTRY(_start)
