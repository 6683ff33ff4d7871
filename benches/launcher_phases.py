#!/usr/bin/env python3
"""Where the time of `spfs run - -- /bin/true` goes, phase by phase, from
process start to the command's exit: wall clock taken here around each run,
and the timestamps and `elapsed_ms` fields of the JSON log lines the run
wrote (launcher and service). Warm runs (service up) and cold runs (no
service) alternate.

    benches/launcher_phases.py BIN_DIR [RUNS]

BIN_DIR holds release `spfs` and `spfs-fuse-macos`. Isolated temp dirs;
the service is stopped at the end. docs/performance.md has a run of it.
"""
import datetime
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

bindir, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 30
root = tempfile.mkdtemp(prefix="spfs-phases", dir="/tmp")
env = dict(os.environ, SPFS_RUNTIME_DIR=f"{root}/run", SPFS_LOG_DIR=f"{root}/log",
           SPFS_MOUNTPOINT=f"{root}/mnt", SPFS_SCRATCH_DIR=f"{root}/scratch",
           SPFS_FUSE_SERVICE_BIN=f"{bindir}/spfs-fuse-macos")
env.pop("SPFS_RUNTIME", None)
RUN = [f"{bindir}/spfs", "run", "-", "--", "/bin/true"]


def ns(stamp):
    """RFC 3339 with nanoseconds -> ns since the epoch."""
    base, frac = stamp.rstrip("Z").split(".")
    day = datetime.datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    return int(day.timestamp()) * 10**9 + int(frac.ljust(9, "0")[:9])


def lines(prefix):
    out = []
    for path in glob.glob(f"{root}/log/{prefix}.2*.log"):
        for line in open(path):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def stop():
    subprocess.run([f"{bindir}/spfs", "service", "stop"], env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


runs = {"warm": [], "cold": []}
plain = []
try:
    for _ in range(n):
        for kind in ["cold", "warm"]:
            if kind == "cold":
                stop()
            else:
                subprocess.run(RUN, env=env, check=True)
            t0 = time.time_ns()
            child = subprocess.Popen(RUN, env=env)
            child.wait()
            runs[kind].append((child.pid, t0, time.time_ns()))
        t0 = time.time_ns()
        subprocess.run(["/bin/true"], check=True)
        plain.append((time.time_ns() - t0) / 1e6)
finally:
    stop()

launcher, service = lines("spfs"), lines("spfs-fuse-macos")
median = statistics.median
print(f"{median(plain):7.3f}  /bin/true alone, as a whole process (same harness)")
for kind in ["warm", "cold"]:
    rows = {}
    for pid, t0, t1 in runs[kind]:
        mine = [l for l in launcher if l.get("pid") == pid]
        first = next(l for l in mine if l["event"] == "launcher.probe")
        ensure = next(l for l in mine if l["event"] == "launcher.ensure")
        mount = next(l for l in mine if l["event"] == "launcher.mount")
        exec_ = next(l for l in mine if l["event"] == "launcher.exec")
        row = {}
        if first.get("via") == "mount":
            # The warm path: connect (the probe's elapsed_ms), then the Mount; no Check.
            probe_start = ns(mount["timestamp"]) - (mount["elapsed_ms"] + first["elapsed_ms"]) * 1e6
        else:
            probe_start = ns(first["timestamp"]) - first["elapsed_ms"] * 1e6
        row["process start -> first probe (exec, loading, args, spfs config, logging, runtime)"] = (probe_start - t0) / 1e6
        if kind == "warm":
            what = "connect (warm path, no Check)" if first.get("via") == "mount" else "connect + health Check"
            row[f"probe: {what}"] = first["elapsed_ms"]
        else:
            for field in ["probe_ms", "lock_wait_ms", "spawn_ms", "readiness_wait_ms", "confirm_ms"]:
                row[f"launcher.ensure {field}"] = ensure[field]
        mount_start = ns(mount["timestamp"]) - mount["elapsed_ms"] * 1e6
        row["Mount call"] = mount["elapsed_ms"]
        row["probe start -> Mount answered"] = (ns(mount["timestamp"]) - probe_start) / 1e6
        row["Mount answered -> exec"] = (ns(exec_["timestamp"]) - ns(mount["timestamp"])) / 1e6
        row["exec -> exit (exec of /bin/true, its run, the wait)"] = (t1 - ns(exec_["timestamp"])) / 1e6
        row["whole process"] = (t1 - t0) / 1e6
        for key, value in row.items():
            rows.setdefault(key, []).append(value)
    print(f"--- {kind}: medians of {len(runs[kind])} runs, ms")
    for key, values in rows.items():
        print(f"{median(values):7.3f}  {key}")

print("--- cold: the service (its log, and the launcher's spawn line), ms")
for event, field in [("service.listening", "elapsed_ms"), ("service.fuse_mounted", "elapsed_ms"),
                     ("service.ready", "startup_ms")]:
    values = [l[field] for l in service if l["event"] == event]
    if values:
        print(f"{median(values):7.3f}  {event} {field}")
starts = sorted(ns(l["timestamp"]) for l in service if l["event"] == "service.starting")
readies = sorted(ns(l["timestamp"]) for l in service if l["event"] == "service.ready")
gaps, waits = [], []
for line in launcher:
    if line["event"] == "launcher.spawn":
        at = ns(line["timestamp"])
        later = [s for s in starts if s > at]
        if later:
            gaps.append((later[0] - at) / 1e6)
    if line["event"] == "launcher.ready":
        at = ns(line["timestamp"])
        earlier = [r for r in readies if r < at]
        if earlier:
            waits.append((at - earlier[-1]) / 1e6)
if gaps:
    print(f"{median(gaps):7.3f}  launcher.spawn line -> service.starting line (nanny fork, exec, loading, logging and runtime setup of the service)")
if waits:
    print(f"{median(waits):7.3f}  service.ready line -> launcher.ready line (readiness pipe)")
shutil.rmtree(root, ignore_errors=True)
