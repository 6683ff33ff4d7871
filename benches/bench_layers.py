#!/usr/bin/env python3
"""The benchmarks' layer directories, made once and reused:

  tree DIR   10,101 entries: 100 directories of 99 small files, a chain of
             20 directories with 80 files at its end, and top.txt
  huge DIR   100,000 files: 1,000 directories of 99 small files (and the dirs)

Usage: bench_layers.py tree DIR | huge DIR   (nothing is done if DIR is made)
"""
import os
import sys


def tree(root):
    if os.path.isdir(os.path.join(root, "d099")):
        return
    for d in range(100):
        path = os.path.join(root, "d%03d" % d)
        os.makedirs(path, exist_ok=True)
        for f in range(99):
            with open(os.path.join(path, "f%03d.txt" % f), "w") as out:
                out.write("file %d/%d\n" % (d, f))
    deep = os.path.join(root, *["deep%02d" % i for i in range(20)])
    os.makedirs(deep, exist_ok=True)
    for f in range(80):
        with open(os.path.join(deep, "leaf%02d.txt" % f), "w") as out:
            out.write("deep\n")
    with open(os.path.join(root, "top.txt"), "w") as out:
        out.write("top\n")


def huge(root):
    if os.path.isdir(os.path.join(root, "d999")):
        return
    for d in range(1000):
        path = os.path.join(root, "d%03d" % d)
        os.makedirs(path, exist_ok=True)
        for f in range(99):
            with open(os.path.join(path, "f%03d.txt" % f), "w") as out:
                out.write("%d/%d\n" % (d, f))


if __name__ == "__main__":
    kinds = {"tree": tree, "huge": huge}
    if len(sys.argv) != 3 or sys.argv[1] not in kinds:
        sys.exit(__doc__)
    kinds[sys.argv[1]](sys.argv[2])
