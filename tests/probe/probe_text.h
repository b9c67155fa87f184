/*
 * Test-only helpers shared by the LD_PRELOAD probes: text written into a buffer with no
 * library call, so that a signal handler may use them.
 */
#ifndef PALISADE_PROBE_TEXT_H
#define PALISADE_PROBE_TEXT_H

/* Appends the decimal digits of `v` at *p. */
static void put_num(char **p, long v)
{
    char tmp[24];
    int n = 0;
    if (v < 0) {
        *(*p)++ = '-';
        v = -v;
    }
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *(*p)++ = tmp[--n];
}

#endif
