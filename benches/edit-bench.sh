#!/usr/bin/env bash
# Editable runtimes against read-only ones and native, and what the kernel
# cache TTL of editable views costs, side by side in one run:
#   native     a plain directory (a fresh copy of the layers every round)
#   ro         `spfs run tree+big`      (read-only view; writes not measured)
#   edit       `spfs run -e tree+big`   (overlay, default TTLs: EDIT_TTL below the root, 60 s now)
#   edit-ttl0  `spfs run -e tree+big` with SPFS_KERNEL_CACHE=off in the
#              service's environment (every TTL 0: no kernel caching)
# Workloads (benches/edit_probe.py): warm walk with lstat of every entry
# (and `find -printf %s`), stat of a file 20 directories deep, 100 MiB read
# twice, 2,000 creates in new directories, `cp -a` and `rm -rf` of them,
# copy-up (open for append) of 1,000 layer files, untar of the tree.
# Every runtime is new, so every round starts from an empty scratch.
# Writes go to disk natively and to the scratch directory, both in WORKDIR;
# on a disk shared with other work, write timings are the disk's more than
# the filesystem's: a WORKDIR on tmpfs (/dev/shm) shows the FUSE and overlay
# cost alone.
# Usage: benches/edit-bench.sh [WORKDIR (default /dev/shm/spfs-edit-bench)] [ROUNDS (5)]
# Writes target/bench-results/edit.json (medians and every round).
set -euo pipefail
cd "$(dirname "$0")/.."
default_work=/tmp/spfs-edit-bench
[ -d /dev/shm ] && default_work=/dev/shm/spfs-edit-bench
work=${1:-$default_work} rounds=${2:-5}
bin=${CARGO_TARGET_DIR:-$PWD/target}/release
cargo build --release -q
spfs=$bin/spfs
mkdir -p "$work/layers"
# Everything spfs reads or writes stays in WORKDIR.
export SPFS_STORAGE_ROOT=$work/repo XDG_CONFIG_HOME=$work/config
export SPFS_FUSE_SERVICE_BIN=$bin/spfs-fuse-macos
tree=$work/layers/tree big=$work/layers/big
python3 benches/bench_layers.py tree "$tree"
if [ ! -f "$big/data/100mib.bin" ]; then
    mkdir -p "$big/data"
    head -c 104857600 /dev/urandom > "$big/data/100mib.bin"
fi
[ -f "$work/tree.tar" ] || tar -cf "$work/tree.tar" -C "$tree" .
"$spfs" commit --path "$tree" -t tree >/dev/null 2>&1
"$spfs" commit --path "$big" -t big >/dev/null 2>&1
deep_rel=$(cd "$tree" && find . -name leaf00.txt | sed 's|^\./||')
results=$work/results.jsonl
: > "$results"

load() { cut -d' ' -f1 /proc/loadavg; }

record() { # NAME JSON LOAD_BEFORE
    python3 -c 'import json,sys; r=json.loads(sys.argv[2]); r["name"]=sys.argv[1]; r["load"]=float(sys.argv[3]); r["load_after"]=float(sys.argv[4]); print(json.dumps(r))' \
        "$1" "$2" "$3" "$(load)" >> "$results"
}

measure() { # NAME EDIT(yes|no) KERNEL_CACHE(on|off)
    local name=$1 edit=$2 cache=$3
    export SPFS_KERNEL_CACHE=$cache
    export SPFS_RUNTIME_DIR=$work/$name/run SPFS_LOG_DIR=$work/$name/log
    export SPFS_MOUNTPOINT=$work/$name/mnt SPFS_SCRATCH_DIR=$work/$name/scratch
    mkdir -p "$SPFS_MOUNTPOINT"
    # The service reads SPFS_KERNEL_CACHE when it starts: a new one each time.
    "$spfs" service stop --force >/dev/null 2>&1 || true
    "$spfs" service start >/dev/null
    local flags=() ro=() l out
    [ "$edit" = yes ] && flags=(-e)
    [ "$edit" = no ] && ro=(--read-only)
    sync -f "$work"
    l=$(load)
    out=$("$spfs" run "${flags[@]}" tree+big -- python3 benches/edit_probe.py \
        "$SPFS_MOUNTPOINT" "$deep_rel" data/100mib.bin "$work/tree.tar" "${ro[@]}")
    "$spfs" service stop --force >/dev/null
    record "$name" "$out" "$l"
}

