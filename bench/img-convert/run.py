#!/usr/bin/env python3
"""ferry img convert vs qemu-img convert, side by side in one run.

Generates a mixed source image (gen_image.py: random, zero and compressible
extents), makes a qcow2 copy of it with qemu-img (so both tools read the same
peer-made qcow2), measures the disk's sequential bandwidth with dd, then for
each row runs ferry and qemu-img alternately (the order flips every
repetition), takes the median wall time, and verifies every output with
qemu-img compare (and qemu-img check for qcow2).  Each timed run ends with an
fsync of the output, so written data has reached the disk; page cache is
dropped before every run when we are root (echo 3 > /proc/sys/vm/drop_caches),
the same for both tools.  Writes bench/results/img-convert.md.

    bench/img-convert/run.py [--size 4G] [--reps 5] [--rows raw-raw,...]
"""
import argparse
import datetime
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import gen_image  # noqa: E402

# name, source format, output format, extra convert arguments
ROWS = [
    ("raw-raw", "raw", "raw", []),
    ("raw-qcow2", "raw", "qcow2", []),
    ("qcow2-raw", "qcow2", "raw", []),
    ("raw-qcow2-c", "raw", "qcow2", ["-c"]),
    ("qcow2-qcow2", "qcow2", "qcow2", []),
    ("qcow2-qcow2-m8W", "qcow2", "qcow2", ["-m", "8", "-W"]),
]


def log(msg):
    print(msg, flush=True)


def can_drop_caches():
    return os.geteuid() == 0 and os.access("/proc/sys/vm/drop_caches", os.W_OK)


def drop_caches(enabled):
    os.sync()
    if enabled:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")


def fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


LOADS = []     # 1-minute load average at the start of every timed run


def timed(cmd, out, drop):
    """Wall and CPU seconds of cmd, including the fsync of its output."""
    drop_caches(drop)
    LOADS.append(os.getloadavg()[0])
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(cmd),
                                                   proc.returncode,
                                                   proc.stderr.strip()))
    fsync_path(out)
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return wall, cpu


