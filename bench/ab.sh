#!/usr/bin/env bash
# Paired A/B of two orchd builds on the restart, crash-loop and start-up figures, alternating
# run by run so that both see the same moments of a noisy machine.
#
# usage: bench/ab.sh OLD_TARGET_DIR NEW_TARGET_DIR [PAIRS]     (PAIRS: default 10)
#
# Each target dir needs release/orchd (cargo build --release) and bench/{stamp,driver} (as
# bench/run.sh's build makes them; the NEW dir's helpers are used for both builds). Per pair and
# build: `driver restart … 6 2000` (6 kills, service up 2 s), `driver crashloop … 300`, `driver
# startstop … 100`, with the units bench/run.sh's `setup` writes; the order of the two builds
# alternates from pair to pair. Prints one line per measurement, "BUILD KIND VALUE" (old|new;
# restart_us, crashloop_us, start_ms, first_ms, stop_ms), after a "# pair N BUILD TIME load L"
# line, and the spawn failures in each orchd.log at the end.
set -euo pipefail

[ $# -ge 2 ] || { echo "usage: $0 OLD_TARGET_DIR NEW_TARGET_DIR [PAIRS]" >&2; exit 2; }
declare -A ORCHD=([old]=$1/release/orchd [new]=$2/release/orchd)
STAMP=$2/bench/stamp
DRIVER=$2/bench/driver
PAIRS=${3:-10}

W=$(mktemp -d /tmp/orch-ab.XXXXXX)
cleanup() {
    local c
    # orchd leaves its (empty) per-state-dir cgroup behind: remove ours, as named in its logs.
    for c in $(grep -ohE '/sys/fs/cgroup/[^ ]*orch\.[0-9a-f]{12}' "$W"/*/orchd.log 2>/dev/null | sort -u); do
        rmdir "$c"/*/ "$c" 2>/dev/null || true
    done
    rm -rf "$W"
}
trap cleanup EXIT

setup() { # DIR N MODE [EXTRA_UNIT_TOML], as bench/run.sh
    local dir=$1 n=$2 mode=$3 extra=${4:-}
    mkdir -p "$dir/units"
    printf 'units_dir = "units"\nstate_dir = "state"\n[api]\nsocket = "orchd.sock"\nsocket_group = ""\ndbus = "off"\n' >"$dir/orchd.toml"
    for ((i = 0; i < n; i++)); do
        printf 'exec = ["%s", "%s", "%s"]\n%b' "$STAMP" "$dir/fifo" "$mode" "$extra" \
            >"$dir/units/$(printf 'svc%03d' "$i").toml"
    done
}

for b in old new; do
    setup "$W/$b-restart" 1 hold '[restart]\ndelay = "0s"\n'
    setup "$W/$b-crash" 1 crash '[restart]\ndelay = "0s"\n'
    setup "$W/$b-start" 100 hold
done
echo "# $(date -u +%FT%TZ) $(uname -r) $(nproc) cores; old ${ORCHD[old]}; new ${ORCHD[new]}"
for ((i = 1; i <= PAIRS; i++)); do
    order="old new"
    ((i % 2 == 0)) && order="new old"
    for b in $order; do
        echo "# pair $i $b $(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg)"
        "$DRIVER" restart "${ORCHD[$b]}" "$W/$b-restart/orchd.toml" "$W/$b-restart/fifo" 6 2000 |
            awk -v b="$b" '$1=="latency_us" {print b, "restart_us", $2}'
        "$DRIVER" crashloop "${ORCHD[$b]}" "$W/$b-crash/orchd.toml" "$W/$b-crash/fifo" 300 |
            awk -v b="$b" '$1=="gap_us" {print b, "crashloop_us", $2}'
        "$DRIVER" startstop "${ORCHD[$b]}" "$W/$b-start/orchd.toml" "$W/$b-start/fifo" 100 |
            awk -v b="$b" '{print b, $1, $2}'
    done
done
for b in old new; do
    for d in restart crash start; do
        echo "$b $d spawn_failures $(grep -c 'cannot run' "$W/$b-$d/orchd.log" || true)"
    done
done
