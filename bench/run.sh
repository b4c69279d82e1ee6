#!/usr/bin/env bash
# orch benchmarks. usage: bench/run.sh [NAME…]   (no NAME: all)
#
#   restart    crash→restart latency (SIGKILL → new process's first instruction), delay = "0s"
#   crashloop  restart gap of a service that crashes itself at once, delay = "0s"
#   start      orchd exec → the 100th service's first instruction (100 independent services)
#   stop       SIGTERM to orchd → orchd exit, 10 services that exit on SIGTERM
#   idle       orchd PSS and idle CPU over 60 s with 100 running services (2 runs)
#   orphans    SIGKILL orchd, start it again: first-generation processes still alive
#   status     `orchctl status` with 100 services, whole process (and /bin/true for reference)
#   socket     `status` requests/s with 16 concurrent socket clients, p50/p99
#   metrics    GET /metrics with 100 services: exposition size, latency, orchd CPU per scrape
#   health     1000 monitor-only units probing 1000 loopback HTTP endpoints every 1 s: orchd CPU,
#              RSS, probe schedule drift (issue 4)
#   deploy     10 deploys under wrk load through the http proxy: failed requests (issue 6)
#   proxy      wrk throughput/latency: direct vs orch http/tcp proxy vs nginx proxy_pass/stream,
#              proxy CPU per 1000 requests (issue 6)
#   rollback   instant rollback during the watch window, command exec → exit (issue 6)
#   alerts     crash → webhook latency and the 10-minute crash loop (issue 5; cargo test)
# Diagnosis only (not in the default set): nocgroup, cgroup, cgroup_spawn, pss_scale, size_profile, proxy_perf,
#              proxy_instructions (callgrind: user instructions per proxied request, orch vs nginx)
#
# Builds the release binaries (cargo build --release) and the C helpers in bench/*.c, then runs
# each benchmark against a real orchd in a temp dir (config as tests/it/util.rs writes it).
# Every command it runs is echoed with a leading "+ "; results also go to
# $CARGO_TARGET_DIR/bench/results/NAME.txt. Env: RUNS (default 5), IDLE_SECONDS (60),
# HEALTH_UNITS (1000), HEALTH_SECONDS (60), HEALTH_RUNS (3), WRK_SECONDS (10), PROXY_RUNS (3),
# HEALTH_KIND (http; tcp for diagnosis), DEPLOY_RUNS (3), SKIP_BUILD (set: use the binaries already built). Issue 6 benchmarks need wrk, nginx and libnginx-mod-stream (apt); proxy_instructions also valgrind.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
REL=$CARGO_TARGET_DIR/release
B=$CARGO_TARGET_DIR/bench
RESULTS=$B/results
RUNS=${RUNS:-5}
IDLE_SECONDS=${IDLE_SECONDS:-60}
HEALTH_UNITS=${HEALTH_UNITS:-1000}
HEALTH_SECONDS=${HEALTH_SECONDS:-60}
HEALTH_RUNS=${HEALTH_RUNS:-3}
WRK_SECONDS=${WRK_SECONDS:-10}
PROXY_RUNS=${PROXY_RUNS:-3}
DEPLOY_RUNS=${DEPLOY_RUNS:-3}
ORCHD=$REL/orchd
ORCHCTL=$REL/orchctl

x() { echo "+ $*" >&2; "$@"; }

build() {
    mkdir -p "$B" "$RESULTS"
    [ -n "${SKIP_BUILD:-}" ] && return 0 # reuse the binaries of an earlier run
    (cd "$ROOT" && x cargo build --release --quiet --bin orchd --bin orchctl --example socket_load \
        --example http_ok --example probe_endpoints)
    if ! x gcc -O2 -static -o "$B/stamp" "$ROOT/bench/stamp.c"; then
        x gcc -O2 -o "$B/stamp" "$ROOT/bench/stamp.c"
    fi
    x gcc -O2 -Wall -o "$B/driver" "$ROOT/bench/driver.c"
    x gcc -O2 -Wall -o "$B/execloop" "$ROOT/bench/execloop.c"
    x gcc -O2 -Wall -o "$B/cgroup_probe" "$ROOT/bench/cgroup_probe.c"
    x gcc -O2 -Wall -o "$B/cgroup_spawn" "$ROOT/bench/cgroup_spawn.c"
}

# setup DIR N MODE [EXTRA_UNIT_TOML]: orchd.toml + N units svc000… running `stamp FIFO MODE`.
setup() {
    local dir=$1 n=$2 mode=$3 extra=${4:-}
    mkdir -p "$dir/units"
    printf 'units_dir = "units"\nstate_dir = "state"\n[api]\nsocket = "orchd.sock"\nsocket_group = ""\ndbus = "off"\n' >"$dir/orchd.toml"
    for ((i = 0; i < n; i++)); do
        printf 'exec = ["%s", "%s", "%s"]\n%b' "$B/stamp" "$dir/fifo" "$mode" "$extra" \
            >"$dir/units/$(printf 'svc%03d' "$i").toml"
    done
}

