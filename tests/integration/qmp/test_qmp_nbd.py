"""NBD exports over QMP, and every job while a writer keeps writing through
an NBD export of the same node (qemu-io as the NBD client); the result is
judged by qemu-img compare against what the writer wrote.  Then an
incremental backup read through NBD: nbdinfo --map for the dirty bitmap,
nbdcopy for the full copy, restore, compare.  Each against ferry and
qemu-storage-daemon."""
import json
import os
import random
import shutil
import subprocess
import threading
import time

import pytest

from jobutil import MiB, add_qcow2, chain, check, compare, finish_job, qcow2, sh, snapshot_copy
from qmpclient import any_daemon, both, shape  # noqa: F401

SIZE = 16 * MiB


def need(prog):
    if shutil.which(prog) is None:
        pytest.skip("%s not installed (scripts/install-deps.sh)" % prog)


def uri(sock, name):
    return "nbd+unix:///%s?socket=%s" % (name, sock)


def start_nbd(q, tmp_path, legacy=True):
    sock = str(tmp_path / "nbd.sock")
    addr = {"type": "unix", "data": {"path": sock}} if legacy else \
        {"type": "unix", "path": sock}
    q.cmd("nbd-server-start", addr=addr)
    return sock


class NbdWriter(threading.Thread):
    """Writes random patterns through an NBD export with one long-running
    qemu-io, keeping `expect` (the disk as the writer sees it) in step."""

    def __init__(self, target, expect, seed=1):
        super().__init__(daemon=True)
        self.expect = expect
        self.rnd = random.Random(seed)
        self.stop_flag = threading.Event()
        self.writes = 0
        self.error = None
        self.lock = threading.Lock()     # held by each write; tests pause
        self.proc = subprocess.Popen(["qemu-io", "-f", "raw", target],
                                     stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True,
                                     bufsize=1)

    def one_write(self):
        n = self.rnd.choice([4096, 65536, 192 * 1024])
        off = self.rnd.randrange(0, SIZE - n, 4096)
        pat = self.rnd.randrange(1, 256)
        self.proc.stdin.write("write -P %d %d %d\n" % (pat, off, n))
        self.proc.stdin.flush()
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("qemu-io exited")
            if "wrote " in line:
                break
            if "error" in line.lower() or "failed" in line.lower():
                raise RuntimeError("write failed: %s" % line)
        self.expect[off:off + n] = bytes([pat]) * n
        self.writes += 1

    def run(self):
        try:
            while not self.stop_flag.is_set():
                with self.lock:
                    self.one_write()
                time.sleep(0.002)
        except Exception as e:          # reported by finish()
            self.error = e

    def finish(self, min_writes=10):
        self.stop_flag.set()
        self.join(60)
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()
        self.proc.wait(30)
        assert self.error is None, self.error
        assert self.writes >= min_writes, self.writes


def write_expect(path, expect):
    with open(path, "wb") as f:
        f.write(expect)
    return str(path)


# -- export commands ----------------------------------------------------------

def remove_when_idle(q, command, **args):
    """Safe-mode removal refuses an export with clients (QEMU too); a client
    that just exited may not have been reaped by the server yet."""
    deadline = time.monotonic() + 10
    while True:
        r = q.execute(command, {k.replace("_", "-"): v
                                for k, v in args.items()})
        if "error" not in r:
            return r["return"]
        if time.monotonic() > deadline or "in use" not in r["error"]["desc"] \
                and "connected" not in r["error"]["desc"]:
            raise AssertionError(f"{command}: {r['error']}")
        time.sleep(0.05)

def test_export_commands(any_daemon, tmp_path):
    need("nbdinfo")
    q = any_daemon.qmp
    add_qcow2(q, "d", qcow2(tmp_path / "d.qcow2", SIZE,
                            writes=[(0x44, 0, MiB)]))
    r = q.execute("block-export-add", {"type": "nbd", "id": "e",
                                       "node-name": "d"})
    assert r["error"]["class"] == "GenericError"
    sock = start_nbd(q, tmp_path)
    r = q.execute("nbd-server-start", {"addr": {"type": "unix", "data": {
        "path": str(tmp_path / "other.sock")}}})
    assert r["error"] == {"class": "GenericError",
                          "desc": "NBD server already running"}
    q.cmd("block-export-add", type="nbd", id="e", node_name="d",
          name="disk", description="a disk")
    q.cmd("nbd-server-add", device="d", name="legacy", writable=True)
    exps = q.cmd("query-block-exports")
    assert sorted(e["id"] for e in exps) == ["e", "legacy"]
    assert all(e["node-name"] == "d" and e["type"] == "nbd" and
               e["shutting-down"] is False for e in exps)
    info = json.loads(sh("nbdinfo", "--json", uri(sock, "disk")))
    assert info["exports"][0]["export-size"] == SIZE
    assert info["exports"][0]["is_read_only"] is True
    info = json.loads(sh("nbdinfo", "--json", uri(sock, "legacy")))
    assert info["exports"][0]["is_read_only"] is False
    sh("qemu-io", "-r", "-f", "raw", "-c", "read -P 0x44 0 1M",
       uri(sock, "disk"))
    remove_when_idle(q, "block-export-del", id="e")
    ev = q.get_event("BLOCK_EXPORT_DELETED")
    assert ev["data"] == {"id": "e"}
    remove_when_idle(q, "nbd-server-remove", name="legacy")
    assert q.cmd("query-block-exports") == []
    r = q.execute("block-export-del", {"id": "e"})
    assert r["error"]["class"] == "GenericError"
    q.cmd("nbd-server-stop")
    r = q.execute("nbd-server-stop")
    assert r["error"] == {"class": "GenericError",
                          "desc": "NBD server not running"}
    # ferry takes the flat SocketAddress too; QEMU 7.2 wants the legacy one
    if any_daemon.kind == "ferry":
        start_nbd(q, tmp_path, legacy=False)
        q.cmd("nbd-server-stop")


