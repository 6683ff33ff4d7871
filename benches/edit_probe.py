"""Timings of reads and writes in one directory tree, printed as JSON.

    edit_probe.py ROOT DEEP BIGFILE TARBALL [--read-only]

ROOT holds the 10,101-entry tree layer (and BIGFILE, 100 MiB): natively a
plain directory, or /spfs inside `spfs run [-e]`. edit-bench.sh runs it in
every configuration. With --read-only only the reads are measured.
"""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fs_probe import read_throughput  # noqa: E402


def walk_stat(root):
    """Like `find ROOT -ls`: list every directory, lstat every entry."""
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lstat(os.path.join(dirpath, name))
            count += 1
    return count


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


def stat_us(path, n):
    os.stat(path)
    start = time.perf_counter()
    for _ in range(n):
        os.stat(path)
    return (time.perf_counter() - start) / n * 1e6


def create_files(root, dirs=20, per_dir=100):
    """2,000 small files in 20 new directories."""
    for d in range(dirs):
        path = os.path.join(root, "n%02d" % d)
        os.mkdir(path)
        for f in range(per_dir):
            with open(os.path.join(path, "f%03d.txt" % f), "w") as out:
                out.write("new file %d/%d\n" % (d, f))


def append_files(paths):
    """Copy-up: the first open for writing of a file of the layer."""
    for path in paths:
        with open(path, "a") as out:
            out.write("appended\n")


def run(*cmd):
    subprocess.run(cmd, check=True)


def main():
    root, deep, big, tarball = sys.argv[1:5]
    read_only = "--read-only" in sys.argv
    r = {}
    # (a) warm walk: one walk to warm, then the median of 7 back to back
    # (within a 1 s TTL of each other), then the median of 3 walks each after
    # 1.5 s idle (a 1 s TTL has expired: what an editor or build that comes
    # back to the tree sees).
    r["walk_first_s"], r["entries"] = timed(walk_stat, root)
    r["walk_warm_s"] = median(timed(walk_stat, root)[0] for _ in range(7))
    idle = []
    for _ in range(3):
        time.sleep(1.5)
        idle.append(timed(walk_stat, root)[0])
    r["walk_idle_s"] = median(idle)
    # `find` itself, with a stat of every entry (-printf %s), warm.
    find = []
    for _ in range(5):
        start = time.perf_counter()
        subprocess.run(["find", root, "-printf", "%s\n"], check=True,
                       stdout=subprocess.DEVNULL)
        find.append(time.perf_counter() - start)
    r["find_warm_s"] = median(find)
    # (b) the same file 20 directories deep, by absolute path, again and again.
    deep_path = os.path.join(root, deep)
    r["stat_deep_us"] = stat_us(deep_path, 5000)
    # The same after 1.5 s idle, one call (median of 3): every component
    # looked up again when a 1 s TTL has expired.
    idle = []
    for _ in range(3):
        time.sleep(1.5)
        idle.append(timed(os.stat, deep_path)[0] * 1e6)
    r["stat_deep_after_idle_us"] = median(idle)
    # (c) 100 MiB read twice.
    big_path = os.path.join(root, big)
    r["read_first_mib_s"] = read_throughput(big_path)
    r["read_second_mib_s"] = read_throughput(big_path)
    if not read_only:
        # (d) writes.
        new = os.path.join(root, "new")
        os.mkdir(new)
        r["create_2000_s"] = timed(create_files, new)[0]
        r["cp_a_2000_s"] = timed(run, "cp", "-a", new, os.path.join(root, "copy"))[0]
        r["rm_rf_2000_s"] = timed(run, "rm", "-rf", os.path.join(root, "copy"))[0]
        # (e) copy-up of 1,000 files of the layer (d000-d009, then d010).
        names = []
        for d in sorted(n for n in os.listdir(root) if n.startswith("d0")):
            names += [os.path.join(root, d, f) for f in sorted(os.listdir(os.path.join(root, d)))]
            if len(names) >= 1000:
                break
        r["append_1000_s"] = timed(append_files, names[:1000])[0]
        # The same files again: already copied up.
        r["append_1000_again_s"] = timed(append_files, names[:1000])[0]
        # (f) untar the tree (10,101 entries) into a new directory.
        dest = os.path.join(root, "untar")
        os.mkdir(dest)
        r["untar_s"] = timed(run, "tar", "-xf", tarball, "-C", dest)[0]
        # Walk after the writes: the overlay now has upper entries too.
        r["walk_after_writes_s"] = median(timed(walk_stat, root)[0] for _ in range(3))
    print(json.dumps(r))


if __name__ == "__main__":
    main()