TMPS=()
PIDS=() # background processes this script started (orchd, nginx, endpoint servers, wrk)
# newdir: a fresh temp dir in $NEWDIR, removed at exit. Not `newdir; d=$NEWDIR`: a command
# substitution's subshell would record it in a copy of TMPS, and the dir would be left behind.
newdir() {
    NEWDIR=$(mktemp -d /tmp/orch-bench.XXXXXX)
    TMPS+=("$NEWDIR")
}
cleanup() {
    local d c p
    for p in "${PIDS[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    for d in "${TMPS[@]}"; do
        # orchd leaves its (empty) per-state-dir cgroup behind: remove ours, and only ours (other
        # orchds on this machine have theirs), as named in our orchd's log.
        for c in $(grep -ohE '/sys/fs/cgroup/[^ ]*orch\.[0-9a-f]{12}' "$d/orchd.log" 2>/dev/null | sort -u); do
            rmdir "$c"/*/ "$c" 2>/dev/null || true
        done
        rm -rf "$d"
    done
}
trap cleanup EXIT

# stats: numbers on stdin → "median M (min A, max B, n N)"
stats() {
    sort -g | awk '{v[NR]=$1} END {if (NR==0) {print "no data"; exit}
        m = (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2;
        printf "median %.3f (min %.3f, max %.3f, n %d)\n", m, v[1], v[NR], NR}'
}
field() { awk -v k="$1" '$1==k {print $2}'; }

# Failed spawns in orchd's log (each one costs an extra restart in the figures above).
spawn_failures() {
    echo "spawn failures in orchd.log: $(grep -c 'cannot run' "$1/orchd.log" || true)"
    grep -m1 -o 'cannot run [^"]*' "$1/orchd.log" | sed 's/\x1b\[[0-9;]*m//g' || true
}

bench_restart() {
    local d
    newdir; d=$NEWDIR
    setup "$d" 1 hold '[restart]\ndelay = "0s"\n'
    echo "# crash→restart latency, service up 2 s before each SIGKILL (µs)"
    for r in 1 2; do
        x "$B/driver" restart "$ORCHD" "$d/orchd.toml" "$d/fifo" 11 2000 >"$d/out$r"
        echo "run $r: $(field latency_us <"$d/out$r" | tr '\n' ' ')"
        echo "run $r: $(field latency_us <"$d/out$r" | stats)"
    done
    echo "all: $(cat "$d"/out* | field latency_us | stats)"
    spawn_failures "$d"
}

bench_crashloop() {
    local d
    newdir; d=$NEWDIR
    setup "$d" 1 crash '[restart]\ndelay = "0s"\n'
    echo "# crash loop: next start − last stamp before raise(SIGKILL) (µs), 300 restarts per run"
    for ((r = 1; r <= 3; r++)); do
        x "$B/driver" crashloop "$ORCHD" "$d/orchd.toml" "$d/fifo" 300 >"$d/out$r"
        echo "run $r: $(field gap_us <"$d/out$r" | stats)"
    done
    echo "all: $(cat "$d"/out* | field gap_us | stats)"
    spawn_failures "$d"
}

startstop() { # N → runs driver startstop RUNS times; prints the raw outputs to $d/ss*
    local d=$1 n=$2
    for ((r = 1; r <= RUNS; r++)); do
        x "$B/driver" startstop "$ORCHD" "$d/orchd.toml" "$d/fifo" "$n" >"$d/ss$r"
        echo "run $r: $(tr '\n' ' ' <"$d/ss$r")"
    done
}

bench_start() {
    local d
    newdir; d=$NEWDIR
    setup "$d" 100 hold
    echo "# start of 100 services: orchd exec → last service's first instruction (ms)"
    startstop "$d" 100
    echo "start_ms: $(cat "$d"/ss* | field start_ms | stats)"
    echo "first_ms: $(cat "$d"/ss* | field first_ms | stats)"
    echo "stop_ms (100 services): $(cat "$d"/ss* | field stop_ms | stats)"
}

bench_stop() {
    local d
    newdir; d=$NEWDIR
    setup "$d" 10 hold
    echo "# graceful stop of 10 services: SIGTERM to orchd → orchd exit (ms)"
    startstop "$d" 10
    echo "stop_ms: $(cat "$d"/ss* | field stop_ms | stats)"
}

# Runs inside `driver up`: ORCHD_PID is set.
_idle() {
    local p=$ORCHD_PID out=$1
    sleep 2
    cpu() { awk '{print $14+$15}' "/proc/$p/stat"; }
    # Per thread ("tid value" lines), so that a thread that ends during the window (tokio's
    # blocking threads end after 10 s idle) is not counted as negative time; its share of the
    # window is in cpu_ticks_ms (/proc/PID/stat keeps the time of ended threads).
    sched() { for t in /proc/"$p"/task/*; do echo "${t##*/} $(cut -d' ' -f1 "$t/schedstat" 2>/dev/null)"; done; }
    ctxt() { for t in /proc/"$p"/task/*; do echo "${t##*/} $(awk '/^(non)?voluntary_ctxt_switches/ {s+=$2} END {print s}' "$t/status" 2>/dev/null)"; done; }
    # delta BEFORE AFTER: sum over the threads alive at the end of (after - before, or after).
    delta() { awk 'NR==FNR {b[$1]=$2; next} $2 != "" {s += $2 - ($1 in b ? b[$1] : 0)} END {print s+0}' <(echo "$1") <(echo "$2"); }
    {
        echo "threads $(ls /proc/"$p"/task | wc -l)"
        awk '/^(Rss|Pss|Pss_Anon|Pss_File|Private_Dirty):/ {print $1, $2}' "/proc/$p/smaps_rollup" | sed 's/://'
        local c0 s0 x0 c1 s1 x1 hz
        hz=$(getconf CLK_TCK)
        c0=$(cpu) s0=$(sched) x0=$(ctxt)
        sleep "$IDLE_SECONDS"
        c1=$(cpu) s1=$(sched) x1=$(ctxt)
        echo "cpu_ticks_ms $(((c1 - c0) * 1000 / hz))"
        echo "cpu_sched_ms $(delta "$s0" "$s1" | awk '{printf "%.2f", $1/1e6}')"
        echo "ctxt_switches $(delta "$x0" "$x1")"
        echo "Pss_after $(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup")"
    } >"$out"
    # For the diagnosis: the biggest mappings by Pss.
    awk '/^[0-9a-f]+-[0-9a-f]+ / {m=$6; if (m=="") m="[anon]"} /^Pss:/ {s[m]+=$2} END {for (k in s) print s[k], k}' \
        "/proc/$p/smaps" | sort -rn | head -8 >"$out.maps"
}

bench_idle() {
    local d
    newdir; d=$NEWDIR
    setup "$d" 100 hold
    echo "# 100 running services: orchd PSS (KiB) 2 s after all started, CPU over ${IDLE_SECONDS} s"
    for r in 1 2; do
        x "$B/driver" up "$ORCHD" "$d/orchd.toml" "$d/fifo" 100 -- "$0" _idle "$d/idle$r"
        echo "run $r: $(tr '\n' ' ' <"$d/idle$r")"
        echo "run $r biggest mappings (Pss KiB): $(tr '\n' ';' <"$d/idle$r.maps")"
    done
}

