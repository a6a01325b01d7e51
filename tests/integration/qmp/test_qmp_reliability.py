"""A job whose target runs out of space (a 4 MiB tmpfs) stops, reports or
ignores per its error policy, and the source is unharmed; the same script
runs against qemu-storage-daemon, whose events must match."""
import os
import subprocess

import pytest

from jobutil import MiB, add_qcow2, chain, check, compare, finish_job, qcow2, snapshot_copy
from qmpclient import any_daemon  # noqa: F401


@pytest.fixture
def small_dir(tmp_path):
    d = tmp_path / "small"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs",
                        str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a small tmpfs (needs root): %s" %
                    r.stderr.strip())
    yield d
    subprocess.run(["umount", "-l", str(d)], capture_output=True)


def start(q, tmp_path, small_dir, job, policy):
    base, mid, top = chain(tmp_path)
    want = snapshot_copy(top, tmp_path / "want.raw")
    add_qcow2(q, "src", top)
    tgt = qcow2(small_dir / "t.qcow2", 16 * MiB)
    add_qcow2(q, "tgt", tgt)
    args = {"device": "src", "target": "tgt", "sync": "full", "job-id": "j",
            "on-target-error": policy}
    q.cmd_args("blockdev-mirror" if job == "mirror" else "blockdev-backup",
               args)
    return top, want


@pytest.mark.parametrize("job", ["mirror", "backup"])
@pytest.mark.parametrize("policy", ["stop", "enospc"])
def test_enospc_stops_the_job(any_daemon, tmp_path, small_dir, job, policy):
    q = any_daemon.qmp
    top, want = start(q, tmp_path, small_dir, job, policy)
    ev = q.get_event("BLOCK_JOB_ERROR", match={"device": "j"})
    assert ev["data"] == {"device": "j", "operation": "write",
                          "action": "stop"}
    info = q.cmd("query-block-jobs")[0]
    assert info["io-status"] == "nospace" and info["paused"] is True
    q.cmd("job-cancel", id="j")
    ev = finish_job(q, "j")
    assert ev["event"] == "BLOCK_JOB_CANCELLED"
    any_daemon.stop()
    check(top)
    compare(top, want)


@pytest.mark.parametrize("job", ["mirror", "backup"])
def test_enospc_report_fails_the_job(any_daemon, tmp_path, small_dir, job):
    q = any_daemon.qmp
    top, want = start(q, tmp_path, small_dir, job, "report")
    ev = q.get_event("BLOCK_JOB_ERROR", match={"device": "j"})
    assert ev["data"]["action"] == "report"
    ev = finish_job(q, "j")
    assert ev["event"] == "BLOCK_JOB_COMPLETED"
    assert "error" in ev["data"] and ev["data"]["offset"] < ev["data"]["len"]
    any_daemon.stop()
    check(top)
    compare(top, want)


def test_enospc_ignore_keeps_going_until_cancelled(any_daemon, tmp_path,
                                                   small_dir):
    q = any_daemon.qmp
    top, want = start(q, tmp_path, small_dir, "backup", "ignore")
    for _ in range(3):
        ev = q.get_event("BLOCK_JOB_ERROR", match={"device": "j"})
        assert ev["data"]["action"] == "ignore"
    q.cmd("job-cancel", id="j")
    assert finish_job(q, "j")["event"] == "BLOCK_JOB_CANCELLED"
    any_daemon.stop()
    compare(top, want)
