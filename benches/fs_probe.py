"""Filesystem timings for one directory tree, printed as JSON.

    fs_probe.py ROOT BIGFILE SHALLOW DEEP [--drop-caches]

Run once natively on the layer directory and once inside `spfs run` on the
mountpoint; fs-bench.sh compares the two.
"""

import json
import os
import sys
import time


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def read_throughput(path):
    size = 0
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            size += len(chunk)
    seconds = time.perf_counter() - start
    return size / seconds / (1 << 20)


def stat_latency_us(path, n=20000):
    os.stat(path)
    start = time.perf_counter()
    for _ in range(n):
        os.stat(path)
    return (time.perf_counter() - start) / n * 1e6


def missing_latency_us(path, n=20000):
    """A name that does not exist, asked for again and again (build tools
    probing include paths do this)."""
    def once():
        try:
            os.stat(path)
        except FileNotFoundError:
            pass
    once()
    start = time.perf_counter()
    for _ in range(n):
        once()
    return (time.perf_counter() - start) / n * 1e6


def walk_dirs_seconds(root, names):
    start = time.perf_counter()
    count = 0
    for name in names:
        count += 1
        for _dirpath, dirnames, filenames in os.walk(os.path.join(root, name)):
            count += len(dirnames) + len(filenames)
    return time.perf_counter() - start, count


def walk_seconds(root):
    start = time.perf_counter()
    count = 0
    for _dirpath, dirnames, filenames in os.walk(root):
        count += len(dirnames) + len(filenames)
    return time.perf_counter() - start, count


def main():
    root, big, shallow, deep = sys.argv[1:5]
    cold = "--drop-caches" in sys.argv
    if cold:
        drop_caches()
    first = read_throughput(os.path.join(root, big))
    second = read_throughput(os.path.join(root, big))
    if cold:
        drop_caches()
    walk_cold, entries = walk_seconds(root)
    # Warm walks take milliseconds: the median of several is far steadier than one.
    walk_warm = sorted(walk_seconds(root)[0] for _ in range(7))[3]
    # About 2,000 entries: the first 20 of the 100 directories.
    small = sorted(n for n in os.listdir(root) if n.startswith("d0"))[:20]
    walk_dirs_seconds(root, small)
    walk_small = sorted(walk_dirs_seconds(root, small)[0] for _ in range(7))[3]
    small_entries = walk_dirs_seconds(root, small)[1]
    # Relative to a directory below the root: no root lookup involved, so
    # these show what one lookup below the root costs (one unrouted FUSE
    # round trip when the kernel does not cache entries) and whether "no such
    # name" is cached.
    here = os.getcwd()
    os.chdir(os.path.join(root, small[0] if small else ""))
    stat_rel = stat_latency_us(sorted(os.listdir("."))[0] if os.listdir(".") else ".")
    missing_rel = missing_latency_us("nosuch")
    os.chdir(here)
    print(json.dumps({
        "stat_rel_us": stat_rel,
        "missing_rel_us": missing_rel,
        "read_first_mib_s": first,
        "read_second_mib_s": second,
        "stat_root_us": stat_latency_us(os.path.join(root, shallow)),
        "stat_deep_us": stat_latency_us(os.path.join(root, deep)),
        "walk_cold_s": walk_cold,
        "walk_warm_s": walk_warm,
        "walk_small_warm_s": walk_small,
        "small_entries": small_entries,
        "missing_us": missing_latency_us(os.path.join(root, small[0] if small else "", "nosuch")),
        "entries": entries,
        "caches_dropped": cold,
    }))


if __name__ == "__main__":
    main()