bench_orphans() {
    local d
    newdir; d=$NEWDIR
    setup "$d" 10 fork
    echo "# 10 services, each with a grandchild in its own session; SIGKILL orchd, start it again"
    for ((r = 1; r <= 3; r++)); do
        x "$B/driver" orphans "$ORCHD" "$d/orchd.toml" "$d/fifo" 10 >"$d/o$r"
        echo "run $r: $(tr '\n' ' ' <"$d/o$r")"
    done
}

_status() {
    local sock=$1
    for r in 1 2 3; do
        echo "orchctl status run $r: $(x "$B/execloop" 300 30 "$ORCHCTL" --socket "$sock" status | tr '\n' ' ')"
    done
    x "$ORCHCTL" --socket "$sock" status | head -3
    echo "services: $("$ORCHCTL" --socket "$sock" status | grep -c running)"
    for r in 1 2 3; do
        echo "/bin/true run $r: $(x "$B/execloop" 300 30 /bin/true | tr '\n' ' ')"
    done
    if command -v hyperfine >/dev/null; then
        x hyperfine -N --warmup 20 --runs 300 --style basic \
            "$ORCHCTL --socket $sock status" "/bin/true" 2>&1
    fi
}

bench_status() {
    local d
    newdir; d=$NEWDIR
    setup "$d" 100 hold
    echo "# orchctl status round trip with 100 services, fork+exec+wait (ms)"
    x "$B/driver" up "$ORCHD" "$d/orchd.toml" "$d/fifo" 100 -- "$0" _status "$d/orchd.sock"
}

_socket() {
    local c0 c1 hz
    hz=$(getconf CLK_TCK)
    for r in 1 2 3; do
        c0=$(awk '{print $14+$15}' "/proc/$ORCHD_PID/stat")
        x "$REL/examples/socket_load" "$1" 16 5 1 >"$2.$r"
        c1=$(awk '{print $14+$15}' "/proc/$ORCHD_PID/stat")
        # orchd's CPU over the whole run (warm-up included) per measured request.
        awk -v c="$((c1 - c0))" -v hz="$hz" '$1=="requests" {printf "orchd_cpu_ms %d orchd_cpu_us_per_req %.0f\n", c*1000/hz, c*1e6/hz/($2*6/5)}' "$2.$r" >>"$2.$r"
        echo "run $r: $(tr '\n' ' ' <"$2.$r")"
    done
}

bench_socket() {
    local d
    newdir; d=$NEWDIR
    setup "$d" 100 hold
    echo "# 16 concurrent clients issuing status (100 services), 5 s after 1 s warm-up"
    x "$B/driver" up "$ORCHD" "$d/orchd.toml" "$d/fifo" 100 -- "$0" _socket "$d/orchd.sock" "$d/sock"
    echo "rps: $(cat "$d"/sock.* | field rps | stats)"
    echo "p50_ms: $(cat "$d"/sock.* | field p50_ms | stats)"
    echo "p99_ms: $(cat "$d"/sock.* | field p99_ms | stats)"
}

# Diagnosis, not an issue figure: restart and crash loop with orchd running as `nobody`, where it
# cannot create cgroups and falls back to process group + environment marker (no cgroup.procs
# write per spawn, no instance cgroup to remove).
bench_nocgroup() {
    local d
    newdir; d=$NEWDIR
    chmod 777 "$d"
    printf '#!/bin/sh\nexec setpriv --reuid=65534 --regid=65534 --clear-groups %s "$@"\n' "$ORCHD" >"$B/orchd-nobody"
    chmod +x "$B/orchd-nobody"
    setup "$d" 1 hold '[restart]\ndelay = "0s"\n'
    echo "# as restart and crashloop, orchd as nobody: no cgroups (µs)"
    x "$B/driver" restart "$B/orchd-nobody" "$d/orchd.toml" "$d/fifo" 11 2000 >"$d/out1"
    echo "restart, up 2 s: $(field latency_us <"$d/out1" | tr '\n' ' ')"
    echo "restart, up 2 s: $(field latency_us <"$d/out1" | stats)"
    grep -q 'no writable cgroup' "$d/orchd.log" && echo "(orchd.log: no writable cgroup v2 tree; containing services by process group and environment marker)"
    setup "$d" 1 crash '[restart]\ndelay = "0s"\n'
    x "$B/driver" crashloop "$B/orchd-nobody" "$d/orchd.toml" "$d/fifo" 300 >"$d/out2"
    echo "crash loop: $(field gap_us <"$d/out2" | stats)"
    spawn_failures "$d"
}

# Diagnosis: orchd's PSS against the number of services (KiB; heap = Pss of [heap]).
_pss() {
    local p=$ORCHD_PID
    sleep 1
    echo "pss=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup")" \
        "heap=$(awk '/\[heap\]/ {h=1; next} /^[0-9a-f]+-/ {h=0} h && /^Pss:/ {print $2}' "/proc/$p/smaps")" \
        "anon_rss=$(awk '/^RssAnon/ {print $2}' "/proc/$p/status")" \
        "vmpte=$(awk '/^VmPTE/ {print $2}' "/proc/$p/status")"
}

bench_pss_scale() {
    local d n
    echo "# orchd PSS by number of running services (KiB)"
    for n in 0 1 10 100 200; do
        newdir; d=$NEWDIR
        setup "$d" "$n" hold
        echo "n=$n $(x "$B/driver" up "$ORCHD" "$d/orchd.toml" "$d/fifo" "$n" -- "$0" _pss)"
    done
}

# Diagnosis: the cost of joining a cgroup v2 right after fork, after 500 ms idle and back to back.
bench_cgroup() {
    local root=/sys/fs/cgroup/unified
    [ -f /sys/fs/cgroup/cgroup.subtree_control ] && root=/sys/fs/cgroup
    local g=$root/orch-bench-probe.$$
    echo "# µs from fork/clone3 to the child running in the cgroup (${root})"
    for gap in 500 0; do
        for m in procs clone3 plain; do
            echo "$m, ${gap} ms apart: $(x "$B/cgroup_probe" "$m" "$g" "$gap" 8)"
        done
    done
}

