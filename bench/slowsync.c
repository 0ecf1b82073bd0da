/* A slow disk's flush, for measuring the event store's writes: LD_PRELOAD this into a server (and the
 * processes it starts) to make every fsync and fdatasync wait EV_FSYNC_DELAY_US microseconds first.
 *
 *     cc -shared -fPIC -O2 -o /tmp/slowsync.so bench/slowsync.c -ldl
 *     LD_PRELOAD=/tmp/slowsync.so EV_FSYNC_DELAY_US=13000 python bench/load.py ...
 *
 * 13 ms is what a commit of the event store took when this virtual disk's flushes were slow
 * (RESULTS.md, section 12). Nothing else changes: the flush still happens. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>

static int delay_us(void) {
    const char *s = getenv("EV_FSYNC_DELAY_US");
    return s ? atoi(s) : 0;
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    int d = delay_us();
    if (d) usleep(d);
    return real(fd);
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    int d = delay_us();
    if (d) usleep(d);
    return real(fd);
}