def test_export_answers_have_qsd_shape(both, tmp_path):
    got = []
    for i, d in enumerate(both):
        sub = tmp_path / ("d%d" % i)
        sub.mkdir()
        add_qcow2(d.qmp, "d", qcow2(sub / "d.qcow2", SIZE))
        start_nbd(d.qmp, sub)
        d.qmp.cmd("block-export-add", type="nbd", id="e", node_name="d")
        got.append(shape(d.qmp.cmd("query-block-exports")))
        d.qmp.cmd("nbd-server-stop")
    assert got[0] == got[1]


# -- jobs with a writer --------------------------------------------------------

def export_writable(q, tmp_path, node):
    sock = start_nbd(q, tmp_path)
    q.cmd("block-export-add", type="nbd", id="w", node_name=node,
          name="w", writable=True)
    return uri(sock, "w")


@pytest.mark.parametrize("job", ["stream", "commit-active", "mirror",
                                 "mirror-write-blocking", "drive-mirror",
                                 "backup"])
def test_job_while_writer_writes_through_nbd(any_daemon, tmp_path, job):
    need("qemu-io")
    q = any_daemon.qmp
    base, mid, top = chain(tmp_path)
    expect = bytearray(open(snapshot_copy(top, tmp_path / "start.raw"),
                            "rb").read())
    at_start = bytes(expect)
    add_qcow2(q, "top", top)
    target = export_writable(q, tmp_path, "top")
    w = NbdWriter(target, expect)
    w.start()
    time.sleep(0.2)
    tgt = None
    if job == "stream":
        q.cmd("block-stream", device="top", job_id="j", speed=8 * MiB)
    elif job == "commit-active":
        q.cmd("block-commit", device="top", job_id="j")
    elif job in ("mirror", "mirror-write-blocking"):
        tgt = qcow2(tmp_path / "tgt.qcow2", SIZE)
        add_qcow2(q, "tgt", tgt)
        extra = {"copy_mode": "write-blocking"} if job != "mirror" else {}
        q.cmd("blockdev-mirror", device="top", target="tgt", sync="full",
              job_id="j", **extra)
    elif job == "drive-mirror":
        tgt = str(tmp_path / "dm.qcow2")
        q.cmd("drive-mirror", device="top", target=tgt, format="qcow2",
              sync="full", job_id="j")
    else:
        tgt = qcow2(tmp_path / "bak.qcow2", SIZE)
        add_qcow2(q, "tgt", tgt)
        with w.lock:                    # the point in time: no write in flight
            at_start = bytes(expect)
            q.cmd("blockdev-backup", device="top", target="tgt", sync="full",
                  job_id="j", speed=8 * MiB)
    if job in ("commit-active", "mirror", "mirror-write-blocking",
               "drive-mirror"):
        q.get_event("BLOCK_JOB_READY", match={"device": "j"}, timeout=120)
        time.sleep(0.3)                 # writes while ready, then pivot
        q.cmd("job-complete", id="j")
    ev = finish_job(q, "j", timeout=180)
    assert ev["event"] == "BLOCK_JOB_COMPLETED" and "error" not in ev["data"]
    time.sleep(0.2)                     # writes after the pivot too
    w.finish()
    any_daemon.stop()
    want = write_expect(tmp_path / "want.raw", expect)
    if job in ("stream",):
        compare(top, want)
        check(top)
    elif job == "commit-active":
        compare(base, want)
        check(base)
    elif job in ("mirror", "mirror-write-blocking", "drive-mirror"):
        compare(tgt, want)
        check(tgt)
    else:
        compare(tgt, write_expect(tmp_path / "t0.raw", at_start))
        compare(top, want)
        check(tgt)


