/* What touching fresh memory costs on this machine: maps SIZE_MB of anonymous memory,
 * writes one byte per 4 KiB page, unmaps, three times in one process.
 *
 *   cc -O2 -o /tmp/first_touch bench/first_touch.c
 *   /tmp/first_touch 800 1    # with MADV_HUGEPAGE (what mimalloc asks for)
 *   /tmp/first_touch 800 0    # 4 KiB pages
 *
 * The first pass pays for pages the process has never had; the later ones reuse what the
 * kernel just got back. See docs/performance.md, "What fresh memory costs here". */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s SIZE_MB HUGE(0|1)\n", argv[0]);
        return 2;
    }
    size_t bytes = (size_t)atol(argv[1]) << 20;
    int huge = atoi(argv[2]);
    for (int pass = 0; pass < 3; pass++) {
        char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            perror("mmap");
            return 1;
        }
        if (huge && madvise(p, bytes, MADV_HUGEPAGE) != 0) {
            perror("madvise");
        }
        double t = now();
        for (size_t i = 0; i < bytes; i += 4096) {
            p[i] = 1;
        }
        double s = now() - t;
        printf("pass %d: %zu MB in %.3f s (%.2f GB/s)\n", pass + 1, bytes >> 20, s, (bytes >> 20) / 1024.0 / s);
        munmap(p, bytes);
    }
    return 0;
}
