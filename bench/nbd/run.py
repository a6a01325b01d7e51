#!/usr/bin/env python3
"""ferry nbd against qemu-nbd and nbdkit (file plugin), side by side.

Usage: bench/nbd/run.py [--ferry PATH] [--rounds N] [--size SIZE]
                        [--fio-runtime S] [--only SUBSTR] [--out FILE]
                        [--workdir DIR] [--keep]

Rows (unix sockets, one server process per measurement):
  - nbdcopy sequential read of a 4 GiB raw and a 4 GiB qcow2 export to
    null:, with 1 and 4 connections (read-only exports);
  - nbdcopy sequential write of 4 GiB from a local raw file into a fresh,
    empty raw or qcow2 export, with 1 and 4 connections;
  - 4 KiB random read and random write IOPS at queue depth 16 from fio's
    nbd engine (a libnbd client), on the raw and the qcow2 image (writes
    go to a preallocated target so they measure the server, not the file
    system's allocator).
Each row is measured in N rounds (default 5) before the next row starts,
the servers taking turns at going first; source images are read into the
page cache before each read; the table reports the median of the rounds
(the machines are shared and noisy: the ferry column lists every run).  The ratio is ferry / best peer (above
1: ferry is faster); nbdkit has no qcow2 plugin in Debian 12, so qcow2
rows compare with qemu-nbd only.  qemu-nbd does not offer multi-conn on
writable exports, so nbdcopy uses one connection with it even when asked
for four: that is the peer as shipped.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
MiB = 1 << 20


def sh(args, **kw):
    return subprocess.run([str(a) for a in args], capture_output=True,
                          text=True, **kw)


def version(cmd):
    try:
        return sh(cmd).stdout.splitlines()[0].strip()
    except (OSError, IndexError):
        return "not installed"


class Server:
    def __init__(self, name, argv, sock, log):
        self.name = name
        self.sock = sock
        self.log = open(log, "w")
        self.proc = subprocess.Popen(argv, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited: %s" % (name, open(log).read()))
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(sock)
                s.close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("%s did not start" % name)

    @property
    def uri(self):
        return "nbd+unix:///?socket=%s" % self.sock

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        if os.path.exists(self.sock):
            os.unlink(self.sock)


def start(server, args, fmt, image, readonly):
    sock = os.path.join(args.workdir, "%s.sock" % server)
    log = os.path.join(args.workdir, "%s.log" % server)
    if server == "ferry":
        argv = [args.ferry, "nbd", "-f", fmt, "-t", "-e", "0", "-k", sock]
    elif server == "qemu-nbd":
        argv = ["qemu-nbd", "-f", fmt, "-t", "-e", "8", "-k", sock]
    else:
        if fmt != "raw":
            return None
        argv = ["nbdkit", "-f", "-U", sock]
    if readonly:
        argv.append("-r")
    if server == "nbdkit":
        argv += ["file", image]
    else:
        argv.append(image)
    return Server(server, argv, sock, log)


def warm(path):
    with open(path, "rb") as f:
        while f.read(16 * MiB):
            pass


def make_sources(args):
    raw = os.path.join(args.workdir, "src.raw")
    qcow2 = os.path.join(args.workdir, "src.qcow2")
    if not (os.path.exists(raw) and os.path.getsize(raw) == args.size):
        block = os.urandom(16 * MiB)
        with open(raw + ".tmp", "wb") as f:
            for i in range(args.size // (16 * MiB)):
                f.write(block[i % 13:] + block[:i % 13])
        os.rename(raw + ".tmp", raw)
        if os.path.exists(qcow2):
            os.unlink(qcow2)
    if not os.path.exists(qcow2):
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2",
                        raw, qcow2 + ".tmp"], check=True)
        os.rename(qcow2 + ".tmp", qcow2)
    return {"raw": raw, "qcow2": qcow2}


def fresh_target(args, server, fmt, prealloc):
    path = os.path.join(args.workdir, "target-%s.%s" % (server, fmt))
    if os.path.exists(path):
        os.unlink(path)
    if fmt == "raw":
        with open(path, "wb") as f:
            if prealloc:
                os.posix_fallocate(f.fileno(), 0, args.size)
            else:
                f.truncate(args.size)
    else:
        opts = ["-o", "preallocation=metadata"] if prealloc else []
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2"] + opts +
                       [path, str(args.size)], check=True)
    return path


def nbdcopy(src, dst, conns):
    t = time.monotonic()
    r = sh(["nbdcopy", "--connections=%d" % conns, src, dst])
    if r.returncode:
        raise RuntimeError("nbdcopy failed: " + r.stderr)
    return time.monotonic() - t


def fio(uri, rw, runtime):
    r = sh(["fio", "--name=bench", "--ioengine=nbd", "--uri=" + uri,
            "--rw=" + rw, "--bs=4k", "--iodepth=16", "--numjobs=1",
            "--time_based", "--runtime=%d" % runtime, "--ramp_time=1",
            "--output-format=json"])
    if r.returncode:
        raise RuntimeError("fio failed: " + r.stderr)
    text = r.stdout[r.stdout.index("{"):]
    job = json.loads(text)["jobs"][0]
    return job["read"]["iops"] + job["write"]["iops"]


def measure(args, case, server, sources):
    kind, fmt, conns = case["kind"], case["fmt"], case.get("conns", 1)
    if kind == "read":
        srv = start(server, args, fmt, sources[fmt], True)
        if not srv:
            return None
        try:
            warm(sources[fmt])
            return args.size / MiB / nbdcopy(srv.uri, "null:", conns)
        finally:
            srv.stop()
    if kind == "write":
        if server == "nbdkit" and fmt != "raw":
            return None
        target = fresh_target(args, server, fmt, False)
        srv = start(server, args, fmt, target, False)
        try:
            warm(sources["raw"])
            return args.size / MiB / nbdcopy(sources["raw"], srv.uri, conns)
        finally:
            srv.stop()
            os.unlink(target)
    if kind == "randread":
        srv = start(server, args, fmt, sources[fmt], True)
        if not srv:
            return None
        try:
            warm(sources[fmt])
            return fio(srv.uri, "randread", args.fio_runtime)
        finally:
            srv.stop()
    if kind == "randwrite":
        if server == "nbdkit" and fmt != "raw":
            return None
        target = fresh_target(args, server, fmt, True)
        srv = start(server, args, fmt, target, False)
        try:
            return fio(srv.uri, "randwrite", args.fio_runtime)
        finally:
            srv.stop()
            os.unlink(target)
    raise ValueError(kind)


CASES = []
for _fmt in ("raw", "qcow2"):
    for _kind in ("read", "write"):
        for _c in (1, 4):
            CASES.append({"kind": _kind, "fmt": _fmt, "conns": _c,
                          "label": "nbdcopy %s %s, %d conn%s" % (
                              _kind, _fmt, _c, "s" if _c > 1 else ""),
                          "unit": "MiB/s"})
for _fmt in ("raw", "qcow2"):
    for _kind in ("randread", "randwrite"):
        CASES.append({"kind": _kind, "fmt": _fmt,
                      "label": "4k %s QD16 %s (fio nbd)" % (_kind, _fmt),
                      "unit": "IOPS"})
SERVERS = ["ferry", "qemu-nbd", "nbdkit"]


def fmt_num(v, unit):
    if v is None:
        return "n/a"
    return "{:,.0f}".format(v).replace(",", " ") + " " + unit


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ferry", default=os.path.join(TOP, "ferry"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", default="4G")
    ap.add_argument("--fio-runtime", type=int, default=6)
    ap.add_argument("--only", default=None)
    ap.add_argument("--out", default=os.path.join(TOP, "bench", "results",
                                                  "nbd.md"))
    ap.add_argument("--workdir", default=os.path.join(TOP, "bench", "work",
                                                      "nbd"))
    ap.add_argument("--keep", action="store_true",
                    help="keep the 4 GiB source images for the next run")
    args = ap.parse_args()
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    args.size = int(args.size[:-1]) * units[args.size[-1].upper()] \
        if args.size[-1].upper() in units else int(args.size)
    for tool in ("nbdcopy", "fio", "qemu-nbd", "nbdkit", "qemu-img"):
        if not shutil.which(tool):
            sys.exit("bench/nbd: %s is not installed "
                     "(scripts/install-deps.sh)" % tool)
    os.makedirs(args.workdir, exist_ok=True)
    cases = [c for c in CASES if not args.only or args.only in c["label"]]
    sources = make_sources(args)
    results = {c["label"]: {s: [] for s in SERVERS} for c in cases}
    try:
        # Case by case, rounds within a case: the machine's load drifts
        # over minutes, so the servers of one row are measured close
        # together, each going first in turn.
        for case in cases:
            for rnd in range(args.rounds):
                order = SERVERS[rnd % 3:] + SERVERS[:rnd % 3]
                for server in order:
                    v = measure(args, case, server, sources)
                    if v is not None:
                        results[case["label"]][server].append(v)
                    print("round %d  %-40s %-8s %s" % (
                        rnd + 1, case["label"], server,
                        fmt_num(v, case["unit"])), flush=True)
    finally:
        if not args.keep:
            for p in sources.values():
                if os.path.exists(p):
                    os.unlink(p)

    lines = [
        "# ferry nbd vs qemu-nbd and nbdkit",
        "",
        "Median of %d rounds, servers side by side in one run on %s (%s, "
        "%d CPUs), %s.  Ratio = ferry / best peer (above 1: ferry faster)."
        % (args.rounds, platform.node(), platform.machine(), os.cpu_count(),
           datetime.date.today().isoformat()),
        "Unix sockets; %d MiB images; nbdcopy %s; fio %s; %s; %s."
        % (args.size // MiB, version(["nbdcopy", "--version"]).split()[-1],
           version(["fio", "--version"]), version(["qemu-nbd", "--version"]),
           version(["nbdkit", "--version"])),
        "Produced by `bench/nbd/run.py` (see its header for what each row "
        "does).",
        "",
        "| case | ratio | ferry | qemu-nbd | nbdkit | ferry runs |",
        "|---|---|---|---|---|---|",
    ]
    for case in cases:
        r = results[case["label"]]
        med = {s: statistics.median(v) if v else None for s, v in r.items()}
        peers = [med[s] for s in ("qemu-nbd", "nbdkit") if med[s]]
        ratio = med["ferry"] / max(peers) if med["ferry"] and peers else None
        runs = ", ".join("%.0f" % v for v in r["ferry"])
        lines.append("| %s | %s | %s | %s | %s | %s |" % (
            case["label"], "%.2f" % ratio if ratio else "n/a",
            fmt_num(med["ferry"], case["unit"]),
            fmt_num(med["qemu-nbd"], case["unit"]),
            fmt_num(med["nbdkit"], case["unit"]), runs))
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
