/* driver: launches orchd and takes the timings of the orch benchmarks.
 *
 * Every mode creates FIFO's reader (O_RDWR: never sees EOF) before orchd starts, launches
 * `ORCHD --config CONFIG` (stderr to CONFIG's directory/orchd.log), reads the "S"/"G" lines the
 * `stamp` services write, and ends orchd with SIGTERM (waiting for it) unless said otherwise.
 * All times are CLOCK_MONOTONIC, the clock `stamp` uses. Results go to stdout, one
 * "key value" pair per line, for bench/run.sh to collect.
 *
 *   driver restart   ORCHD CONFIG FIFO N UP_MS   SIGKILL the (single) service N times, each after
 *                                                it has run UP_MS; prints latency_us per kill
 *                                                (new process's first stamp - time of kill)
 *   driver crashloop ORCHD CONFIG FIFO N         the service crashes itself; prints N gaps
 *                                                gap_us = start of next - last stamp before crash
 *   driver startstop ORCHD CONFIG FIFO N         time from orchd's exec to the N-th service's first
 *                                                stamp (start_ms), then from SIGTERM to orchd's
 *                                                exit (stop_ms)
 *   driver orphans   ORCHD CONFIG FIFO N         N "fork"-mode services; SIGKILL orchd, start it
 *                                                again, count processes of the first generation
 *                                                alive when the second has started its N services
 *   driver up        ORCHD CONFIG FIFO N -- CMD… start, wait for N services, run CMD with
 *                                                ORCHD_PID set, then stop orchd
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static pid_t current_orchd; /* stopped by die(): never leave an orchd behind */

static void die(const char *msg) {
    fprintf(stderr, "driver: %s\n", msg);
    if (current_orchd > 0) {
        kill(current_orchd, SIGTERM);
        waitpid(current_orchd, NULL, 0);
    }
    exit(1);
}

static int fifo_fd;
static char rbuf[1 << 16];
static size_t rlen;

/* Next line from the FIFO, or NULL after timeout_ms without one. */
static char *next_line(char *out, size_t cap, int timeout_ms) {
    long long deadline = mono_ns() + (long long)timeout_ms * 1000000LL;
    for (;;) {
        char *nl = memchr(rbuf, '\n', rlen);
        if (nl) {
            size_t n = (size_t)(nl - rbuf);
            if (n >= cap) n = cap - 1;
            memcpy(out, rbuf, n);
            out[n] = 0;
            size_t used = (size_t)(nl - rbuf) + 1;
            memmove(rbuf, rbuf + used, rlen - used);
            rlen -= used;
            return out;
        }
        long long left = (deadline - mono_ns()) / 1000000LL;
        if (left <= 0) return NULL;
        struct pollfd p = {fifo_fd, POLLIN, 0};
        int r = poll(&p, 1, (int)left);
        if (r < 0 && errno != EINTR) die("poll");
        if (r <= 0) continue;
        ssize_t got = read(fifo_fd, rbuf + rlen, sizeof rbuf - rlen);
        if (got > 0) rlen += (size_t)got;
    }
}

struct stamp {
    int pid;
    long long start, end;
};

/* Grandchild pids from "G" lines (fork mode), in the order read. */
static int gpids[4096], ngpids;

/* Next "S" line; "G" lines met on the way are appended to gpids. */
static int next_stamp(struct stamp *s, int timeout_ms) {
    char line[256];
    for (;;) {
        if (!next_line(line, sizeof line, timeout_ms)) return 0;
        if (line[0] == 'G') {
            if (ngpids < (int)(sizeof gpids / sizeof *gpids)) gpids[ngpids++] = atoi(line + 2);
            continue;
        }
        if (sscanf(line, "S %d %lld %lld", &s->pid, &s->start, &s->end) == 3) return 1;
    }
}

static const char *orchd_bin, *config;

static pid_t launch(long long *t0) {
    char log[PATH_MAX];
    snprintf(log, sizeof log, "%s", config);
    char *slash = strrchr(log, '/');
    if (slash) strcpy(slash + 1, "orchd.log"); else strcpy(log, "orchd.log");
    int lfd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (t0) *t0 = mono_ns();
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        if (lfd >= 0) dup2(lfd, 2);
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        dup2(null, 1);
        execl(orchd_bin, orchd_bin, "--config", config, (char *)NULL);
        _exit(127);
    }
    if (lfd >= 0) close(lfd);
    current_orchd = pid;
    return pid;
}

/* SIGTERM orchd and wait; returns the ns it took. */
static long long stop(pid_t pid) {
    long long t0 = mono_ns();
    kill(pid, SIGTERM);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    return mono_ns() - t0;
}

/* Reap whatever orphans were reparented to us (we are a subreaper). */
static void reap_orphans(void) {
    while (waitpid(-1, NULL, WNOHANG) > 0) {}
}