# -- incremental backup through NBD --------------------------------------------

def test_incremental_backup_through_nbd(any_daemon, tmp_path):
    for prog in ("nbdinfo", "nbdcopy", "qemu-io"):
        need(prog)
    q = any_daemon.qmp
    base, mid, top = chain(tmp_path)
    expect = bytearray(open(snapshot_copy(top, tmp_path / "start.raw"),
                            "rb").read())
    add_qcow2(q, "disk", top)
    q.cmd("block-dirty-bitmap-add", node="disk", name="inc")
    target = export_writable(q, tmp_path, "disk")
    sock = target.split("socket=")[1]
    # 1. full backup, as the writer writes: the bitmap restarts at its start
    full = qcow2(tmp_path / "full.qcow2", SIZE)
    add_qcow2(q, "full", full)
    w = NbdWriter(target, expect, seed=7)
    w.start()
    time.sleep(0.1)
    with w.lock:
        t0 = bytes(expect)
        q.cmd("blockdev-backup", device="disk", target="full", sync="full",
              bitmap="inc", bitmap_mode="on-success", job_id="f",
              speed=8 * MiB)
    assert "error" not in finish_job(q, "f")["data"]
    # 2. more writes, then stop and freeze the bitmap
    time.sleep(0.3)
    w.finish()
    q.cmd("block-dirty-bitmap-disable", node="disk", name="inc")
    q.cmd("blockdev-del", node_name="full")
    compare(full, write_expect(tmp_path / "t0.raw", t0))
    # 3. an export that offers the bitmap; nbdinfo --map says what changed
    q.cmd("block-export-add", type="nbd", id="ro", node_name="disk",
          name="ro", bitmaps=["inc"])
    ro = uri(sock, "ro")
    extents = json.loads(sh("nbdinfo", "--json",
                            "--map=qemu:dirty-bitmap:inc", ro))
    dirty = [(e["offset"], e["length"]) for e in extents if e["type"] & 1]
    dirty_bytes = sum(n for _, n in dirty)
    assert 0 < dirty_bytes < SIZE
    # 4. restore: the full backup, then only the dirty extents over NBD
    restore = str(tmp_path / "restore.raw")
    sh("qemu-img", "convert", "-O", "raw", full, restore)
    with open(restore, "r+b") as out:
        for off, n in dirty:
            piece = str(tmp_path / "piece")
            # qemu-img dd's count is where input stops, skip included
            sh("qemu-img", "dd", "-f", "raw", "-O", "raw", "bs=4096",
               "skip=%d" % (off // 4096), "count=%d" % ((off + n) // 4096),
               "if=%s" % ro, "of=%s" % piece)
            assert os.path.getsize(piece) == n
            with open(piece, "rb") as f:
                out.seek(off)
                out.write(f.read())
    # 5. the current disk, read whole through NBD by nbdcopy, is the truth
    current = str(tmp_path / "current.raw")
    sh("nbdcopy", ro, current)
    assert open(current, "rb").read() == bytes(expect)
    compare(restore, current)
    any_daemon.stop()


def test_ferry_nbd_qmp_modes(tmp_path):
    """`ferry nbd --qmp ADDR` without an image is the storage daemon; with
    an image, its export is listed and QMP can add more."""
    from conftest import ferry_path
    from qmpclient import Qmp
    need("nbdinfo")
    img = qcow2(tmp_path / "i.qcow2", SIZE, writes=[(0x61, 0, MiB)])
    for with_image in (False, True):
        qsock = str(tmp_path / ("q%d.sock" % with_image))
        nsock = str(tmp_path / ("n%d.sock" % with_image))
        args = [ferry_path(), "nbd", "--qmp", "unix:%s,server" % qsock]
        if with_image:
            args += ["-k", nsock, "-x", "cli", img]
        proc = subprocess.Popen(args)
        try:
            deadline = time.time() + 10
            while True:
                try:
                    q = Qmp(qsock)
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    assert time.time() < deadline
                    time.sleep(0.05)
            if with_image:
                exps = q.cmd("query-block-exports")
                assert [e["id"] for e in exps] == ["cli"]
                sh("qemu-io", "-f", "raw", "-c", "read -P 0x61 0 1M",
                   uri(nsock, "cli"))
                node = exps[0]["node-name"]
            else:
                add_qcow2(q, "n", img)
                start_nbd(q, tmp_path)
                nsock = str(tmp_path / "nbd.sock")
                node = "n"
            q.cmd("block-export-add", type="nbd", id="more", node_name=node,
                  name="more")
            info = json.loads(sh("nbdinfo", "--json", uri(nsock, "more")))
            assert info["exports"][0]["export-size"] == SIZE
            q.cmd("quit")
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
