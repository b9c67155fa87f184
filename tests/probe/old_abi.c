/*
 * Test-only shim, loaded into palisade with LD_PRELOAD by tests/landlock.rs: it makes the
 * Landlock version query answer PALISADE_FAKE_LANDLOCK_ABI instead of the running kernel's
 * ABI, so that Palisade behaves as on an older kernel. Every other system call, including
 * the Landlock calls that build and apply the ruleset, goes to the real kernel.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/syscall.h>

long syscall(long number, ...)
{
    va_list ap;
    va_start(ap, number);
    long a1 = va_arg(ap, long), a2 = va_arg(ap, long), a3 = va_arg(ap, long);
    long a4 = va_arg(ap, long), a5 = va_arg(ap, long), a6 = va_arg(ap, long);
    va_end(ap);
    /* landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION) */
    const char *fake = getenv("PALISADE_FAKE_LANDLOCK_ABI");
    if (fake && number == SYS_landlock_create_ruleset && a1 == 0 && a2 == 0 && a3 == 1)
        return atol(fake);
    static long (*real)(long, ...);
    if (!real)
        real = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
    return real(number, a1, a2, a3, a4, a5, a6);
}