# Diagnosis: what CLONE_INTO_CGROUP adds to a vfork-style spawn, into the same cgroup every
# time or into a new one per spawn (as orchd does), against no cgroup flag (issue 14).
bench_cgroup_spawn() {
    local root=/sys/fs/cgroup/unified
    [ -f /sys/fs/cgroup/cgroup.subtree_control ] && root=/sys/fs/cgroup
    local g=$root/orch-bench-spawn.$$
    mkdir "$g"
    echo "# µs from clone3(CLONE_VFORK) to its return after the child's exec of /bin/true (${root})"
    for r in 1 2 3; do
        echo "run $r: $(x "$B/cgroup_spawn" "$g" 300 | tr '\n' ' ')"
    done
    rmdir "$g"
}

# ---------------------------------------------------------------------------------------------
# Issues 4 and 6: orchd started directly (no stamps to wait for), in the background.

# free_ports N: N distinct free loopback ports (bound to 0 and released at once).
free_ports() {
    python3 -c 'import socket,sys
ss=[socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss: s.bind(("127.0.0.1",0))
print(" ".join(str(s.getsockname()[1]) for s in ss))' "$1"
}

orchd_conf() { # DIR
    mkdir -p "$1/units"
    printf 'units_dir = "units"\nstate_dir = "state"\n[api]\nsocket = "orchd.sock"\nsocket_group = ""\ndbus = "off"\n' >"$1/orchd.toml"
}

ORCHD_BG=
orchd_start() { # DIR → ORCHD_BG = pid, once the socket answers
    local d=$1
    echo "+ $ORCHD --config $d/orchd.toml 2>$d/orchd.log &" >&2
    "$ORCHD" --config "$d/orchd.toml" 2>"$d/orchd.log" &
    ORCHD_BG=$!
    PIDS+=("$ORCHD_BG")
    for _ in $(seq 300); do
        "$ORCHCTL" --socket "$d/orchd.sock" status >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "orchd did not come up; log:" >&2
    tail -20 "$d/orchd.log" >&2
    return 1
}

orchd_stop() { # PID
    kill -TERM "$1" 2>/dev/null || return 0
    for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

cpu_ticks() { # PID… → utime+stime summed, in clock ticks
    local p s=0
    for p in "$@"; do s=$((s + $(awk '{print $14+$15}' "/proc/$p/stat"))); done
    echo "$s"
}
sched_ns() { cat /proc/"$1"/task/*/schedstat | awk '{s+=$1} END {printf "%d", s}'; }

# One run of the health benchmark in DIR: endpoints, units, orchd, wait all healthy, measure.
health_run() {
    local d=$1 n=$2 ep p i hz t0 t1 c0 c1 s0 s1 waited
    hz=$(getconf CLK_TCK)
    ulimit -n "$(ulimit -Hn)" # the endpoints need 2 fds each, orchd 1 per unit (+ its own)
    [ "$(ulimit -n)" -gt $((2 * n + 100)) ] || { echo "ulimit -n $(ulimit -n) is too low for $n endpoints" >&2; return 1; }
    echo "+ $REL/examples/probe_endpoints $n $d/ports 1000 >$d/ep.out &" >&2
    "$REL/examples/probe_endpoints" "$n" "$d/ports" 1000 >"$d/ep.out" &
    ep=$!
    PIDS+=("$ep")
    for _ in $(seq 100); do [ -f "$d/ports" ] && break; sleep 0.1; done
    orchd_conf "$d"
    i=0
    while read -r p; do
        if [ "${HEALTH_KIND:-http}" = tcp ]; then # diagnosis: no HTTP client
            printf '[health]\ntcp = "127.0.0.1:%s"\ninterval = "1s"\n' "$p"
        else
            printf '[health]\nhttp = "http://127.0.0.1:%s/health"\ninterval = "1s"\n' "$p"
        fi \
            >"$d/units/$(printf 'mon%04d' "$i").toml"
        i=$((i + 1))
    done <"$d/ports"
    t0=$EPOCHREALTIME
    orchd_start "$d"
    p=$ORCHD_BG
    waited=0
    while :; do
        i=$("$ORCHCTL" --socket "$d/orchd.sock" --json status | jq '[.services[] | select(.health == "healthy")] | length')
        [ "$i" -ge "$n" ] && break
        waited=$((waited + 1))
        [ $waited -gt 600 ] && { echo "only $i of $n healthy after 60 s" >&2; break; }
        sleep 0.1
    done
    echo "all_healthy_after_ms $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.0f", (b-a)*1000}')"
    sleep 3
    kill -USR1 "$ep"
    t0=$EPOCHREALTIME c0=$(cpu_ticks "$p") s0=$(sched_ns "$p")
    sleep "$HEALTH_SECONDS"
    t1=$EPOCHREALTIME c1=$(cpu_ticks "$p") s1=$(sched_ns "$p")
    # (schedstat sums the live threads only; /proc/PID/stat is the figure)
    awk -v c=$((c1 - c0)) -v hz="$hz" -v a="$t0" -v b="$t1" -v s0="$s0" -v s1="$s1" 'BEGIN {
        printf "orchd_cpu_pct %.2f\norchd_cpu_sched_pct %.2f\n", c/hz/(b-a)*100, (s1-s0)/1e9/(b-a)*100 }'
    awk '/^(VmRSS|VmHWM|RssAnon|RssFile|Threads):/ {print $1, $2}' "/proc/$p/status" | sed 's/://'
    echo "heap_rss $(awk '/\[heap\]/ {h=1; next} /^[0-9a-f]+-/ {h=0} h && /^Rss:/ {print $2}' "/proc/$p/smaps")"
    echo "fds $(ls "/proc/$p/fd" | wc -l)"
    kill -USR2 "$ep"
    wait "$ep" || true
    cat "$d/ep.out"
    # Cross-check from orchd's side: the last 10 probe start times (ms, wall clock) of 50 units.
    for ((i = 0; i < n && i < 50; i++)); do
        "$ORCHCTL" --socket "$d/orchd.sock" --json status "$(printf 'mon%04d' "$i")" |
            jq -r '.services[0].probes[].time'
    done | python3 -c 'import sys, datetime
ts = [datetime.datetime.fromisoformat(l.strip().replace("Z", "+00:00")).timestamp() for l in sys.stdin if l.strip()]
d = sorted(abs((b - a) * 1000 - 1000) for a, b in zip(ts, ts[1:]) if 0 < b - a < 5)
p = lambda q: d[min(len(d) - 1, round(q / 100 * (len(d) - 1)))]
print("status_probes_intervals %d" % len(d))
print("status_probes_drift_p50_ms %.0f\nstatus_probes_drift_p99_ms %.0f\nstatus_probes_drift_max_ms %.0f" % (p(50), p(99), d[-1]))'
    grep -c 'unhealthy' "$d/orchd.log" | sed 's/^/unhealthy_lines_in_log /' || true
    orchd_stop "$p"
}

bench_health() {
    local d r
    rm -f "$RESULTS"/health.run*.txt
    echo "# $HEALTH_UNITS monitor-only units, ${HEALTH_KIND:-http} probe every 1 s against $HEALTH_UNITS loopback endpoints"
    echo "# orchd CPU over ${HEALTH_SECONDS} s (% of one core), RSS (KiB), schedule drift (ms)"
    for ((r = 1; r <= HEALTH_RUNS; r++)); do
        newdir; d=$NEWDIR
        health_run "$d" "$HEALTH_UNITS" >"$d/h"
        echo "run $r: $(tr '\n' ' ' <"$d/h")"
        cp "$d/h" "$RESULTS/health.run$r.txt"
    done
    for k in orchd_cpu_pct orchd_cpu_sched_pct VmRSS VmHWM interval_drift_p99_ms interval_drift_p50_ms \
        interval_drift_max_ms lateness_p99_ms requests_per_s status_probes_drift_p99_ms; do
        echo "$k: $(cat "$RESULTS"/health.run*.txt | field "$k" | stats)"
    done
}

# Issue 6: one orchd with `api` (http proxy) — and `apitcp` (tcp proxy) with tcp=1 — both run
# the fast backend examples/http_ok (or the python test backend with BACKEND=python).
# deploy_setup DIR WATCH TCP → sets LH A B LT C D (ports)
deploy_unit() { # NAME LISTEN MODE PORT_A PORT_B WATCH DIR
    local exec
    if [ "${BACKEND:-rust}" = python ]; then
        exec="exec = [\"python3\", \"$ROOT/tests/support/backend.py\", \"$7\"]"
    else
        exec="exec = [\"$REL/examples/http_ok\"]"
    fi
    printf '%s\nrelease = "v1"\n[health]\nhttp = "http://127.0.0.1:{port}/health"\ninterval = "100ms"\ntimeout = "1s"\nretries = 2\nstart_period = "5s"\n[deploy]\nlisten = "127.0.0.1:%s"\nproxy = "%s"\nports = [%s, %s]\ntimeout = "10s"\nwatch = "%s"\ndrain = "2s"\n' \
        "$exec" "$2" "$3" "$4" "$5" "$6" >"$7/units/$1.toml"
}

wait_serving() { # PORT RELEASE
    for _ in $(seq 200); do
        [ "$(curl -s --max-time 1 "http://127.0.0.1:$1/")" = "$2" ] && return 0
        sleep 0.05
    done
    echo "port $1 does not serve $2" >&2
    return 1
}

# wrk_field FILE → "requests rps non2xx sock_errors lat_avg_ms lat_p50_ms lat_p99_ms"
wrk_summary() {
    awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /requests in/ {req=$1}
    /^Requests\/sec:/ {rps=$2}
    /Non-2xx or 3xx responses:/ {non=$5}
    /Socket errors:/ {gsub(",", ""); se="connect " $4 " read " $6 " write " $8 " timeout " $10; st=$4+$6+$8+$10}
    $1=="Latency" && avg=="" {avg=ms($2)}
    $1=="50%" {p50=ms($2)}
    $1=="99%" {p99=ms($2)}
    END {printf "requests %d rps %.0f non2xx %d socket_errors %d lat_avg_ms %.3f lat_p50_ms %.3f lat_p99_ms %.3f%s\n",
        req, rps, non, st, avg, p50, p99, (se=="" ? "" : " (" se ")")}' "$1"
}

bench_deploy() {
    local d r i out res LH A B wrk_pid ok
    echo "# 10 deploys (watch 1 s, drain 2 s) under wrk -t2 -c32 through the http proxy; backend ${BACKEND:-rust}"
    for ((r = 1; r <= DEPLOY_RUNS; r++)); do
        newdir; d=$NEWDIR
        orchd_conf "$d"
        read -r LH A B <<<"$(free_ports 3)"
        deploy_unit api "$LH" http "$A" "$B" 1s "$d"
        orchd_start "$d"
        wait_serving "$LH" v1
        echo "+ wrk -t2 -c32 -d600s --latency http://127.0.0.1:$LH/ &  (stopped with SIGINT after the deploys)" >&2
        wrk -t2 -c32 -d600s --latency "http://127.0.0.1:$LH/" >"$d/wrk" 2>&1 &
        wrk_pid=$!
        PIDS+=("$wrk_pid")
        sleep 2
        ok=0
        for ((i = 2; i <= 11; i++)); do
            out=$(x "$ORCHCTL" --socket "$d/orchd.sock" --json deploy api --release "v$i" | tail -1) || true
            res=$(jq -r '.result' <<<"$out")
            [ "$res" = succeeded ] && ok=$((ok + 1))
            echo "$(jq -r '"\(.release) \(.result) \(.duration_ms)"' <<<"$out")" >>"$d/deploys"
        done
        sleep 1
        kill -INT "$wrk_pid"
        wait "$wrk_pid" || true
        echo "run $r: deploys_succeeded $ok/10 durations_ms $(awk '{print $3}' "$d/deploys" | tr '\n' ',' | sed 's/,$//')"
        echo "run $r: wrk $(wrk_summary "$d/wrk")"
        echo "run $r: proxy 'request failed' lines in orchd.log: $(grep -c 'proxy request failed' "$d/orchd.log" || true); active: $("$ORCHCTL" --socket "$d/orchd.sock" --json status api | jq -r '.services[0].release')"
        sed 's/^/    | /' "$d/wrk"
        orchd_stop "$ORCHD_BG"
    done
}

nginx_conf() { # DIR HTTP_PORT STREAM_PORT BACKEND_PORT
    cat >"$1/nginx.conf" <<NGINX
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes auto;
pid $1/nginx.pid;
error_log $1/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $1/nginx-body;
    proxy_temp_path $1/nginx-proxy;
    upstream backend { server 127.0.0.1:$4; keepalive 64; }
    server {
        listen 127.0.0.1:$2;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }
}
stream {
    server { listen 127.0.0.1:$3; proxy_pass 127.0.0.1:$4; }
}
NGINX
}

bench_proxy() {
    local d r t LH A B LT C D NH NS ng hz c0 c1 b0 b1 bp tp pids url
    hz=$(getconf CLK_TCK)
    newdir; d=$NEWDIR
    orchd_conf "$d"
    read -r LH A B LT C D NH NS <<<"$(free_ports 8)"
    deploy_unit api "$LH" http "$A" "$B" 1s "$d"
    deploy_unit apitcp "$LT" tcp "$C" "$D" 1s "$d"
    orchd_start "$d"
    wait_serving "$LH" v1
    wait_serving "$LT" v1
    nginx_conf "$d" "$NH" "$NS" "$A"
    echo "+ nginx -c $d/nginx.conf -p $d -g 'daemon off;' &" >&2
    nginx -c "$d/nginx.conf" -p "$d" -g 'daemon off;' &
    ng=$!
    PIDS+=("$ng")
    wait_serving "$NH" v1
    wait_serving "$NS" v1
    local api_pid tcp_pid
    api_pid=$("$ORCHCTL" --socket "$d/orchd.sock" --json status api | jq -r '.services[0].pid')
    tcp_pid=$("$ORCHCTL" --socket "$d/orchd.sock" --json status apitcp | jq -r '.services[0].pid')
    declare -A URL=([direct]=$A [orch-http]=$LH [orch-tcp]=$LT [nginx-http]=$NH [nginx-stream]=$NS)
    local TARGETS=(direct orch-http orch-tcp nginx-http nginx-stream)
    echo "# wrk throughput, 32 connections, ${WRK_SECONDS} s per run, targets interleaved (each run starts one target later); backend examples/http_ok (2 threads)"
    echo "# direct = the api backend (port $A); nginx http/stream proxy to it; orch-tcp's backend is apitcp's own http_ok"
    echo "# proxy CPU = utime+stime of orchd (all of it) / of the nginx master+workers over the wrk run"
    for t in "${TARGETS[@]}"; do # warm-up: connection pools, nginx keepalive upstreams
        wrk -t2 -c32 -d2s "http://127.0.0.1:${URL[$t]}/" >/dev/null 2>&1
    done
    for ((r = 1; r <= PROXY_RUNS; r++)); do
        # Each run starts with another target (direct, orch-http, ... in turn), so no target
        # always follows the same one: the host's state after a heavy run is shared out fairly.
        local order=() i
        for ((i = 0; i < ${#TARGETS[@]}; i++)); do
            order+=("${TARGETS[(i + r - 1) % ${#TARGETS[@]}]}")
        done
        for t in "${order[@]}"; do
            case $t in
            orch-*) pids="$ORCHD_BG" ;;
            nginx-*) pids="$ng $(pgrep -P "$ng" | tr '\n' ' ')" ;;
            *) pids="" ;;
            esac
            if [ "$t" = orch-tcp ]; then bp=$tcp_pid; else bp=$api_pid; fi
            # shellcheck disable=SC2086
            c0=$([ -n "$pids" ] && cpu_ticks $pids || echo 0) b0=$(cpu_ticks "$bp")
            x wrk -t2 -c32 -d"${WRK_SECONDS}s" --latency "http://127.0.0.1:${URL[$t]}/" >"$d/w.$t.$r" 2>&1
            # shellcheck disable=SC2086
            c1=$([ -n "$pids" ] && cpu_ticks $pids || echo 0) b1=$(cpu_ticks "$bp")
            echo "run $r $t: $(wrk_summary "$d/w.$t.$r") $(awk -v c=$((c1 - c0)) -v b=$((b1 - b0)) -v hz="$hz" -v f="$d/w.$t.$r" 'BEGIN {
                while ((getline l < f) > 0) if (l ~ /requests in/) { split(l, a, " "); n = a[1] }
                printf "proxy_cpu_ms_per_1000 %.2f backend_cpu_ms_per_1000 %.2f", c*1000/hz/n*1000, b*1000/hz/n*1000 }')" |
                tee -a "$d/summary"
        done
    done
    echo "# one connection (wrk -t1 -c1 -d5s): latency without queueing"
    for t in "${TARGETS[@]}"; do
        x wrk -t1 -c1 -d5s --latency "http://127.0.0.1:${URL[$t]}/" >"$d/c1.$t" 2>&1
        echo "c1 $t: $(wrk_summary "$d/c1.$t")" | tee -a "$d/summary"
    done
    echo "# medians over the runs; ratio = median rps / median direct rps"
    local direct
    direct=$(grep "^run [0-9]* direct:" "$d/summary" | awk '{for(i=1;i<=NF;i++) if ($i=="rps") print $(i+1)}' | stats | awk '{print $2}')
    for t in "${TARGETS[@]}"; do
        local rps cpu c1avg
        rps=$(grep "^run [0-9]* $t:" "$d/summary" | awk '{for(i=1;i<=NF;i++) if ($i=="rps") print $(i+1)}' | stats | awk '{print $2}')
        cpu=$(grep "^run [0-9]* $t:" "$d/summary" | awk '{for(i=1;i<=NF;i++) if ($i=="proxy_cpu_ms_per_1000") print $(i+1)}' | stats | awk '{print $2}')
        c1avg=$(grep "^c1 $t:" "$d/summary" | awk '{for(i=1;i<=NF;i++) if ($i=="lat_avg_ms") print $(i+1)}')
        echo "$t: rps_median $rps ratio_to_direct $(awk -v a="$rps" -v b="$direct" 'BEGIN {printf "%.2f", a/b}') proxy_cpu_ms_per_1000_median $cpu c1_lat_avg_ms $c1avg"
    done
    kill -TERM "$ng"
    wait "$ng" 2>/dev/null || true
    orchd_stop "$ORCHD_BG"
}

# Instant rollback: a deploy with a 30 s watch; once switched, time `orchctl rollback api`
# (exec → exit, bash $EPOCHREALTIME), then check the proxy already answers with v1.
bench_rollback() {
    local d r LH A B t0 t1 dep out served wrk_pid load
    newdir; d=$NEWDIR
    orchd_conf "$d"
    read -r LH A B <<<"$(free_ports 3)"
    deploy_unit api "$LH" http "$A" "$B" 30s "$d"
    orchd_start "$d"
    wait_serving "$LH" v1
    echo "# instant rollback during the watch window: orchctl rollback api, exec → exit (ms)"
    for load in idle wrk; do
        if [ $load = wrk ]; then
            echo "+ wrk -t1 -c8 -d600s --latency http://127.0.0.1:$LH/ &   (load during these rollbacks)" >&2
            wrk -t1 -c8 -d600s --latency "http://127.0.0.1:$LH/" >"$d/wrk" 2>&1 &
            wrk_pid=$!
            PIDS+=("$wrk_pid")
        fi
        for ((r = 1; r <= RUNS; r++)); do
            "$ORCHCTL" --socket "$d/orchd.sock" --json deploy api --release "rb$r" >"$d/dep.$load.$r" 2>&1 &
            dep=$!
            for _ in $(seq 500); do
                [ "$("$ORCHCTL" --socket "$d/orchd.sock" --json status api | jq -r '.services[0].release')" = "rb$r" ] && break
                sleep 0.02
            done
            sleep 0.2
            t0=$EPOCHREALTIME
            # exits 1: the deploy's result is rolled_back
            out=$("$ORCHCTL" --socket "$d/orchd.sock" --json rollback api | tail -1) || true
            t1=$EPOCHREALTIME
            served=$(curl -s --max-time 1 "http://127.0.0.1:$LH/")
            wait "$dep" || true
            echo "$load run $r: rollback_ms $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", (b-a)*1000}') result $(jq -r .result <<<"$out") served_right_after $served deploy_exit_result $(tail -1 "$d/dep.$load.$r" | jq -r .result)"
        done | tee "$d/rb.$load"
        echo "$load: rollback_ms $(awk '{print $5}' "$d/rb.$load" | stats)"
    done
    kill -INT "$wrk_pid"
    wait "$wrk_pid" || true
    echo "wrk during the wrk rollbacks: $(wrk_summary "$d/wrk")"
    orchd_stop "$ORCHD_BG"
}

# Diagnosis: the release profile with size options (env overrides, equivalent to adding them to
# [profile.release]; Cargo.toml is not touched), built into $CARGO_TARGET_DIR/size; then the
# idle (PSS) and start benchmarks against it, and the binary sizes of both builds.
bench_size_profile() {
    local SZ=$CARGO_TARGET_DIR/size
    (cd "$ROOT" && CARGO_PROFILE_RELEASE_OPT_LEVEL=s CARGO_PROFILE_RELEASE_LTO=true \
        CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 CARGO_PROFILE_RELEASE_PANIC=abort \
        x cargo build --release --quiet --target-dir "$SZ" --bin orchd --bin orchctl)
    echo "# binary sizes (bytes, stripped): default release vs opt-level=s lto codegen-units=1 panic=abort"
    echo "default: orchd $(stat -c %s "$ORCHD") orchctl $(stat -c %s "$ORCHCTL")"
    echo "size:    orchd $(stat -c %s "$SZ/release/orchd") orchctl $(stat -c %s "$SZ/release/orchctl")"
    local ORCHD=$SZ/release/orchd
    echo "## idle with the size profile"
    bench_idle
    echo "## start with the size profile"
    bench_start
}

# Diagnosis: where orchd's http proxy spends its CPU compared with nginx proxy_pass, same
# backend and load (wrk -t2 -c32): perf stat (task clock, context switches, migrations) per
# 1000 requests, and perf record of orchd (kernel symbols; orchd itself is stripped).
bench_proxy_perf() {
    local d LH A B NH NS ng t pids n w url
    newdir; d=$NEWDIR
    orchd_conf "$d"
    read -r LH A B NH NS <<<"$(free_ports 5)"
    deploy_unit api "$LH" http "$A" "$B" 1s "$d"
    orchd_start "$d"
    wait_serving "$LH" v1
    nginx_conf "$d" "$NH" "$NS" "$A"
    nginx -c "$d/nginx.conf" -p "$d" -g 'daemon off;' &
    ng=$!
    PIDS+=("$ng")
    wait_serving "$NH" v1
    for t in orch-http nginx-http; do
        if [ $t = orch-http ]; then url=$LH pids=$ORCHD_BG; else url=$NH pids="$ng,$(pgrep -P "$ng" | paste -sd,)"; fi
        wrk -t2 -c32 -d2s "http://127.0.0.1:$url/" >/dev/null 2>&1
        wrk -t2 -c32 -d10s "http://127.0.0.1:$url/" >"$d/w.$t" 2>&1 &
        w=$!
        sleep 1
        x perf stat -x, -e task-clock,context-switches,cpu-migrations,syscalls:sys_enter_futex,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_writev,syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_write,syscalls:sys_enter_read -p "$pids" -- sleep 8 2>"$d/stat.$t" || true
        wait "$w"
        n=$(awk '/requests in/ {print $1}' "$d/w.$t")
        echo "$t: wrk $(wrk_summary "$d/w.$t")"
        # perf stat covered 8 of wrk's 10 s: scale by 0.8 of wrk's requests
        awk -F, -v n="$n" '$1 ~ /^[0-9.]+$/ {printf "  %s per 1000 requests: %.1f\n", $3, $1/(n*0.8)*1000}' "$d/stat.$t"
    done
    wrk -t2 -c32 -d8s "http://127.0.0.1:$LH/" >/dev/null 2>&1 &
    w=$!
    sleep 1
    x perf record -q -o "$d/perf.data" -p "$ORCHD_BG" -- sleep 5 2>/dev/null || true
    wait "$w"
    echo "# orchd under orch-http load: top symbols (perf report --sort dso,sym; orchd is stripped)"
    perf report -q -i "$d/perf.data" --sort dso,sym 2>/dev/null | head -30 || true
    kill -TERM "$ng"
    wait "$ng" 2>/dev/null || true
    orchd_stop "$ORCHD_BG"
}

# Issue 5 figures (from the alerts work), re-run: crash → webhook receiver latency (9 crashes,
# integration test with a real receiver; debug build as `cargo test` makes it) and the
# 10-minute crash loop with repeat_interval = 1h (unit test on a paused clock).
# Diagnosis: user-space instructions per proxied request, orch-http vs nginx proxy_pass, with
# valgrind's callgrind (deterministic, unlike wall-clock CPU on a shared VM: use it to compare
# two builds of the proxy). Instrumentation is switched on only around a 5 s wrk -t1 -c8 run.
# nginx runs as one process (master_process off) so one callgrind sees all of it. Kernel time is
# not counted: both make the same system calls per request (4, see proxy_perf).
_callgrind_per_request() { # NAME PORT OUT_PREFIX PID → "NAME: requests N user_instructions I per_request P"
    local name=$1 url=$2 out=$3 n ir f
    wrk -t1 -c8 -d2s "http://127.0.0.1:$url/" >/dev/null 2>&1
    callgrind_control -i on "$4" >/dev/null 2>&1
    wrk -t1 -c8 -d5s "http://127.0.0.1:$url/" >"$out.wrk" 2>&1
    callgrind_control -i off "$4" >/dev/null 2>&1
    callgrind_control -d "$4" >/dev/null 2>&1
    n=$(awk '/requests in/ {print $1}' "$out.wrk")
    f=$(ls "$out".*.1)
    ir=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    echo "$name: requests $n user_instructions $ir per_request $((ir / n))"
}

bench_proxy_instructions() {
    local d LH A B NH NS vg ng
    newdir; d=$NEWDIR
    orchd_conf "$d"
    read -r LH A B NH NS <<<"$(free_ports 5)"
    deploy_unit api "$LH" http "$A" "$B" 1s "$d"
    echo "+ valgrind --tool=callgrind --instr-atstart=no $ORCHD --config $d/orchd.toml &" >&2
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$d/cg-orchd.%p" \
        "$ORCHD" --config "$d/orchd.toml" 2>"$d/orchd.log" &
    vg=$!
    PIDS+=("$vg")
    wait_serving "$LH" v1
    _callgrind_per_request orch-http "$LH" "$d/cg-orchd" "$vg"
    nginx_conf "$d" "$NH" "$NS" "$A"
    sed -i 's/^worker_processes auto;/master_process off; worker_processes 1;/' "$d/nginx.conf"
    echo "+ valgrind --tool=callgrind --instr-atstart=no nginx -c $d/nginx.conf -p $d -g 'daemon off;' &" >&2
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$d/cg-nginx.%p" \
        nginx -c "$d/nginx.conf" -p "$d" -g 'daemon off;' 2>"$d/nginx-valgrind.log" &
    ng=$!
    PIDS+=("$ng")
    wait_serving "$NH" v1
    _callgrind_per_request nginx-http "$NH" "$d/cg-nginx" "$ng"
    kill -TERM "$ng" "$vg"
    wait "$ng" "$vg" 2>/dev/null || true
}

bench_alerts() {
    (cd "$ROOT" && x cargo test --test it latency -- --nocapture 2>&1 | grep -E 'latency ms|test result')
    (cd "$ROOT" && x cargo test --lib ten_minute 2>&1 | grep -E 'test result|ten_minute')
}

_metrics() {
    local port=$1 hz c0 c1 n
    hz=$(getconf CLK_TCK)
    echo "exposition: $(curl -s "http://127.0.0.1:$port/metrics" | wc -c) bytes, $(curl -s "http://127.0.0.1:$port/metrics" | grep -vc '^#') samples"
    for r in 1 2 3; do
        c0=$(awk '{print $14+$15}' "/proc/$ORCHD_PID/stat")
        x wrk -t1 -c1 -d5s --latency "http://127.0.0.1:$port/metrics" >"$2.$r"
        c1=$(awk '{print $14+$15}' "/proc/$ORCHD_PID/stat")
        n=$(awk '/requests in/ {print $1}' "$2.$r")
        echo "run $r: scrapes $n p50 $(awk '$1=="50%" {print $2}' "$2.$r") p99 $(awk '$1=="99%" {print $2}' "$2.$r") orchd_cpu_us_per_scrape $(awk -v c="$((c1 - c0))" -v hz="$hz" -v n="$n" 'BEGIN {printf "%.0f", c*1e6/hz/n}')"
    done
}

bench_metrics() {
    local d port
    newdir; d=$NEWDIR
    setup "$d" 100 hold
    port=$(free_ports 1)
    printf '[metrics]\nlisten = "127.0.0.1:%s"\n' "$port" >>"$d/orchd.toml"
    echo "# GET /metrics with 100 services, one keep-alive connection back to back (wrk -t1 -c1, 5 s)"
    x "$B/driver" up "$ORCHD" "$d/orchd.toml" "$d/fifo" 100 -- "$0" _metrics "$port" "$d/wrk"
}

ALL=(restart crashloop start stop idle orphans status socket metrics health deploy proxy rollback alerts)

case "${1:-}" in
_idle | _status | _socket | _metrics | _pss)
    f=$1
    shift
    "$f" "$@"
    exit
    ;;
esac

names=("$@")
[ ${#names[@]} -eq 0 ] && names=("${ALL[@]}")
for n in "${names[@]}"; do
    declare -F "bench_$n" >/dev/null || { echo "unknown benchmark: $n (have: ${ALL[*]})" >&2; exit 2; }
done
build
echo "# $(date -u +%FT%TZ) $(uname -r) $(nproc) cores; load: $(cut -d' ' -f1-3 /proc/loadavg); $(git -C "$ROOT" rev-parse --short HEAD)"
for n in "${names[@]}"; do
    echo
    echo "## $n"
    # In this shell, not a pipeline's subshell: the temp dirs and background processes the
    # benchmark records in TMPS/PIDS must reach the EXIT trap.
    "bench_$n" > >(tee "$RESULTS/$n.txt") 2>&1
    wait $!
done
