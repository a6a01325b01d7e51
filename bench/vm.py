#!/usr/bin/env python3
"""ferry run: boot time of the test OS, and virtio-blk throughput measured
inside the guest against fio on the host on the same file.

Usage: bench/vm.py [--ferry PATH] [--runs N] [--mib N] [--secs N] [--out FILE]

Boot: N runs of `ferry run --kernel testos.elf`, time from process start to
the guest's first serial line and to ferry's exit (median, min).  Disk: the
guest's own figures (1 MiB sequential, 4 KiB random, queue depth 1, read
and write) on a raw file and on a qcow2 image, then fio with the same
pattern, block size, depth, region and duration on the same raw file (for
qcow2, on a raw file of the same size beside it, since fio's writes would
overwrite the image's metadata); ioengine=psync, buffered, as ferry's file
driver.  Guest and fio alternate phase by phase after a sync.  Ratio first:
guest / fio, 1.0 means the guest gets all the host can give.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)


def boot_times(ferry, testos, runs):
    first, total = [], []
    for _ in range(runs):
        t0 = time.monotonic()
        p = subprocess.Popen([ferry, "run", "--kernel", testos, "--append",
                              "test=pci", "-m", "128", "--no-reboot"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = p.stdout.readline()
        t1 = time.monotonic()
        p.communicate()
        t2 = time.monotonic()
        if p.returncode != 0 or b"user mode reached" not in line:
            sys.exit("boot failed: rc=%d line=%r" % (p.returncode, line))
        first.append(t1 - t0)
        total.append(t2 - t0)
    return first, total


def guest_bench(ferry, testos, disk, fmt, mib, secs, phase):
    r = subprocess.run([ferry, "run", "--kernel", testos, "--append",
                        "test=bench mib=%d secs=%d phase=%d" % (mib, secs, phase),
                        "-m", "256",
                        "--no-reboot", "--drive", "%s,format=%s" % (disk, fmt)],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        sys.exit("guest bench failed: %s %s" % (r.stdout, r.stderr))
    out = {}
    for name, val in re.findall(r"bench: (\S+) (?:MBps|iops)=(\d+)", r.stdout):
        out[name] = int(val)
    m = re.search(r"bench: (\d+) requests, (\d+) doorbells", r.stdout)
    out["doorbells"] = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    return out


def exit_costs(ferry, testos):
    r = subprocess.run([ferry, "run", "--kernel", testos, "--append", "test=exits",
                        "-m", "128", "--no-reboot"], capture_output=True, text=True,
                       timeout=60)
    return dict((k, int(v)) for k, v in
                re.findall(r"exits: (.+?) (\d+) ns", r.stdout))


def fio(path, rw, bs, mib, secs):
    r = subprocess.run(["fio", "--name=host", "--filename=%s" % path,
                        "--rw=%s" % rw, "--bs=%s" % bs, "--size=%dM" % mib,
                        "--ioengine=psync", "--iodepth=1", "--direct=0",
                        "--invalidate=0",
                        "--time_based", "--runtime=%d" % secs,
                        "--output-format=json"],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        sys.exit("fio failed: %s" % r.stderr)
    job = json.loads(r.stdout)["jobs"][0]
    side = job["write"] if "write" in rw else job["read"]
    if bs == "1M":
        return int(side["bw_bytes"] / 1e6)
    return int(side["iops"])


PHASES = [("seq-write", "write", "1M", "MB/s"), ("seq-read", "read", "1M", "MB/s"),
          ("rand-write", "randwrite", "4k", "IOPS"), ("rand-read", "randread", "4k", "IOPS")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ferry", default=os.path.join(TOP, "ferry"))
    ap.add_argument("--testos", default=os.path.join(TOP, "tests/guests/testos/testos.elf"))
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--mib", type=int, default=128)
    ap.add_argument("--secs", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "vm.md"))
    a = ap.parse_args()

    first, total = boot_times(a.ferry, a.testos, a.runs)
    exits = exit_costs(a.ferry, a.testos)
    rows = []
    requests = doorbells = 0
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/var/tmp")) as d:
        for fmt in ("raw", "qcow2"):
            disk = os.path.join(d, "disk." + fmt)
            subprocess.run(["qemu-img", "create", "-q", "-f", fmt, disk,
                            "%dM" % (a.mib * 2)], check=True)
            # each phase: guest, then fio, from the same clean page cache state
            for phase, (name, rw, bs, unit) in enumerate(PHASES):
                subprocess.run(["sync"])
                g = guest_bench(a.ferry, a.testos, disk, fmt, a.mib, a.secs, phase)
                requests += g["doorbells"][0]
                doorbells += g["doorbells"][1]
                subprocess.run(["sync"])
                # fio would overwrite the qcow2 metadata: its twin is a raw
                # file of the same size beside it
                target = disk if fmt == "raw" else disk + ".fio"
                if not os.path.exists(target):
                    with open(target, "wb") as f:
                        f.truncate(a.mib * 2 << 20)
                h = fio(target, rw, bs, a.mib, a.secs)
                rows.append((fmt, name, unit, g.get(name, 0), h))

    lines = ["# ferry run: boot time and virtio-blk throughput", "",
             "Produced by `bench/vm.py --runs %d --mib %d --secs %d` on %s."
             % (a.runs, a.mib, a.secs, time.strftime("%Y-%m-%d")), "",
             "## Boot (testos, KVM, 128 MiB, 1 vCPU)", "",
             "| measure | median | min | target |", "|---|---|---|---|",
             "| process start to first serial line | %.1f ms | %.1f ms | < 50 ms |"
             % (1e3 * statistics.median(first), 1e3 * min(first)),
             "| process start to exit (guest powered off) | %.1f ms | %.1f ms | |"
             % (1e3 * statistics.median(total), 1e3 * min(total)), "",
             "## What a VM exit costs here (testos test=exits)", "",
             "| exit | cost |", "|---|---|"] + [
             "| %s | %.1f us |" % (k, v / 1000.0) for k, v in exits.items()] + [
             "",
             "## virtio-blk inside testos vs fio on the host, same file", "",
             "Queue depth 1, %d MiB region, %d s per phase; fio: psync, buffered."
             % (a.mib, a.secs), "",
             "| image | pattern | guest / fio | guest | fio (host) | unit |",
             "|---|---|---|---|---|---|"]
    for fmt, name, unit, g, h in rows:
        lines.append("| %s | %s | %.2f | %d | %d | %s |"
                     % (fmt, name, g / h if h else 0, g, h, unit))
    lines += ["", "Doorbells rung by the guest: %d for %d requests (the iothread "
              "polls the ring for 200 us after each batch and the driver "
              "skips the doorbell while event idx says the device is "
              "watching)." % (doorbells, requests)]
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