static int alive(int pid) {
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    return p && p[1] == ' ' && p[2] != 'Z' && p[2] != 'X';
}

int main(int argc, char **argv) {
    if (argc < 6) die("usage: driver MODE ORCHD CONFIG FIFO N [args]");
    const char *mode = argv[1];
    orchd_bin = argv[2];
    config = argv[3];
    const char *fifo = argv[4];
    int n = atoi(argv[5]);
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    unlink(fifo);
    if (mkfifo(fifo, 0666) != 0) die("mkfifo");
    chmod(fifo, 0666); /* services may run as another user */
    fifo_fd = open(fifo, O_RDWR | O_CLOEXEC);
    if (fifo_fd < 0) die("open fifo");
    fcntl(fifo_fd, F_SETPIPE_SZ, 1 << 20);
    struct stamp s;

    if (strcmp(mode, "restart") == 0) {
        int up_ms = argc > 6 ? atoi(argv[6]) : 1000;
        pid_t orchd = launch(NULL);
        if (!next_stamp(&s, 10000)) die("service did not start");
        for (int i = 0; i < n; i++) {
            usleep((useconds_t)up_ms * 1000);
            long long t = mono_ns();
            kill(s.pid, SIGKILL);
            int old = s.pid;
            if (!next_stamp(&s, 10000)) die("no restart within 10 s");
            if (s.pid == old) die("same pid");
            printf("latency_us %.1f\n", (s.start - t) / 1e3);
            fflush(stdout);
        }
        stop(orchd);
    } else if (strcmp(mode, "crashloop") == 0) {
        pid_t orchd = launch(NULL);
        if (!next_stamp(&s, 10000)) die("service did not start");
        for (int i = 0; i < n; i++) {
            long long prev_end = s.end;
            if (!next_stamp(&s, 10000)) die("no restart within 10 s");
            printf("gap_us %.1f\n", (s.start - prev_end) / 1e3);
        }
        stop(orchd);
    } else if (strcmp(mode, "startstop") == 0) {
        long long t0;
        pid_t orchd = launch(&t0);
        long long first = 0, last = 0;
        for (int i = 0; i < n; i++) {
            if (!next_stamp(&s, 20000)) die("services did not all start");
            if (i == 0) first = s.start;
            if (s.start > last) last = s.start;
        }
        printf("first_ms %.2f\nstart_ms %.2f\n", (first - t0) / 1e6, (last - t0) / 1e6);
        usleep(300 * 1000); /* let orchd settle (READY, status publishing) */
        printf("stop_ms %.2f\n", stop(orchd) / 1e6);
    } else if (strcmp(mode, "orphans") == 0) {
        int *pids = calloc((size_t)n * 2, sizeof(int));
        int np = 0;
        pid_t orchd = launch(NULL);
        for (int i = 0; i < n; i++) {
            if (!next_stamp(&s, 20000)) die("services did not all start");
            pids[np++] = s.pid;
        }
        usleep(300 * 1000);
        for (int i = 0; i < ngpids && np < n * 2; i++) pids[np++] = gpids[i];
        int before = 0;
        for (int i = 0; i < np; i++) before += alive(pids[i]);
        kill(orchd, SIGKILL);
        waitpid(orchd, NULL, 0);
        long long t0 = mono_ns();
        pid_t second = launch(NULL);
        for (int i = 0; i < n; i++)
            if (!next_stamp(&s, 20000)) die("second orchd did not start its services");
        long long t1 = mono_ns();
        int left = 0;
        for (int i = 0; i < np; i++) left += alive(pids[i]);
        printf("first_generation_processes %d\nalive_before_kill %d\n", np, before);
        printf("second_started_ms %.1f\norphans_alive %d\n", (t1 - t0) / 1e6, left);
        for (int i = 0; i < np; i++)
            if (alive(pids[i])) kill(pids[i], SIGKILL); /* never leave them running */
        stop(second);
        free(pids);
    } else if (strcmp(mode, "up") == 0) {
        if (argc < 8 || strcmp(argv[6], "--") != 0) die("usage: driver up ORCHD CONFIG FIFO N -- CMD...");
        pid_t orchd = launch(NULL);
        for (int i = 0; i < n; i++)
            if (!next_stamp(&s, 20000)) die("services did not all start");
        char pidstr[32];
        snprintf(pidstr, sizeof pidstr, "%d", (int)orchd);
        setenv("ORCHD_PID", pidstr, 1);
        pid_t c = fork();
        if (c == 0) {
            execvp(argv[7], argv + 7);
            _exit(127);
        }
        int st = 0;
        waitpid(c, &st, 0);
        stop(orchd);
        reap_orphans();
        unlink(fifo);
        return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
    } else {
        die("unknown mode");
    }
    reap_orphans();
    unlink(fifo);
    return 0;
}
