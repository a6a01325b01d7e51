#!/usr/bin/env python3
"""Mirror a 4 GiB qcow2 image with a quarter allocated, ferry's storage
daemon against qemu-storage-daemon, side by side in one run.

Usage: bench/mirror.py [--ferry PATH] [--runs N] [--size GiB] [--out FILE]
                       [--targets qcow2,nbd]

Targets: "qcow2" is a new local qcow2 image (blockdev-add, then
blockdev-mirror sync=full); "nbd" is the same image served by qemu-nbd over
a unix socket and added as an nbd node (live storage migration's shape).
Each run times blockdev-mirror from the command to BLOCK_JOB_READY and on
through job-complete to BLOCK_JOB_COMPLETED; the target is checked with
qemu-img compare after each tool's first run.  The table is ratio first
(qemu-storage-daemon time / ferry time: above 1 means ferry is faster),
absolute figures second.  Images live in a temporary directory removed at
the end.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

MiB = 1 << 20
GiB = 1 << 30
HERE = os.path.dirname(os.path.abspath(__file__))


class Qmp:
    def __init__(self, path):
        deadline = time.time() + 10
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.sock.close()
                if time.time() > deadline:
                    raise
                time.sleep(0.02)
        self.f = self.sock.makefile("rwb")
        self.events = []
        self.recv()
        self.cmd("qmp_capabilities")

    def recv(self):
        line = self.f.readline()
        if not line:
            raise EOFError("QMP closed")
        return json.loads(line)

    def cmd(self, name, args=None):
        req = {"execute": name}
        if args:
            req["arguments"] = args
        self.f.write(json.dumps(req).encode() + b"\n")
        self.f.flush()
        while True:
            m = self.recv()
            if "event" in m:
                self.events.append(m)
                continue
            if "error" in m:
                raise RuntimeError("%s: %s" % (name, m["error"]))
            return m["return"]

    def wait(self, event, device):
        while True:
            for i, e in enumerate(self.events):
                if e["event"] == event and e["data"].get("device") == device:
                    return self.events.pop(i)
                if e["event"] == "BLOCK_JOB_COMPLETED" and \
                        e["data"].get("error"):
                    raise RuntimeError("job failed: %s" % e["data"]["error"])
            self.events.append(self.recv())


def sh(args, **kw):
    return subprocess.run([str(a) for a in args], check=True,
                          capture_output=True, text=True, **kw)


def make_source(path, size):
    """size bytes, every fourth MiB written (a quarter allocated)."""
    sh(["qemu-img", "create", "-q", "-f", "qcow2", path, str(size)])
    cmds = ["write -P %d %d %d" % ((i // 4) % 250 + 1, i * MiB, MiB)
            for i in range(0, size // MiB, 4)]
    script = path + ".io"
    with open(script, "w") as f:
        f.write("\n".join(cmds) + "\n")
    subprocess.run("qemu-io -f qcow2 %s < %s" % (path, script), shell=True,
                   check=True, capture_output=True)
    os.unlink(script)


def start_daemon(kind, ferry, d):
    sock = os.path.join(d, "%s.qmp" % kind)
    if kind == "ferry":
        args = [ferry, "qmp", "--serve", "unix:%s,server" % sock]
    else:
        args = ["qemu-storage-daemon", "--chardev",
                "socket,id=m,path=%s,server=on,wait=off" % sock,
                "--monitor", "chardev=m"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    return proc, Qmp(sock)


def stop_daemon(proc, q):
    try:
        q.cmd("quit")
    except Exception:
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_once(kind, ferry, d, src, size, target_kind):
    tgt = os.path.join(d, "target-%s.qcow2" % kind)
    if os.path.exists(tgt):
        os.unlink(tgt)
    sh(["qemu-img", "create", "-q", "-f", "qcow2", tgt, str(size)])
    nbd = None
    proc, q = start_daemon(kind, ferry, d)
    try:
        q.cmd("blockdev-add", {"driver": "qcow2", "node-name": "src",
                               "file": {"driver": "file", "filename": src}})
        if target_kind == "nbd":
            nsock = os.path.join(d, "nbd-%s.sock" % kind)
            nbd = subprocess.Popen(["qemu-nbd", "-f", "qcow2", "-k", nsock,
                                    "-t", "--cache=writeback", tgt],
                                   stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
            deadline = time.time() + 10
            while not os.path.exists(nsock) and time.time() < deadline:
                time.sleep(0.02)
            q.cmd("blockdev-add", {"driver": "raw", "node-name": "tgt",
                                   "file": {"driver": "nbd", "server": {
                                       "type": "unix", "path": nsock}}})
        else:
            opts = {"driver": "qcow2", "node-name": "tgt",
                    "file": {"driver": "file", "filename": tgt}}
            if os.environ.get("BENCH_NO_FLUSH"):
                opts["cache"] = {"no-flush": True}
            q.cmd("blockdev-add", opts)
        os.sync()            # no writeback of an earlier run in this one
        t0 = time.monotonic()
        q.cmd("blockdev-mirror", {"device": "src", "target": "tgt",
                                  "sync": "full", "job-id": "m"})
        q.wait("BLOCK_JOB_READY", "m")
        t_ready = time.monotonic() - t0
        q.cmd("job-complete", {"id": "m"})
        q.wait("BLOCK_JOB_COMPLETED", "m")
        t_done = time.monotonic() - t0
        q.cmd("blockdev-del", {"node-name": "src"})
    finally:
        stop_daemon(proc, q)
        if nbd:
            nbd.terminate()
            nbd.wait()
    return t_ready, t_done, tgt


def ferry_has_driver(ferry, d, driver):
    proc, q = start_daemon("ferry", ferry, d)
    try:
        q.cmd("blockdev-add", {"driver": driver, "node-name": "probe",
                               "server": {"type": "unix",
                                          "path": "/nonexistent"}})
        return True
    except RuntimeError as e:
        return "unknown driver" not in str(e)
    finally:
        stop_daemon(proc, q)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ferry", default=os.path.join(HERE, "..", "ferry"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--size", type=int, default=4, help="GiB")
    ap.add_argument("--targets", default="qcow2,nbd")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "mirror.md"))
    a = ap.parse_args()
    if not shutil.which("qemu-storage-daemon"):
        sys.exit("bench/mirror: qemu-storage-daemon not installed "
                 "(scripts/install-deps.sh)")
    size = a.size * GiB
    rows, notes = [], []
    d = tempfile.mkdtemp(prefix="ferry-bench-mirror-")
    try:
        src = os.path.join(d, "src.qcow2")
        make_source(src, size)
        for target in a.targets.split(","):
            if target == "nbd" and not ferry_has_driver(a.ferry, d, "nbd"):
                notes.append("nbd target: skipped, this ferry has no nbd "
                             "client driver yet (branch nbd)")
                continue
            res = {"ferry": [], "qsd": []}
            for r in range(a.runs):
                for kind in ("ferry", "qsd") if r % 2 == 0 else ("qsd", "ferry"):
                    ready, done, tgt = run_once(kind, a.ferry, d, src, size,
                                                target)
                    if r < 2:
                        sh(["qemu-img", "compare", "-f", "qcow2", "-F",
                            "qcow2", src, tgt])
                    res[kind].append((ready, done))
                    os.unlink(tgt)
                    print("%s %s run %d: ready %.2fs done %.2fs" %
                          (target, kind, r, ready, done), flush=True)
            f_best = min(x[1] for x in res["ferry"])
            q_best = min(x[1] for x in res["qsd"])
            f_med = statistics.median(x[1] for x in res["ferry"])
            q_med = statistics.median(x[1] for x in res["qsd"])
            rows.append((target, q_best / f_best, f_best, q_best,
                         q_med / f_med, f_med, q_med))
    finally:
        shutil.rmtree(d, ignore_errors=True)
    load = os.getloadavg()
    with open(a.out, "w") as f:
        f.write("# mirror: ferry vs qemu-storage-daemon\n\n")
        f.write("blockdev-mirror sync=full of a %d GiB qcow2 image with a "
                "quarter allocated (every fourth MiB), from the command to "
                "BLOCK_JOB_COMPLETED after job-complete (the target flushed "
                "at READY); %d runs each, alternating, `sync` before each; "
                "same machine (%s, %s), shared: load average %.1f at the "
                "end.  Ratio = qemu-storage-daemon time / ferry time (above "
                "1: ferry faster), on the best run of each (the one least "
                "disturbed by other load) and on the medians.  Targets "
                "checked with qemu-img compare.\n\n" %
                (a.size, a.runs, os.uname().nodename,
                 time.strftime("%Y-%m-%d"), load[0]))
        f.write("| target | ratio (best) | ferry best | qsd best | "
                "ratio (median) | ferry median | qsd median |\n"
                "|---|---|---|---|---|---|---|\n")
        mib = size / 4 / MiB
        for t, rb, fb, qb, rm, fm, qm in rows:
            f.write("| %s | %.2f | %.2f s (%.0f MiB/s) | %.2f s (%.0f MiB/s) "
                    "| %.2f | %.2f s | %.2f s |\n" % (
                        t, rb, fb, mib / fb, qb, mib / qb, rm, fm, qm))
        for n in notes:
            f.write("\n%s\n" % n)
    print(open(a.out).read())


if __name__ == "__main__":
    main()
