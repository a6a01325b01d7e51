"""External snapshots over QMP: blockdev-snapshot-sync, blockdev-snapshot
(the overlay made beforehand, as libvirt does) and both inside
`transaction`, while a client writes through an NBD export of the disk.
Each scenario runs against ferry and qemu-storage-daemon; the images are
judged by qemu-img (compare, check, info)."""
import json
import subprocess

import pytest

from jobutil import MiB, add_qcow2, check, compare, qcow2, sh, snapshot_copy
from qmpclient import QmpError, any_daemon  # noqa: F401

SIZE = 16 * MiB


def export(q, tmp_path, node):
    sock = str(tmp_path / "nbd.sock")
    q.cmd("nbd-server-start", addr={"type": "unix", "data": {"path": sock}})
    q.cmd("block-export-add", type="nbd", id="e", node_name=node, name="e",
          writable=True)
    return "nbd+unix:///e?socket=%s" % sock


def nbd_write(uri, pattern, off, length):
    sh("qemu-io", "-f", "raw", "-c",
       "write -P %d %d %d" % (pattern, off, length), uri)


def backing_of(path):
    info = json.loads(sh("qemu-img", "info", "--output=json", path))
    return info.get("backing-filename")


def expected(tmp_path, base_raw, writes, name):
    """base_raw with writes applied: the disk as the client sees it."""
    data = bytearray(open(base_raw, "rb").read())
    for pattern, off, length in writes:
        data[off:off + length] = bytes([pattern]) * length
    out = tmp_path / name
    out.write_bytes(data)
    return str(out)


def test_snapshot_sync_moves_the_export_onto_the_overlay(any_daemon,
                                                         tmp_path):
    base = qcow2(tmp_path / "base.qcow2", SIZE, writes=[(0x11, 0, 2 * MiB)])
    q = any_daemon.qmp
    add_qcow2(q, "d", base)
    uri = export(q, tmp_path, "d")
    nbd_write(uri, 0x22, MiB, MiB)
    at_snapshot = snapshot_copy(uri, tmp_path / "at-snapshot.raw")
    ov = str(tmp_path / "overlay.qcow2")
    q.cmd("blockdev-snapshot-sync", node_name="d", snapshot_file=ov,
          snapshot_node_name="ov", format="qcow2")
    nbd_write(uri, 0x33, 4 * MiB, MiB)       # lands in the overlay
    want = expected(tmp_path, at_snapshot, [(0x33, 4 * MiB, MiB)],
                    "want.raw")
    names = {n["node-name"] for n in q.cmd("query-named-block-nodes")}
    assert "ov" in names
    any_daemon.stop()
    check(base)
    check(ov)
    compare(base, at_snapshot)               # the snapshot point, untouched
    compare(ov, want)
    assert backing_of(ov) == base


def test_blockdev_snapshot_with_a_prepared_overlay(any_daemon, tmp_path):
    base = qcow2(tmp_path / "base.qcow2", SIZE, writes=[(0x11, 0, 2 * MiB)])
    ov = qcow2(tmp_path / "ov.qcow2", SIZE, backing=base)
    base_raw = snapshot_copy(base, tmp_path / "base.raw")
    q = any_daemon.qmp
    add_qcow2(q, "d", base)
    uri = export(q, tmp_path, "d")
    add_qcow2(q, "ov", ov, backing=None)
    q.cmd("blockdev-snapshot", node="d", overlay="ov")
    nbd_write(uri, 0x44, 3 * MiB, 2 * MiB)
    any_daemon.stop()
    compare(base, base_raw)
    compare(ov, expected(tmp_path, base_raw, [(0x44, 3 * MiB, 2 * MiB)],
                         "want.raw"))
    check(ov)


def test_snapshot_refusals(any_daemon, tmp_path):
    base = qcow2(tmp_path / "base.qcow2", SIZE)
    other = qcow2(tmp_path / "other.qcow2", SIZE)
    ov = qcow2(tmp_path / "ov.qcow2", SIZE, backing=other)
    q = any_daemon.qmp
    add_qcow2(q, "d", base)
    add_qcow2(q, "ov", ov)                   # opens its backing file
    with pytest.raises(QmpError) as e:
        q.cmd("blockdev-snapshot", node="d", overlay="ov")
    assert e.value.cls == "GenericError"
    assert "already has a backing image" in e.value.desc
    with pytest.raises(QmpError) as e:
        q.cmd("blockdev-snapshot", node="nosuch", overlay="ov")
    assert e.value.cls == "GenericError"


def test_transaction_snapshots_two_disks_or_neither(any_daemon, tmp_path):
    a = qcow2(tmp_path / "a.qcow2", SIZE, writes=[(0x0a, 0, MiB)])
    b = qcow2(tmp_path / "b.qcow2", SIZE, writes=[(0x0b, 0, MiB)])
    q = any_daemon.qmp
    add_qcow2(q, "a", a)
    add_qcow2(q, "b", b)
    uri = export(q, tmp_path, "a")
    a_ov = str(tmp_path / "a-ov.qcow2")
    b_ov = str(tmp_path / "b-ov.qcow2")
    # a failing last action undoes the first snapshot
    with pytest.raises(QmpError):
        q.cmd("transaction", actions=[
            {"type": "blockdev-snapshot-sync",
             "data": {"node-name": "a", "snapshot-file": a_ov,
                      "snapshot-node-name": "a-ov", "format": "qcow2"}},
            {"type": "abort", "data": {}}])
    nbd_write(uri, 0x55, 2 * MiB, MiB)       # still goes to a itself
    a_raw = snapshot_copy(uri, tmp_path / "a-now.raw")
    # both at one point in time
    q.cmd("transaction", actions=[
        {"type": "blockdev-snapshot-sync",
         "data": {"node-name": "a", "snapshot-file": a_ov + "2",
                  "snapshot-node-name": "a-ov2", "format": "qcow2"}},
        {"type": "blockdev-snapshot-sync",
         "data": {"node-name": "b", "snapshot-file": b_ov,
                  "snapshot-node-name": "b-ov", "format": "qcow2"}}])
    nbd_write(uri, 0x66, 5 * MiB, MiB)
    any_daemon.stop()
    compare(a, a_raw)
    compare(a_ov + "2", expected(tmp_path, a_raw, [(0x66, 5 * MiB, MiB)],
                                 "want-a.raw"))
    assert backing_of(a_ov + "2") == a
    assert backing_of(b_ov) == b
    for img in (a, b, a_ov + "2", b_ov):
        check(img)