def disk_bandwidth(workdir, size, drop):
    """Sequential write (dd + fdatasync) and read (dd after a cache drop)."""
    path = os.path.join(workdir, "dd.tmp")
    count = max(1, size // (4 << 20))
    drop_caches(drop)
    t0 = time.monotonic()
    subprocess.run(["dd", "if=/dev/zero", "of=" + path, "bs=4M",
                    "count=%d" % count, "conv=fdatasync"], check=True,
                   capture_output=True)
    write = count * (4 << 20) / (time.monotonic() - t0)
    drop_caches(drop)
    t0 = time.monotonic()
    subprocess.run(["dd", "if=" + path, "of=/dev/null", "bs=4M"], check=True,
                   capture_output=True)
    read = count * (4 << 20) / (time.monotonic() - t0)
    os.unlink(path)
    return write, read


def ferry_has(ferry, fmt):
    out = subprocess.run([ferry, "img", "--help"], capture_output=True,
                         text=True).stdout
    for line in out.splitlines():
        if line.startswith("Supported formats:"):
            return fmt in line.split(":", 1)[1].split()
    return False


def verify(src, src_fmt, out, out_fmt):
    """qemu-img compare against the source, and check for qcow2."""
    notes = []
    r = subprocess.run(["qemu-img", "compare", "-f", src_fmt, "-F", out_fmt,
                        src, out], capture_output=True, text=True)
    if r.returncode != 0:
        return False, "compare: " + (r.stdout + r.stderr).strip()
    notes.append("identical")
    if out_fmt == "qcow2":
        r = subprocess.run(["qemu-img", "check", out], capture_output=True,
                           text=True)
        if r.returncode != 0:
            return False, "check: " + (r.stdout + r.stderr).strip()
        notes.append("check ok")
    return True, ", ".join(notes)


def run_row(row, args, srcs, workdir, drop):
    name, src_fmt, out_fmt, extra = row
    src = srcs[src_fmt]
    out = os.path.join(workdir, "out." + out_fmt)
    tools = {
        "ferry": [args.ferry, "img", "convert", "-f", src_fmt, "-O", out_fmt]
                 + extra + [src, out],
        "qemu-img": ["qemu-img", "convert", "-f", src_fmt, "-O", out_fmt]
                    + extra + [src, out],
    }
    times = {"ferry": [], "qemu-img": []}
    cpus = {"ferry": [], "qemu-img": []}
    checks = {}
    sizes = {}
    reps = args.reps_compressed if "-c" in extra else args.reps
    for rep in range(reps):
        order = ["ferry", "qemu-img"] if rep % 2 == 0 else ["qemu-img", "ferry"]
        for tool in order:
            if os.path.exists(out):
                os.unlink(out)
            wall, cpu = timed(tools[tool], out, drop)
            times[tool].append(wall)
            cpus[tool].append(cpu)
            log("  %-16s rep %d %-8s %7.2f s  cpu %6.2f s" %
                (name, rep + 1, tool, wall, cpu))
            if rep == reps - 1:
                # verify each tool's output of the last repetition
                checks[tool] = verify(src, src_fmt, out, out_fmt)
                sizes[tool] = os.stat(out).st_blocks * 512
    if os.path.exists(out):
        os.unlink(out)
    return times, cpus, checks, sizes


def fmt_mb(size, secs):
    return size / secs / 1e6


def write_table(path, args, size, results, skipped, bw, drop, counts):
    lines = []
    lines.append("# ferry img convert vs qemu-img convert")
    lines.append("")
    lines.append("Measured by `bench/img-convert/run.py` on %s (%s, %d cores), "
                 "%s; ferry %s, %s." % (
                     datetime.date.today().isoformat(), platform.node() or "?",
                     os.cpu_count() or 0, platform.platform(terse=True),
                     args.ferry_version, args.qemu_version))
    lines.append("")
    lines.append("Source: %s virtual, generated from seed %d (%s); the qcow2 "
                 "source is made from it by qemu-img." % (
                     args.size, args.seed, counts))
    lines.append("Median of %d runs per tool (%d for -c), alternating ferry "
                 "and qemu-img (order flipped each repetition). MB/s = virtual size / wall "
                 "time, MB = 10^6 bytes; wall time includes an fsync of the "
                 "output. Page cache: %s." % (
                     args.reps, args.reps_compressed,
                     "dropped before every run (echo 3 > "
                     "/proc/sys/vm/drop_caches), for both tools" if drop else
                     "NOT dropped (not root), source read from cache"))
    lines.append("Disk sequential bandwidth in the same run: write %.0f MB/s "
                 "(dd bs=4M conv=fdatasync), read %.0f MB/s (dd bs=4M, cold "
                 "cache)." % (bw[0] / 1e6, bw[1] / 1e6))
    if LOADS:
        lines.append("1-minute load average at the start of the runs: %.1f to "
                     "%.1f (median %.1f) on %d cores; other jobs on the "
                     "machine make single runs noisy, hence medians." % (
                         min(LOADS), max(LOADS), statistics.median(LOADS),
                         os.cpu_count() or 0))
    lines.append("")
    lines.append("| row | ferry / qemu-img | ferry MB/s | qemu-img MB/s | "
                 "ferry s | qemu-img s | ferry CPU s | qemu-img CPU s | "
                 "output (ferry / qemu-img) | verified |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for name, (times, cpus, checks, sizes) in results:
        tf = statistics.median(times["ferry"])
        tq = statistics.median(times["qemu-img"])
        ok = all(c[0] for c in checks.values())
        lines.append("| %s | **%.2f×** | %.0f | %.0f | %.2f | %.2f | %.2f | "
                     "%.2f | %.0f / %.0f MiB | %s |" % (
                         name, tq / tf, fmt_mb(size, tf), fmt_mb(size, tq),
                         tf, tq, statistics.median(cpus["ferry"]),
                         statistics.median(cpus["qemu-img"]),
                         sizes["ferry"] / 2**20, sizes["qemu-img"] / 2**20,
                         ("yes: " if ok else "**NO**: ") + "; ".join(
                             "%s %s" % (t, c[1]) for t, c in checks.items())))
    for name, why in skipped:
        lines.append("| %s | n/a | | | | | | | | %s |" % (name, why))
    lines.append("")
    lines.append("Rows: `raw-qcow2-c` is `-c` (compressed); `qcow2-qcow2-m8W` "
                 "is `-m 8 -W`; the others use each tool's defaults (8 "
                 "parallel requests, in-order writes).")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="4G")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--reps-compressed", type=int, default=3,
                    help="repetitions for the -c row (it takes longest)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rows", default=",".join(r[0] for r in ROWS))
    ap.add_argument("--dir", default=os.environ.get(
        "FERRY_BENCH_DIR", "/var/tmp/ferry-bench-img-convert"))
    ap.add_argument("--ferry", default=os.environ.get(
        "FERRY", os.path.join(TOP, "ferry")))
    ap.add_argument("--out", default=os.path.join(TOP, "bench", "results",
                                                  "img-convert.md"))
    ap.add_argument("--keep", action="store_true",
                    help="keep the generated sources for the next run")
    args = ap.parse_args()

    if not os.access(args.ferry, os.X_OK):
        sys.exit("ferry not found at %s: build it first" % args.ferry)
    if not shutil.which("qemu-img"):
        sys.exit("qemu-img is not installed")
    args.ferry_version = subprocess.run(
        [args.ferry, "img", "--version"], capture_output=True,
        text=True).stdout.strip().split(" (")[0].split("version ")[-1]
    args.qemu_version = subprocess.run(
        ["qemu-img", "--version"], capture_output=True,
        text=True).stdout.splitlines()[0]
    size = gen_image.parse_size(args.size)
    os.makedirs(args.dir, exist_ok=True)
    drop = can_drop_caches()
    log("page cache: %s" % ("dropped before every run" if drop
                             else "not dropped (not root)"))

    src_raw = os.path.join(args.dir, "src.raw")
    src_qcow2 = os.path.join(args.dir, "src.qcow2")
    stamp = os.path.join(args.dir, "src.stamp")
    want = "%d %d\n" % (size, args.seed)
    counts = None
    if os.path.exists(stamp) and open(stamp).read().split("|")[0] == want:
        counts = open(stamp).read().split("|", 1)[1].strip()
        log("reusing the sources in %s" % args.dir)
    else:
        log("generating %s (%s, seed %d)" % (src_raw, args.size, args.seed))
        c = gen_image.generate(src_raw, size, args.seed)
        total = sum(c.values())
        counts = ", ".join("%s %.0f%%" % (k, 100.0 * v / total)
                           for k, v in c.items())
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2",
                        src_raw, src_qcow2], check=True)
        with open(stamp, "w") as f:
            f.write(want + "|" + counts + "\n")

    log("disk bandwidth ...")
    bw = disk_bandwidth(args.dir, min(size, 2 << 30), drop)
    log("  write %.0f MB/s, read %.0f MB/s" % (bw[0] / 1e6, bw[1] / 1e6))

    has_qcow2 = ferry_has(args.ferry, "qcow2")
    wanted = args.rows.split(",")
    results, skipped = [], []
    for row in ROWS:
        if row[0] not in wanted:
            continue
        if "qcow2" in (row[1], row[2]) and not has_qcow2:
            skipped.append((row[0], "ferry has no qcow2 driver in this build"))
            log("%s: skipped (ferry has no qcow2 driver)" % row[0])
            continue
        log("%s:" % row[0])
        results.append((row[0], run_row(row, args, {"raw": src_raw,
                                                     "qcow2": src_qcow2},
                                        args.dir, drop)))
    write_table(args.out, args, size, results, skipped, bw, drop, counts)
    log("wrote %s" % args.out)
    print(open(args.out).read())
    if not args.keep:
        for p in (src_raw, src_qcow2, stamp):
            if os.path.exists(p):
                os.unlink(p)
    bad = [n for n, r in results if not all(c[0] for c in r[2].values())]
    if bad:
        sys.exit("verification failed for: %s" % ", ".join(bad))
    return 0


if __name__ == "__main__":
    sys.exit(main())