cleanup() {
    for name in ro edit edit-ttl0; do
        [ -d "$work/$name/run" ] || continue
        SPFS_RUNTIME_DIR=$work/$name/run SPFS_LOG_DIR=$work/$name/log \
            SPFS_MOUNTPOINT=$work/$name/mnt SPFS_SCRATCH_DIR=$work/$name/scratch \
            "$spfs" service stop --force >/dev/null 2>&1 || true
    done
}
trap cleanup EXIT

for round in $(seq "$rounds"); do
    echo "round $round: native (load $(load))" >&2
    native=$work/native
    rm -rf "$native"
    mkdir -p "$native"
    cp -a "$tree/." "$big/." "$native/"
    # The copy's writeback must not land in the timings.
    sync -f "$work"
    l=$(load)
    record native "$(python3 benches/edit_probe.py "$native" "$deep_rel" data/100mib.bin "$work/tree.tar")" "$l"
    for config in "ro no on" "edit yes on" "edit-ttl0 yes off"; do
        set -- $config
        echo "round $round: $1 (load $(load))" >&2
        measure "$1" "$2" "$3"
        # Runtimes that ended leave their scratch behind only when kept; make sure.
        rm -rf "$work/$1/scratch"
    done
done

python3 - "$results" <<'PY'
import json, os, platform, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
names = ["native", "ro", "edit", "edit-ttl0"]
def med(name, key):
    v = [r[key] for r in rows if r["name"] == name and key in r]
    return statistics.median(v) if v else None
measures = [
    ("(a) warm walk + lstat, 10,101 entries, ms", "walk_warm_s", 1000),
    ("(a) the same after 1.5 s idle, ms", "walk_idle_s", 1000),
    ("(a) `find -printf %s`, warm, ms", "find_warm_s", 1000),
    ("(a) first walk in the runtime, ms", "walk_first_s", 1000),
    ("(b) stat, file 20 dirs deep, us", "stat_deep_us", 1),
    ("(b) the same, once after 1.5 s idle, us", "stat_deep_after_idle_us", 1),
    ("(c) read 100 MiB, first, MiB/s", "read_first_mib_s", 1),
    ("(c) read 100 MiB, second, MiB/s", "read_second_mib_s", 1),
    ("(d) create 2,000 files in 20 new dirs, ms", "create_2000_s", 1000),
    ("(d) cp -a of them, ms", "cp_a_2000_s", 1000),
    ("(d) rm -rf of the copy, ms", "rm_rf_2000_s", 1000),
    ("(e) append to 1,000 layer files (copy-up), ms", "append_1000_s", 1000),
    ("(e) the same files again, ms", "append_1000_again_s", 1000),
    ("(f) untar 10,101 entries, ms", "untar_s", 1000),
    ("walk after the writes (~22,000 entries), ms", "walk_after_writes_s", 1000),
]
fmt = lambda x: "n/a" if x is None else (f"{x:,.0f}" if x >= 100 else f"{x:.2f}" if x < 10 else f"{x:.1f}")
print("| measure | native | read-only | editable (default TTLs) | editable, TTL 0 | editable / read-only | TTL 0 / default |")
print("|---|---:|---:|---:|---:|---:|---:|")
out = []
for label, key, scale in measures:
    v = {n: (med(n, key) * scale if med(n, key) is not None else None) for n in names}
    ratio = lambda a, b: f"{a / b:.2f}" if a is not None and b else ""
    print(f"| {label} | " + " | ".join(fmt(v[n]) for n in names)
          + f" | {ratio(v['edit'], v['ro'])} | {ratio(v['edit-ttl0'], v['edit'])} |")
    out.append({"measure": label, "key": key, **v})
loads = [r["load"] for r in rows] + [r["load_after"] for r in rows]
print(f"\nrounds: {len([r for r in rows if r['name'] == 'native'])}; 1-min load during the run: {min(loads):.2f}-{max(loads):.2f}")
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
os.makedirs("target/bench-results", exist_ok=True)
json.dump({"machine": {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
                       "load_min": min(loads), "load_max": max(loads)},
           "medians": out, "rounds": rows},
          open("target/bench-results/edit.json", "w"), indent=2)
PY
