/*
 * Test-only probe, loaded into palisade with LD_PRELOAD by tests/sandbox.rs.
 *
 * PALISADE_ESCAPE holds one attack, `op|arg`. When a thread receives SIGRTMIN+6 (a signal
 * Palisade leaves alone) it makes that attack itself — so the attack meets that thread's own
 * Landlock domain, capabilities and system-call filter — and writes `<ret> <errno>\n` to the
 * file named by PALISADE_ESCAPE_OUT.
 * A call its filter forbids never returns: palisade reports the violation and exits.
 *
 * Everything the attack needs besides its one call (sockets, descriptors, the text) is made
 * at load time, before palisade exists as a VMM, so the handler itself makes no call but the
 * attack and a write(2) of the result, which every thread may do.
 *
 * Ops: memfd, execveat, mptcp, tfo PORT, listen, raw, packet, netlink, alg, sethostname,
 * chroot, fchmod FILE, fchown FILE, fsetxattr FILE (on a descriptor of FILE held since load
 * time, as the VMM holds its disks), tmpfile DIR, unix PATH, mmap_exec, fork,
 * setuid.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "probe_text.h"

#ifndef IPPROTO_MPTCP
#define IPPROTO_MPTCP 262
#endif

static int out_fd = -1;
static char op[64];
static char arg[4096];
static int tcp_fd = -1;  /* an unbound TCP socket, for listen and TCP Fast Open */
static int unix_fd = -1; /* an unconnected Unix stream socket */
static int null_fd = -1; /* /dev/null, which execveat refuses even without a filter */
static int held_fd = -1; /* the file named by the argument, for metadata changes */
static struct sockaddr_un unix_addr;

static long attack(void)
{
    if (!strcmp(op, "memfd"))
        return syscall(SYS_memfd_create, "payload", 0);
    if (!strcmp(op, "execveat")) {
        char *argv[] = {"x", 0};
        char *envp[] = {0};
        return syscall(SYS_execveat, null_fd, "", argv, envp, AT_EMPTY_PATH);
    }
    if (!strcmp(op, "mptcp"))
        return socket(AF_INET, SOCK_STREAM, IPPROTO_MPTCP);
    if (!strcmp(op, "tfo")) {
        struct sockaddr_in sin;
        memset(&sin, 0, sizeof sin);
        sin.sin_family = AF_INET;
        sin.sin_port = htons((unsigned short)atoi(arg));
        sin.sin_addr.s_addr = htonl(0x7f000001);
        return sendto(tcp_fd, "x", 1, MSG_FASTOPEN, (struct sockaddr *)&sin, sizeof sin);
    }
    if (!strcmp(op, "listen"))
        return listen(tcp_fd, 1);
    if (!strcmp(op, "raw"))
        return socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
    if (!strcmp(op, "packet"))
        return socket(AF_PACKET, SOCK_RAW, 0);
    if (!strcmp(op, "netlink"))
        return socket(AF_NETLINK, SOCK_RAW, 0);
    if (!strcmp(op, "alg"))
        return socket(AF_ALG, SOCK_SEQPACKET, 0);
    if (!strcmp(op, "sethostname"))
        return sethostname("escaped", 7);
    if (!strcmp(op, "chroot"))
        return chroot("/tmp");
    if (!strcmp(op, "fchmod"))
        return fchmod(held_fd, 0777);
    if (!strcmp(op, "fchown"))
        return fchown(held_fd, 4321, 4321);
    if (!strcmp(op, "fsetxattr"))
        return fsetxattr(held_fd, "user.escaped", "1", 1, 0);
    if (!strcmp(op, "tmpfile"))
        return syscall(SYS_openat, AT_FDCWD, arg, O_TMPFILE | O_RDWR, 0600);
    if (!strcmp(op, "unix"))
        return connect(unix_fd, (struct sockaddr *)&unix_addr, sizeof unix_addr);
    if (!strcmp(op, "mmap_exec")) {
        void *p = mmap(0, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        return p == MAP_FAILED ? -1 : 0;
    }
    if (!strcmp(op, "fork")) {
        long pid = syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
        if (pid == 0)
            syscall(SYS_exit, 0);
        return pid;
    }
    if (!strcmp(op, "setuid"))
        return syscall(SYS_setuid, 4321);
    errno = EINVAL;
    return -2;
}

static void on_signal(int sig)
{
    (void)sig;
    int saved = errno;
    errno = 0;
    long r = attack();
    int e = r < 0 ? errno : 0;
    char line[64];
    char *p = line;
    put_num(&p, r < 0 ? -1 : 0);
    *p++ = ' ';
    put_num(&p, e);
    *p++ = '\n';
    if (write(out_fd, line, (size_t)(p - line)) < 0) {
        /* Nothing more can be done from a signal handler. */
    }
    errno = saved;
}

__attribute__((constructor)) static void escape_init(void)
{
    const char *spec = getenv("PALISADE_ESCAPE");
    const char *out = getenv("PALISADE_ESCAPE_OUT");
    if (!spec || !out)
        return;
    const char *bar = strchr(spec, '|');
    size_t n = bar ? (size_t)(bar - spec) : strlen(spec);
    if (n >= sizeof op)
        return;
    memcpy(op, spec, n);
    if (bar)
        strncpy(arg, bar + 1, sizeof arg - 1);
    out_fd = open(out, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    tcp_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    unix_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (!strncmp(op, "fch", 3) || !strcmp(op, "fsetxattr"))
        held_fd = open(arg, O_RDONLY | O_CLOEXEC);
    memset(&unix_addr, 0, sizeof unix_addr);
    unix_addr.sun_family = AF_UNIX;
    strncpy(unix_addr.sun_path, arg, sizeof unix_addr.sun_path - 1);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGRTMIN + 6, &sa, 0);
}
