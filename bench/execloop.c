/* execloop: time a whole command (fork + exec + run + wait), WARMUP + N times.
 * usage: execloop N WARMUP CMD [ARGS…]   (stdout/stderr of CMD go to /dev/null)
 * prints: runs, median_ms, p10_ms, p90_ms, min_ms, failures (non-zero exits). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int cmp(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: execloop N WARMUP CMD [ARGS...]\n");
        return 2;
    }
    int n = atoi(argv[1]), warm = atoi(argv[2]), fails = 0;
    long long *t = malloc(sizeof(long long) * (size_t)n);
    int null = open("/dev/null", O_WRONLY);
    for (int i = -warm; i < n; i++) {
        long long t0 = mono_ns();
        pid_t p = fork();
        if (p == 0) {
            dup2(null, 1);
            dup2(null, 2);
            execvp(argv[3], argv + 3);
            _exit(127);
        }
        int st;
        waitpid(p, &st, 0);
        long long d = mono_ns() - t0;
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) fails++;
        if (i >= 0) t[i] = d;
    }
    qsort(t, (size_t)n, sizeof *t, cmp);
    printf("runs %d\nmedian_ms %.3f\np10_ms %.3f\np90_ms %.3f\nmin_ms %.3f\nfailures %d\n", n,
           t[n / 2] / 1e6, t[n / 10] / 1e6, t[n * 9 / 10] / 1e6, t[0] / 1e6, fails);
    return 0;
}
