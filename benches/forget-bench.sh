#!/usr/bin/env bash
# The service's memory after an editable runtime made and deleted N files
# (a long build's temporary files), for two builds side by side in one run.
# Each build gets its own service and temp dirs; one runtime of `-` creates,
# closes and deletes N files in a row, then reads the service's VmRSS while
# it still runs (the overlay is alive), and again after a pause of 2 s (the
# kernel's FORGETs are in).
# Usage: benches/forget-bench.sh [N (1000000)] [BEFORE_BIN_DIR] [AFTER_BIN_DIR]
# (defaults: both target/release, built here).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}
after=${3:-${CARGO_TARGET_DIR:-$PWD/target}/release}
before=${2:-$after}
[ -n "${3:-}" ] || cargo build --release -q
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
for build in before after; do
    bin=${!build}
    work=$(mktemp -d /tmp/spfs-forget-bench.XXXXXX)
    export SPFS_RUNTIME_DIR=$work/run SPFS_LOG_DIR=$work/log SPFS_MOUNTPOINT=$work/mnt
    export SPFS_STORAGE_ROOT=$work/repo SPFS_SCRATCH_DIR=$work/scratch XDG_CONFIG_HOME=$work/config
    export SPFS_FUSE_SERVICE_BIN=$bin/spfs-fuse-macos M=$work/mnt N=$n
    "$bin/spfs" service start >/dev/null 2>&1
    pid=$(cat "$SPFS_RUNTIME_DIR/service.pid")
    export SERVICE_PID=$pid
    idle=$(rss "$pid")
    start=$(date +%s.%N)
    read -r done_rss settled <<<"$("$bin/spfs" run - -- python3 -c '
import os, time
d, n, pid = os.environ["M"], int(os.environ["N"]), os.environ["SERVICE_PID"]
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return line.split()[1]
for i in range(n):
    p = f"{d}/tmp.{i}"
    open(p, "w").close()
    os.unlink(p)
first = rss()
time.sleep(2)
print(first, rss())
')"
    end=$(date +%s.%N)
    "$bin/spfs" service stop >/dev/null 2>&1 || true
    printf '%-6s N=%d  idle %6d KiB  after the loop %7d KiB  2 s later %7d KiB  (%.0f s)\n' \
        "$build" "$n" "$idle" "$done_rss" "$settled" "$(echo "$end - $start" | bc)"
    rm -rf "$work"
done
