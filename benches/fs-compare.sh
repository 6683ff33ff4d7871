#!/usr/bin/env bash
# Side by side in one run: native, and two builds of spfs (BEFORE, AFTER), on
# the same repository. Measures what docs/performance.md's filesystem table
# lists: stat by absolute path, a missing name below the root, warm walks of
# ~2,000 and 10,101 entries, the second read of 1 GiB, Mount of a
# 100,000-entry layer for a first and a second runtime, and the service's RSS
# idle and after six runtimes of that layer have come and gone. AFTER runs
# twice: as is, and with the kernel's entry cache off below the root
# (SPFS_KERNEL_CACHE=off), which is what macFUSE with novncache costs.
# Usage: benches/fs-compare.sh BEFORE_BIN_DIR AFTER_BIN_DIR [WORKDIR] [ROUNDS]
#   *_BIN_DIR hold release `spfs` and `spfs-fuse-macos` (target/release).
# Writes target/bench-results/fs-compare.json. Run as root (drops caches).
set -euo pipefail
cd "$(dirname "$0")/.."
before=$1 after=$2 work=${3:-/tmp/spfs-fs-compare} rounds=${4:-3}
mkdir -p "$work/layers"
export SPFS_STORAGE_ROOT=$work/repo
big=$work/layers/big tree=$work/layers/tree huge=$work/layers/huge
if [ ! -f "$big/data/one-gib.bin" ]; then
    mkdir -p "$big/data"
    head -c 1073741824 /dev/urandom > "$big/data/one-gib.bin"
fi
python3 benches/bench_layers.py tree "$tree"
python3 benches/bench_layers.py huge "$huge"
for layer in big tree huge; do
    "$after/spfs" commit --path "$work/layers/$layer" -t "bench/$layer" >/dev/null 2>&1
done
deep_rel=$(cd "$tree" && find . -name leaf00.txt | sed 's|^\./||')
drop=""
[ "$(id -u)" -eq 0 ] && drop="--drop-caches"
results=$work/results.jsonl
: > "$results"
probe() { python3 benches/fs_probe.py "$@"; }

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

measure() { # NAME BIN_DIR [SPFS_KERNEL_CACHE]
    local name=$1 bin=$2
    export SPFS_KERNEL_CACHE=${3:-on}
    export SPFS_RUNTIME_DIR=$work/$name/run SPFS_LOG_DIR=$work/$name/log SPFS_MOUNTPOINT=$work/$name/mnt
    export SPFS_FUSE_SERVICE_BIN=$bin/spfs-fuse-macos
    # Views linger 2 s after their last runtime (builds before that setting
    # free them at once): the RSS below is read once they are all freed.
    export SPFS_VIEW_LINGER=2
    rm -rf "$SPFS_LOG_DIR"
    "$bin/spfs" service start >/dev/null
    local pid idle
    pid=$(cat "$SPFS_RUNTIME_DIR/service.pid")
    idle=$(rss_kib "$pid")
    local fs
    fs=$("$bin/spfs" run bench/big+bench/tree -- python3 benches/fs_probe.py "$SPFS_MOUNTPOINT" data/one-gib.bin top.txt "$deep_rel" $drop)
    # Two runtimes of the 100,000-entry layer at once, then four more in turn
    # (each after the one before ended, as in a script).
    "$bin/spfs" run bench/huge -- sleep 2 &
    local first=$!
    sleep 1
    "$bin/spfs" run bench/huge -- true
    wait $first
    for _ in 1 2 3 4; do "$bin/spfs" run bench/huge -- true; done
    sleep 4
    local after_rss
    after_rss=$(rss_kib "$pid")
    "$bin/spfs" service stop >/dev/null
    python3 - "$name" "$fs" "$idle" "$after_rss" "$SPFS_LOG_DIR" >> "$results" <<'PY'
import glob, json, os, sys
name, fs, idle, after, log_dir = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
mounts = []
for path in sorted(glob.glob(os.path.join(log_dir, "spfs-fuse-macos.2*.log"))):
    for line in open(path):
        e = json.loads(line)
        if e.get("event") == "service.mount" and e.get("env_spec") == "bench/huge":
            mounts.append(e["elapsed_ms"])
import statistics
fs.update({"name": name, "mount_first_ms": mounts[0], "mount_second_ms": mounts[1],
           "mount_next_ms": statistics.median(mounts[2:6]),
           "rss_idle_mib": idle / 1024, "rss_after_mib": after / 1024})
print(json.dumps(fs))
PY
}

for round in $(seq "$rounds"); do
    echo "round $round: native" >&2
    native_tree=$(probe "$tree" top.txt top.txt "$deep_rel" $drop)
    native_big=$(probe "$big" data/one-gib.bin data/one-gib.bin data/one-gib.bin $drop)
    python3 -c 'import json,sys; t=json.loads(sys.argv[1]); b=json.loads(sys.argv[2]); t["read_second_mib_s"]=b["read_second_mib_s"]; t["name"]="native"; print(json.dumps(t))' "$native_tree" "$native_big" >> "$results"
    for build in before after nocache; do
        echo "round $round: $build" >&2
        case $build in
            before) measure before "$before" ;;
            after) measure after "$after" ;;
            # Entries and attributes below the root not cached by the kernel:
            # what macOS with novncache costs.
            nocache) measure nocache "$after" off ;;
        esac
    done
done

python3 - "$results" <<'PY'
import json, os, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(name, key):
    values = [r[key] for r in rows if r["name"] == name and key in r]
    return statistics.median(values) if values else float("nan")
measures = [
    ("stat, file in the root, us", "stat_root_us"),
    ("stat, file 20 dirs deep, us", "stat_deep_us"),
    ("missing name below the root, absolute path, us", "missing_us"),
    ("missing name, relative to its directory, us", "missing_rel_us"),
    ("stat of a file relative to its directory, us", "stat_rel_us"),
    ("warm walk, ~2,000 entries, ms", "walk_small_warm_s"),
    ("warm walk, 10,101 entries, ms", "walk_warm_s"),
    ("second read of 1 GiB, MiB/s", "read_second_mib_s"),
    ("Mount of 100,000 entries, first runtime, ms", "mount_first_ms"),
    ("Mount of the same stack, second runtime, ms", "mount_second_ms"),
    ("Mount of the same stack after the last runtime ended, ms (median of 4 in turn)", "mount_next_ms"),
    ("service RSS idle, MiB", "rss_idle_mib"),
    ("service RSS after 6 runtimes of it ended, MiB", "rss_after_mib"),
]
print("| measure | native | before | after | after, kernel cache off | before / native | after / native | cache off / native |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
out = []
for label, key in measures:
    scale = 1000 if key.startswith("walk") else 1
    n, b, a, c = (med(x, key) * scale for x in ("native", "before", "after", "nocache"))
    ratio = lambda x: x / n if n == n and n else float("nan")
    print(f"| {label} | {n:.2f} | {b:.2f} | {a:.2f} | {c:.2f} | {ratio(b):.2f} | {ratio(a):.2f} | {ratio(c):.2f} |")
    out.append({"measure": label, "native": n, "before": b, "after": a, "cache_off": c})
os.makedirs("target/bench-results", exist_ok=True)
json.dump({"rounds": rows, "medians": out}, open("target/bench-results/fs-compare.json", "w"), indent=2)
PY
