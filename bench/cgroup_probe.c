/* cgroup_probe: what does putting a new process into a cgroup v2 cost, right after fork?
 * usage: cgroup_probe MODE CGROUP_DIR GAP_MS N
 *   procs   fork, then the child writes "0" to CGROUP_DIR/cgroup.procs (what orchd does in
 *           pre_exec); prints µs from before fork to after the write, in the child
 *   clone3  clone3(CLONE_INTO_CGROUP): the child is born in the cgroup; prints µs from before
 *           clone3 to the child's first instruction
 *   plain   clone3 without a cgroup, for reference
 * GAP_MS idle between attempts (orchd's case: a service that ran for a while, then crashed).
 * CGROUP_DIR is created and removed. */
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

static long long ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 5) return 2;
    const char *mode = argv[1], *dir = argv[2];
    int gap = atoi(argv[3]), n = atoi(argv[4]);
    mkdir(dir, 0755);
    char procs[512];
    snprintf(procs, sizeof procs, "%s/cgroup.procs", dir);
    int cfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    for (int i = 0; i < n; i++) {
        usleep((useconds_t)gap * 1000);
        long long t0 = ns();
        long c;
        if (strcmp(mode, "procs") == 0) {
            c = fork();
            if (c == 0) {
                int fd = open(procs, O_WRONLY);
                if (fd < 0 || write(fd, "0", 1) != 1) _exit(1);
                printf("%.0f ", (ns() - t0) / 1e3);
                fflush(stdout);
                _exit(0);
            }
        } else {
            struct clone_args a;
            memset(&a, 0, sizeof a);
            a.exit_signal = SIGCHLD;
            if (strcmp(mode, "clone3") == 0) {
                a.flags = CLONE_INTO_CGROUP;
                a.cgroup = (unsigned)cfd;
            }
            c = syscall(SYS_clone3, &a, sizeof a);
            if (c == 0) {
                printf("%.0f ", (ns() - t0) / 1e3);
                fflush(stdout);
                _exit(0);
            }
        }
        if (c < 0) {
            perror("fork/clone3");
            break;
        }
        waitpid((pid_t)c, NULL, 0);
    }
    printf("\n");
    close(cfd);
    rmdir(dir);
    return 0;
}
