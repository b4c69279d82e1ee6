/* Diagnosis: what CLONE_INTO_CGROUP adds to a vfork-style spawn (issue 14, defect 3).
 *
 * usage: cgroup_spawn ROOT N
 *   ROOT  a writable cgroup v2 directory to create test cgroups in (removed again)
 *   N     spawns per mode
 * For each of N rounds, three spawns, interleaved: clone3(CLONE_VFORK) of a child that execs
 * /bin/true, timed from the call to its return in the parent (with CLONE_VFORK: after the
 * child's execve), with
 *   plain  no cgroup flag (the child starts in this program's cgroup)
 *   same   CLONE_INTO_CGROUP, always the same cgroup ROOT/same
 *   fresh  CLONE_INTO_CGROUP, a cgroup made for this spawn (as orchd makes one per spawn),
 *          created before the round's first spawn and removed at the end
 * 3 ms pause after each spawn. Prints the median, p25 and p75 in µs per mode.
 * (Without CLONE_VM, unlike orchd, so that all three modes share the same fork cost.)
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s ROOT N\n", argv[0]);
        return 2;
    }
    const char *root = argv[1];
    int n = atoi(argv[2]);
    static const char *modes[] = {"plain", "same", "fresh"};
    char *const av[] = {"/bin/true", NULL}, *const ev[] = {NULL};
    double *t[3];
    char dir[512];
    for (int m = 0; m < 3; m++) t[m] = calloc(n, sizeof(double));
    for (int i = 0; i < n; i++) {
        snprintf(dir, sizeof dir, "%s/fresh%d", root, i);
        if (mkdir(dir, 0755) < 0) { perror(dir); return 1; }
    }
    snprintf(dir, sizeof dir, "%s/same", root);
    mkdir(dir, 0755);
    int same = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (same < 0) { perror(dir); return 1; }
    for (int i = 0; i < n; i++) {
        for (int m = 0; m < 3; m++) {
            int fd = -1;
            if (m == 2) {
                snprintf(dir, sizeof dir, "%s/fresh%d", root, i);
                fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            }
            struct clone_args a;
            memset(&a, 0, sizeof a);
            a.exit_signal = SIGCHLD;
            a.flags = CLONE_VFORK | (m ? CLONE_INTO_CGROUP : 0);
            a.cgroup = (unsigned)(m == 1 ? same : fd);
            double t0 = now_us();
            long c = syscall(SYS_clone3, &a, sizeof a);
            if (c == 0) {
                execve(av[0], av, ev);
                _exit(127);
            }
            t[m][i] = now_us() - t0;
            if (c < 0) { perror("clone3"); return 1; }
            waitpid((pid_t)c, NULL, 0);
            if (fd >= 0) close(fd);
            usleep(3000);
        }
    }
    for (int m = 0; m < 3; m++) {
        qsort(t[m], n, sizeof(double), cmp);
        printf("%s: median %.1f p25 %.1f p75 %.1f\n", modes[m], t[m][n / 2], t[m][n / 4],
               t[m][3 * n / 4]);
    }
    for (int i = 0; i < n; i++) {
        snprintf(dir, sizeof dir, "%s/fresh%d", root, i);
        rmdir(dir);
    }
    snprintf(dir, sizeof dir, "%s/same", root);
    rmdir(dir);
    return 0;
}
