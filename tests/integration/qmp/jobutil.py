"""Images and node helpers for the job tests: chains made with qemu-img and
qemu-io (the peers), nodes added over QMP, results judged by qemu-img."""
import shutil
import subprocess
import time

import pytest

MiB = 1 << 20


def sh(*args):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                       timeout=300)
    if r.returncode != 0:
        pytest.fail("%s failed: %s%s" % (" ".join(map(str, args)), r.stdout,
                                         r.stderr))
    return r.stdout


def qcow2(path, size, backing=None, writes=()):
    args = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing:
        args += ["-b", str(backing), "-F", "qcow2"]
    sh(*args, path, size)
    for pattern, off, length in writes:
        sh("qemu-io", "-c", "write -P %d %d %d" % (pattern, off, length), path)
    return str(path)


def chain(tmp, size=16 * MiB):
    """base <- mid <- top, each layer with data of its own."""
    base = qcow2(tmp / "base.qcow2", size, writes=[(0x11, 0, 4 * MiB),
                                                   (0x12, 12 * MiB, 2 * MiB)])
    mid = qcow2(tmp / "mid.qcow2", size, base, writes=[(0x21, 2 * MiB, 2 * MiB)])
    top = qcow2(tmp / "top.qcow2", size, mid, writes=[(0x31, 3 * MiB, 1 * MiB),
                                                      (0x32, 8 * MiB, 64 * 1024)])
    return base, mid, top


def snapshot_copy(path, out):
    """A flat raw copy of what path's chain reads, for comparisons."""
    sh("qemu-img", "convert", "-O", "raw", path, out)
    return str(out)


def compare(a, b):
    r = subprocess.run(["qemu-img", "compare", str(a), str(b)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def check(path):
    sh("qemu-img", "check", path)


def add_qcow2(qmp, name, path, **extra):
    args = {"driver": "qcow2", "node-name": name,
            "file": {"driver": "file", "filename": str(path)}}
    args.update(extra)
    qmp.cmd_args("blockdev-add", args)


def finish_job(qmp, job_id, timeout=120):
    """Wait for the job's end; return the BLOCK_JOB_COMPLETED/CANCELLED."""
    ev = qmp.get_event(None, timeout=timeout, match={"device": job_id})
    while ev["event"] not in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"):
        ev = qmp.get_event(None, timeout=timeout, match={"device": job_id})
    return ev


def statuses(qmp, job_id, until="null", timeout=60):
    """The job's JOB_STATUS_CHANGE statuses seen so far, after waiting for
    `until` (events stay queued)."""
    deadline = time.time() + timeout
    while until and not any(e["event"] == "JOB_STATUS_CHANGE" and
                            e["data"] == {"id": job_id, "status": until}
                            for e in qmp.events):
        assert time.time() < deadline, "no %s status for %s" % (until, job_id)
        msg = qmp.recv()
        if "event" in msg:
            qmp.events.append(msg)
    seen = [e["data"]["status"] for e in qmp.events
            if e["event"] == "JOB_STATUS_CHANGE" and e["data"]["id"] == job_id]
    # QEMU pauses jobs internally while it drains: drop those round trips
    out = []
    for st in seen:
        if st == "running" and out and out[-1] == "paused":
            out.pop()
            continue
        out.append(st)
    return out
    return [e["data"]["status"] for e in qmp.events
            if e["event"] == "JOB_STATUS_CHANGE" and e["data"]["id"] == job_id]


def need_qsd():
    if shutil.which("qemu-storage-daemon") is None:
        pytest.skip("qemu-storage-daemon not installed")
