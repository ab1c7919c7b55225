/*
 * alloc-count.so: counts heap allocations of a process, for the per-request cost table of
 * scripts/bench/cost.sh. Loaded with LD_PRELOAD into a proxy started for that measurement; it
 * wraps malloc, calloc, realloc, posix_memalign, aligned_alloc, memalign and valloc (each
 * call counted, then handed to glibc's own implementation) and keeps the count of each
 * process in an 8-byte file $ALLOC_COUNT_DIR/PID (shared mapping, so the script reads it
 * while the process runs; a forked worker starts its own file). Nothing is counted when
 * ALLOC_COUNT_DIR is unset.
 *
 * Why not ltrace: Rust binaries (and Debian's, built with full RELRO and often -fno-plt) call
 * libc through the GOT, without the PLT entries ltrace puts its breakpoints on, and ltrace
 * 0.7's -x on libc.so.6 finds nothing to trace in an attached process.
 *
 * Build: cc -O2 -shared -fPIC -o alloc-count.so alloc-count.c
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

static uint64_t *counter;
static int disabled;

static void forget_counter(void) { counter = NULL; }

__attribute__((constructor)) static void init(void) { pthread_atfork(NULL, NULL, forget_counter); }

/* The counter of this process, mapped on first use: only system calls and static buffers,
 * no allocation (this runs inside malloc). */
static uint64_t *my_counter(void) {
    char path[4096];
    const char *dir;
    size_t n = 0, k;
    char digits[24];
    int fd, len = 0;
    pid_t pid;
    void *map;

    if (counter || disabled) return counter;
    dir = getenv("ALLOC_COUNT_DIR");
    if (!dir) {
        disabled = 1;
        return NULL;
    }
    for (k = 0; dir[k] && n < sizeof(path) - 32; k++) path[n++] = dir[k];
    path[n++] = '/';
    pid = getpid();
    do {
        digits[len++] = (char)('0' + pid % 10);
        pid /= 10;
    } while (pid > 0);
    while (len > 0) path[n++] = digits[--len];
    path[n] = '\0';
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        disabled = 1;
        return NULL;
    }
    if (ftruncate(fd, sizeof(uint64_t)) != 0) {
        close(fd);
        disabled = 1;
        return NULL;
    }
    map = mmap(NULL, sizeof(uint64_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        disabled = 1;
        return NULL;
    }
    counter = map;
    return counter;
}

static void count(void) {
    uint64_t *c = my_counter();
    if (c) __atomic_fetch_add(c, 1, __ATOMIC_RELAXED);
}

void *malloc(size_t size) {
    count();
    return __libc_malloc(size);
}

void *calloc(size_t nmemb, size_t size) {
    count();
    return __libc_calloc(nmemb, size);
}

void *realloc(void *ptr, size_t size) {
    count();
    return __libc_realloc(ptr, size);
}

void *memalign(size_t alignment, size_t size) {
    count();
    return __libc_memalign(alignment, size);
}

void *aligned_alloc(size_t alignment, size_t size) {
    count();
    return __libc_memalign(alignment, size);
}

void *valloc(size_t size) {
    count();
    return __libc_memalign((size_t)sysconf(_SC_PAGESIZE), size);
}

int posix_memalign(void **out, size_t alignment, size_t size) {
    void *p;
    if (alignment % sizeof(void *) != 0 || (alignment & (alignment - 1)) != 0) return 22; /* EINVAL */
    count();
    p = __libc_memalign(alignment, size);
    if (!p && size) return 12; /* ENOMEM */
    *out = p;
    return 0;
}
