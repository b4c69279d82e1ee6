/* stamp: the service program of the orch benchmarks.
 *
 * The very first thing main() does is read CLOCK_MONOTONIC; it then appends one line
 *   S <pid> <start_ns> <end_ns>\n
 * to FIFO (opened O_WRONLY|O_NONBLOCK, so a missing reader never blocks it; lines are shorter
 * than PIPE_BUF, so concurrent writers never interleave). end_ns is a second stamp taken just
 * before a crash (0 for modes that keep running).
 *
 * usage: stamp FIFO MODE
 *   hold   keep running (pause) until signalled; SIGTERM has its default action: exit at once
 *   crash  write the line, then raise(SIGKILL)  (crash loop)
 *   exit1  write the line, then _exit(1)
 *   fork   first fork a grandchild that leaves the session (setsid) and pauses, reporting
 *          "G <pid>"; then hold. Used to check that nothing survives a SIGKILLed orchd.
 */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long long mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    long long start = mono_ns();
    if (argc < 3) return 2;
    const char *mode = argv[2];
    int fd = open(argv[1], O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    char line[128];
    if (strcmp(mode, "fork") == 0) {
        pid_t g = fork();
        if (g == 0) {
            setsid();
            for (;;) pause();
        }
        int n = snprintf(line, sizeof line, "G %d\n", (int)g);
        if (fd >= 0) write(fd, line, n);
    }
    int crash = strcmp(mode, "crash") == 0, exit1 = strcmp(mode, "exit1") == 0;
    long long end = (crash || exit1) ? mono_ns() : 0;
    int n = snprintf(line, sizeof line, "S %d %lld %lld\n", (int)getpid(), start, end);
    if (fd >= 0) write(fd, line, n);
    if (crash) {
        raise(SIGKILL);
    }
    if (exit1) _exit(1);
    for (;;) pause();
}
