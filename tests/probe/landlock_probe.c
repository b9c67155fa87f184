/*
 * Test-only probe, loaded into palisade with LD_PRELOAD by tests/landlock.rs.
 *
 * When a thread of the process receives SIGRTMIN+6 (a signal Palisade leaves alone), it runs
 * every probe listed in the file named by PALISADE_PROBE_LIST itself — so each probe is
 * judged with that thread's own Landlock domain — and appends one line per probe to the file
 * named by PALISADE_PROBE_OUT:
 *
 *     <tid> <probe name> <result> <errno>
 *
 * Both files are opened at load time, before any confinement, and the list is read again
 * (through its descriptor) at every signal, so a test can change it between rounds.
 * The list holds `name|op|arg1|arg2` entries separated by `;` or newlines. Ops:
 *   read PATH, write PATH, create PATH, create_own PATH (PATH.<thread id>, so that every
 *   thread tries a name of its own), mkdir PATH, unlink PATH, truncate PATH,
 *   link FROM TO, rename FROM TO, symlink TARGET LINK, exec PATH,
 *   tcp PORT (connect to 127.0.0.1:PORT), abstract NAME (connect to @NAME),
 *   kill PID (SIGCONT).
 * Only async-signal-safe calls are used in the handler.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "probe_text.h"

static int out_fd = -1;
static int list_fd = -1;

static void put(char **p, const char *s)
{
    while (*s)
        *(*p)++ = *s++;
}

static long run_exec(const char *path)
{
    /* A raw fork: no atfork handlers run in the signal handler. */
    long pid = syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
    if (pid == 0) {
        char *argv[] = {(char *)path, 0};
        char *envp[] = {0};
        execve(path, argv, envp);
        _exit(100 + errno % 100);
    }
    if (pid < 0)
        return -1;
    int status = 0;
    while (waitpid((pid_t)pid, &status, 0) < 0 && errno == EINTR)
        ;
    /* 0 when the program ran, 100+errno when execve failed. */
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static long run_probe(const char *op, const char *a, const char *b)
{
    long r;
    if (!strcmp(op, "read")) {
        r = open(a, O_RDONLY | O_CLOEXEC);
        if (r >= 0)
            close((int)r), r = 0;
    } else if (!strcmp(op, "write")) {
        r = open(a, O_WRONLY | O_CLOEXEC);
        if (r >= 0)
            close((int)r), r = 0;
    } else if (!strcmp(op, "create")) {
        r = open(a, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (r >= 0)
            close((int)r), r = 0;
    } else if (!strcmp(op, "create_own")) {
        char path[4096];
        size_t n = strlen(a);
        long tid = syscall(SYS_gettid);
        char digits[24];
        int d = 0;
        do
            digits[d++] = (char)('0' + tid % 10), tid /= 10;
        while (tid > 0);
        if (n + 1 + (size_t)d + 1 > sizeof path)
            return -1;
        memcpy(path, a, n);
        path[n++] = '.';
        while (d > 0)
            path[n++] = digits[--d];
        path[n] = 0;
        r = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (r >= 0)
            close((int)r), r = 0;
    } else if (!strcmp(op, "mkdir")) {
        r = mkdir(a, 0700);
    } else if (!strcmp(op, "unlink")) {
        r = unlink(a);
    } else if (!strcmp(op, "truncate")) {
        r = truncate(a, 0);
    } else if (!strcmp(op, "link")) {
        r = link(a, b);
    } else if (!strcmp(op, "rename")) {
        r = rename(a, b);
    } else if (!strcmp(op, "symlink")) {
        r = symlink(a, b);
    } else if (!strcmp(op, "exec")) {
        r = run_exec(a);
    } else if (!strcmp(op, "tcp")) {
        int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in sin;
        memset(&sin, 0, sizeof sin);
        sin.sin_family = AF_INET;
        sin.sin_port = htons((unsigned short)atoi(a));
        sin.sin_addr.s_addr = htonl(0x7f000001);
        r = s < 0 ? -1 : connect(s, (struct sockaddr *)&sin, sizeof sin);
        if (s >= 0) {
            int e = errno;
            close(s);
            errno = e;
        }
    } else if (!strcmp(op, "abstract")) {
        int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un sun;
        memset(&sun, 0, sizeof sun);
        sun.sun_family = AF_UNIX;
        size_t n = strlen(a);
        memcpy(sun.sun_path + 1, a, n);
        r = s < 0 ? -1
                  : connect(s, (struct sockaddr *)&sun,
                            (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n));
        if (s >= 0) {
            int e = errno;
            close(s);
            errno = e;
        }
    } else if (!strcmp(op, "kill")) {
        r = kill((pid_t)atoi(a), SIGCONT);
    } else {
        errno = EINVAL;
        r = -2;
    }
    return r;
}

static void on_probe(int sig)
{
    (void)sig;
    int saved = errno;
    long tid = syscall(SYS_gettid);
    char copy[8192];
    ssize_t len = pread(list_fd, copy, sizeof copy - 1, 0);
    copy[len > 0 ? len : 0] = 0;
    char *save = 0;
    for (char *item = strtok_r(copy, ";\n", &save); item; item = strtok_r(0, ";\n", &save)) {
        char *fields[4] = {0, 0, 0, 0};
        int n = 0;
        char *f = item;
        fields[n++] = f;
        for (; *f && n < 4; f++) {
            if (*f == '|') {
                *f = 0;
                fields[n++] = f + 1;
            }
        }
        errno = 0;
        long r = run_probe(fields[1] ? fields[1] : "", fields[2] ? fields[2] : "",
                           fields[3] ? fields[3] : "");
        int e = r < 0 ? errno : 0;
        char line[512];
        char *p = line;
        put_num(&p, tid);
        put(&p, " ");
        put(&p, fields[0]);
        put(&p, " ");
        put_num(&p, r);
        put(&p, " ");
        put_num(&p, e);
        put(&p, "\n");
        if (write(out_fd, line, (size_t)(p - line)) < 0) {
            /* Nothing more can be done from a signal handler. */
        }
    }
    errno = saved;
}

__attribute__((constructor)) static void probe_init(void)
{
    const char *out = getenv("PALISADE_PROBE_OUT");
    const char *list = getenv("PALISADE_PROBE_LIST");
    if (!out || !list)
        return;
    list_fd = open(list, O_RDONLY | O_CLOEXEC);
    out_fd = open(out, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (list_fd < 0 || out_fd < 0)
        return;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_probe;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGRTMIN + 6, &sa, 0);
}
