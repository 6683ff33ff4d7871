#!/usr/bin/env bash
# Filesystem benchmark: a 1 GiB file and a tree of 10,000 small files, read
# natively and through spfs. Prints a table and writes target/bench-results/fs.json.
# Usage: benches/fs-bench.sh [WORKDIR]   (needs ~1.1 GiB free in WORKDIR; root drops caches)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/spfs-fs-bench}
cargo build --release -q
spfs=$PWD/target/release/spfs
export SPFS_RUNTIME_DIR=$work/run SPFS_LOG_DIR=$work/log SPFS_MOUNTPOINT=$work/mnt SPFS_STORAGE_ROOT=$work/repo
mkdir -p "$work/layers"

big=$work/layers/big
tree=$work/layers/tree
if [ ! -f "$big/data/one-gib.bin" ]; then
    mkdir -p "$big/data"
    head -c 1073741824 /dev/urandom > "$big/data/one-gib.bin"
fi
python3 benches/bench_layers.py tree "$tree"
# The merged view of big+tree, natively: the two layers do not overlap, so a
# directory holding both (by bind-free symlink-free copy of names) is the same
# tree; measure each part on its own layer directory.
deep_rel=$(cd "$tree" && find . -name leaf00.txt | sed 's|^\./||')
drop=""
[ "$(id -u)" -eq 0 ] && drop="--drop-caches"

probe() { python3 benches/fs_probe.py "$@"; }
native_big=$(probe "$big" data/one-gib.bin data/one-gib.bin data/one-gib.bin $drop)
native_tree=$(probe "$tree" top.txt top.txt "$deep_rel" $drop)
# The layers are read from an spfs repository, as users have them (a commit
# of data already stored only re-hashes it).
"$spfs" commit --path "$big" -t big >/dev/null 2>&1
"$spfs" commit --path "$tree" -t tree >/dev/null 2>&1
# Not a timing: starts the service so the runs below are warm starts.
"$spfs" service start >/dev/null
spfs_big=$("$spfs" run big+tree -- python3 benches/fs_probe.py "$SPFS_MOUNTPOINT" data/one-gib.bin top.txt "$deep_rel" $drop)
spfs_tree=$("$spfs" run tree -- python3 benches/fs_probe.py "$SPFS_MOUNTPOINT" top.txt top.txt "$deep_rel" $drop)
"$spfs" service stop >/dev/null

python3 - "$native_big" "$native_tree" "$spfs_big" "$spfs_tree" <<'PY'
import json, sys, platform, os
nb, nt, sb, st = (json.loads(a) for a in sys.argv[1:5])
rows = [
    ("sequential read, first (1 GiB), MiB/s", nb["read_first_mib_s"], sb["read_first_mib_s"], "higher"),
    ("sequential read, second (1 GiB), MiB/s", nb["read_second_mib_s"], sb["read_second_mib_s"], "higher"),
    ("stat, file in the root, us", nt["stat_root_us"], st["stat_root_us"], "lower"),
    ("stat, file 20 dirs deep, us", nt["stat_deep_us"], st["stat_deep_us"], "lower"),
    ("walk of %d entries, cold, s" % nt["entries"], nt["walk_cold_s"], st["walk_cold_s"], "lower"),
    ("walk of %d entries, warm, s" % nt["entries"], nt["walk_warm_s"], st["walk_warm_s"], "lower"),
]
print("| measure | native | through spfs | spfs / native |")
print("|---|---:|---:|---:|")
results = []
for name, native, spfs, better in rows:
    ratio = spfs / native
    print(f"| {name} | {native:.3f} | {spfs:.3f} | {ratio:.2f} |")
    results.append({"measure": name, "native": native, "spfs": spfs, "ratio": ratio, "better": better})
print(f"\nentries walked: native {nt['entries']}, spfs {st['entries']}; caches dropped: {nb['caches_dropped']}")
os.makedirs("target/bench-results", exist_ok=True)
json.dump({"machine": {"cores": os.cpu_count(), "kernel": platform.release()}, "results": results},
          open("target/bench-results/fs.json", "w"), indent=2)
PY
