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
# Diagnosis only (not in the default set): nocgroup, cgroup, pss_scale
#
# Builds the release binaries (cargo build --release) and the C helpers in bench/*.c, then runs
# each benchmark against a real orchd in a temp dir (config as tests/it/util.rs writes it).
# Every command it runs is echoed with a leading "+ "; results also go to
# $CARGO_TARGET_DIR/bench/results/NAME.txt. Env: RUNS (default 5), IDLE_SECONDS (60).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
REL=$CARGO_TARGET_DIR/release
B=$CARGO_TARGET_DIR/bench
RESULTS=$B/results
RUNS=${RUNS:-5}
IDLE_SECONDS=${IDLE_SECONDS:-60}
ORCHD=$REL/orchd
ORCHCTL=$REL/orchctl

x() { echo "+ $*" >&2; "$@"; }

build() {
    mkdir -p "$B" "$RESULTS"
    (cd "$ROOT" && x cargo build --release --quiet --bin orchd --bin orchctl --example socket_load)
    if ! x gcc -O2 -static -o "$B/stamp" "$ROOT/bench/stamp.c"; then
        x gcc -O2 -o "$B/stamp" "$ROOT/bench/stamp.c"
    fi
    x gcc -O2 -Wall -o "$B/driver" "$ROOT/bench/driver.c"
    x gcc -O2 -Wall -o "$B/execloop" "$ROOT/bench/execloop.c"
    x gcc -O2 -Wall -o "$B/cgroup_probe" "$ROOT/bench/cgroup_probe.c"
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
newdir() {
    local d
    d=$(mktemp -d /tmp/orch-bench.XXXXXX)
    TMPS+=("$d")
    echo "$d"
}
cleanup() {
    local d c
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
    d=$(newdir)
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
    d=$(newdir)
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
    d=$(newdir)
    setup "$d" 100 hold
    echo "# start of 100 services: orchd exec → last service's first instruction (ms)"
    startstop "$d" 100
    echo "start_ms: $(cat "$d"/ss* | field start_ms | stats)"
    echo "first_ms: $(cat "$d"/ss* | field first_ms | stats)"
    echo "stop_ms (100 services): $(cat "$d"/ss* | field stop_ms | stats)"
}

bench_stop() {
    local d
    d=$(newdir)
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
    sched() { cat /proc/"$p"/task/*/schedstat | awk '{s+=$1} END {print s}'; }
    ctxt() { cat /proc/"$p"/task/*/status | awk '/^(non)?voluntary_ctxt_switches/ {s+=$2} END {print s}'; }
    {
        echo "threads $(ls /proc/"$p"/task | wc -l)"
        awk '/^(Rss|Pss|Pss_Anon|Pss_File|Private_Dirty):/ {print $1, $2}' "/proc/$p/smaps_rollup" | sed 's/://'
        local c0 s0 x0 c1 s1 x1 hz
        hz=$(getconf CLK_TCK)
        c0=$(cpu) s0=$(sched) x0=$(ctxt)
        sleep "$IDLE_SECONDS"
        c1=$(cpu) s1=$(sched) x1=$(ctxt)
        echo "cpu_ticks_ms $(((c1 - c0) * 1000 / hz))"
        echo "cpu_sched_ms $(awk -v a="$s0" -v b="$s1" 'BEGIN {printf "%.2f", (b-a)/1e6}')"
        echo "ctxt_switches $((x1 - x0))"
        echo "Pss_after $(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup")"
    } >"$out"
    # For the diagnosis: the biggest mappings by Pss.
    awk '/^[0-9a-f]+-[0-9a-f]+ / {m=$6; if (m=="") m="[anon]"} /^Pss:/ {s[m]+=$2} END {for (k in s) print s[k], k}' \
        "/proc/$p/smaps" | sort -rn | head -8 >"$out.maps"
}

bench_idle() {
    local d
    d=$(newdir)
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
    d=$(newdir)
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
    d=$(newdir)
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
    d=$(newdir)
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
    d=$(newdir)
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
        d=$(newdir)
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

ALL=(restart crashloop start stop idle orphans status socket)

case "${1:-}" in
_idle | _status | _socket | _pss)
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
    "bench_$n" 2>&1 | tee "$RESULTS/$n.txt"
done
