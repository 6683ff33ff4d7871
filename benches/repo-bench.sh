#!/usr/bin/env bash
# Repository benchmark: `spfs commit --path` of a 100,000-file tree (files per
# second), and `Mount` of that layer (the service's own `service.mount`
# elapsed_ms, median of 5) against a Mount of the empty environment.
# Usage: benches/repo-bench.sh [WORKDIR]   Writes target/bench-results/repo.json.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/spfs-repo-bench}
cargo build --release -q
spfs=$PWD/target/release/spfs
rm -rf "$work/repo" "$work/run" "$work/log"
export SPFS_RUNTIME_DIR=$work/run SPFS_LOG_DIR=$work/log SPFS_MOUNTPOINT=$work/mnt SPFS_STORAGE_ROOT=$work/repo
# Every Mount builds its view: none lingers from the run before.
export SPFS_VIEW_LINGER=0
tree=$work/tree
python3 benches/bench_layers.py huge "$tree"
entries=$(find "$tree" -mindepth 1 | wc -l)
files=$(find "$tree" -type f | wc -l)

start=$(date +%s.%N)
"$spfs" commit --path "$tree" -t bench/tree >/dev/null 2>&1
end=$(date +%s.%N)
again_start=$(date +%s.%N)
"$spfs" commit --path "$tree" -t bench/tree >/dev/null 2>&1
again_end=$(date +%s.%N)

"$spfs" service start >/dev/null
for _ in 1 2 3 4 5; do
    "$spfs" run bench/tree -- true
    "$spfs" run - -- true
done
"$spfs" service stop >/dev/null

python3 - "$start" "$end" "$again_start" "$again_end" "$files" "$entries" "$SPFS_LOG_DIR" <<'PY'
import json, os, sys, glob, statistics
start, end, again_start, again_end = map(float, sys.argv[1:5])
files, entries, log_dir = int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
mounts = {"bench/tree": [], "-": []}
for path in glob.glob(os.path.join(log_dir, "spfs-fuse-macos.2*.log")):
    for line in open(path):
        event = json.loads(line)
        if event.get("event") == "service.mount" and event.get("env_spec") in mounts:
            mounts[event["env_spec"]].append(event["elapsed_ms"])
first = end - start
second = again_end - again_start
rows = [
    ("commit --path, %d files (%d entries), new repository, s" % (files, entries), first),
    ("commit --path, files per second", files / first),
    ("commit --path again (every payload already stored), s", second),
    ("Mount of the %d-entry layer, ms (median of %d)" % (entries, len(mounts["bench/tree"])), statistics.median(mounts["bench/tree"])),
    ("Mount of the empty environment, ms (median of %d)" % len(mounts["-"]), statistics.median(mounts["-"])),
]
print("| measure | value |")
print("|---|---:|")
for name, value in rows:
    print(f"| {name} | {value:.3f} |")
os.makedirs("target/bench-results", exist_ok=True)
json.dump({"machine": {"cores": os.cpu_count()}, "results": [{"measure": n, "value": v} for n, v in rows]},
          open("target/bench-results/repo.json", "w"), indent=2)
PY
