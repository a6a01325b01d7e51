"""Block jobs over QMP: stream, commit (intermediate and active), mirror
(blockdev- and drive-), backup; verbs, the state machine, events, progress.
Each scenario runs against ferry and qemu-storage-daemon; the result is
judged by qemu-img compare/check, the events by QEMU's sequence."""
import time

import pytest

from jobutil import (MiB, add_qcow2, chain, check, compare, finish_job,
                     qcow2, snapshot_copy, statuses)
from qmpclient import QmpError, any_daemon, both, daemon, shape  # noqa: F401

SUCCESS = ["created", "running", "waiting", "pending", "concluded", "null"]
READY_SUCCESS = ["created", "running", "ready", "waiting", "pending",
                 "concluded", "null"]


def stop(d):
    d.stop()


def test_stream_flattens_chain(any_daemon, tmp_path):
    base, mid, top = chain(tmp_path)
    want = snapshot_copy(top, tmp_path / "want.raw")
    q = any_daemon.qmp
    add_qcow2(q, "top", top)
    q.cmd("block-stream", device="top", job_id="s0")
    ev = finish_job(q, "s0")
    assert ev["event"] == "BLOCK_JOB_COMPLETED" and "error" not in ev["data"]
    assert ev["data"]["type"] == "stream"
    assert ev["data"]["offset"] == ev["data"]["len"] == 16 * MiB
    time.sleep(0.1)
    q.execute("query-version")
    assert statuses(q, "s0") == SUCCESS
    stop(any_daemon)
    check(top)
    compare(top, want)
    from jobutil import sh
    assert "backing file" not in sh("qemu-img", "info", top)


def test_stream_to_base_node_keeps_base(any_daemon, tmp_path):
    base, mid, top = chain(tmp_path)
    want = snapshot_copy(top, tmp_path / "want.raw")
    q = any_daemon.qmp
    add_qcow2(q, "top", top)
    base_node = [n["node-name"] for n in q.cmd("query-named-block-nodes")
                 if n["file"] == base and n["drv"] == "qcow2"][0]
    q.cmd("block-stream", device="top", base_node=base_node, job_id="s1")
    assert finish_job(q, "s1")["event"] == "BLOCK_JOB_COMPLETED"
    stop(any_daemon)
    from jobutil import sh
    info = sh("qemu-img", "info", "--output=json", top)
    assert '"backing-filename": "%s"' % base in info
    compare(top, want)


def test_commit_intermediate(any_daemon, tmp_path):
    base, mid, top = chain(tmp_path)
    want = snapshot_copy(top, tmp_path / "want.raw")
    q = any_daemon.qmp
    add_qcow2(q, "top", top)
    nodes = {n["file"]: n["node-name"] for n in q.cmd("query-named-block-nodes")
             if n["drv"] == "qcow2"}
    q.cmd("block-commit", device="top", top_node=nodes[mid],
          base_node=nodes[base], job_id="c0")
    ev = finish_job(q, "c0")
    assert ev["event"] == "BLOCK_JOB_COMPLETED" and "error" not in ev["data"]
    assert ev["data"]["type"] == "commit"
    stop(any_daemon)
    from jobutil import sh
    assert '"backing-filename": "%s"' % base in \
        sh("qemu-img", "info", "--output=json", top)
    for img in (top, base):
        check(img)
    compare(top, want)


def test_commit_active_needs_complete(any_daemon, tmp_path):
    base, mid, top = chain(tmp_path)
    want = snapshot_copy(top, tmp_path / "want.raw")
    q = any_daemon.qmp
    add_qcow2(q, "top", top)
    q.cmd("block-commit", device="top", job_id="c1")
    ev = q.get_event("BLOCK_JOB_READY", match={"device": "c1"})
    assert ev["data"]["type"] == "commit"
    jobs = q.cmd("query-block-jobs")
    assert jobs[0]["ready"] is True and jobs[0]["status"] == "ready"
    q.cmd("job-complete", id="c1")
    ev = finish_job(q, "c1")
    assert ev["event"] == "BLOCK_JOB_COMPLETED" and "error" not in ev["data"]
    assert statuses(q, "c1") == READY_SUCCESS
    stop(any_daemon)
    check(base)
    compare(base, want)


def mirror_target(q, tmp_path, size=16 * MiB):
    tgt = qcow2(tmp_path / "target.qcow2", size)
    add_qcow2(q, "tgt", tgt)
    return tgt


@pytest.mark.parametrize("sync", ["full", "top"])
def test_blockdev_mirror_then_complete(any_daemon, tmp_path, sync):
    base, mid, top = chain(tmp_path)
    want = snapshot_copy(top, tmp_path / "want.raw")
    q = any_daemon.qmp
    add_qcow2(q, "src", top)
    if sync == "full":
        tgt = mirror_target(q, tmp_path)
    else:
        tgt = qcow2(tmp_path / "target.qcow2", 16 * MiB, mid)
        add_qcow2(q, "tgt", tgt)
    q.cmd("blockdev-mirror", device="src", target="tgt", sync=sync,
          job_id="m0")
    q.get_event("BLOCK_JOB_READY", match={"device": "m0"})
    info = q.cmd("query-jobs")[0]
    assert info["current-progress"] == info["total-progress"] > 0
    q.cmd("job-complete", id="m0")
    ev = finish_job(q, "m0")
    assert ev["event"] == "BLOCK_JOB_COMPLETED" and "error" not in ev["data"]
    stop(any_daemon)
    check(tgt)
    compare(tgt, want)


def test_drive_mirror_creates_target(any_daemon, tmp_path):
    base, mid, top = chain(tmp_path)
    want = snapshot_copy(top, tmp_path / "want.raw")
    q = any_daemon.qmp
    add_qcow2(q, "src", top)
    tgt = str(tmp_path / "new.qcow2")
    q.cmd("drive-mirror", device="src", target=tgt, format="qcow2",
          sync="full", job_id="dm")
    q.get_event("BLOCK_JOB_READY", match={"device": "dm"})
    q.cmd("block-job-complete", device="dm")
    assert finish_job(q, "dm")["event"] == "BLOCK_JOB_COMPLETED"
    stop(any_daemon)
    check(tgt)
    compare(tgt, want)


def test_mirror_cancel_when_ready_is_a_point_in_time_copy(any_daemon, tmp_path):
    base, mid, top = chain(tmp_path)
    want = snapshot_copy(top, tmp_path / "want.raw")
    q = any_daemon.qmp
    add_qcow2(q, "src", top)
    tgt = mirror_target(q, tmp_path)
    q.cmd("blockdev-mirror", device="src", target="tgt", sync="full",
          job_id="m1")
    q.get_event("BLOCK_JOB_READY", match={"device": "m1"})
    q.cmd("block-job-cancel", device="m1")
    ev = finish_job(q, "m1")
    assert ev["event"] == "BLOCK_JOB_COMPLETED"
    # the source still serves: a new mirror of it can start
    q.cmd("blockdev-del", node_name="tgt")
    stop(any_daemon)
    compare(tgt, want)
    compare(top, want)


def test_job_cancel_mirror_is_cancelled(any_daemon, tmp_path):
    base, mid, top = chain(tmp_path)
    q = any_daemon.qmp
    add_qcow2(q, "src", top)
    mirror_target(q, tmp_path)
    q.cmd("blockdev-mirror", device="src", target="tgt", sync="full",
          job_id="m2")
    q.get_event("BLOCK_JOB_READY", match={"device": "m2"})
    q.cmd("job-cancel", id="m2")
    ev = finish_job(q, "m2")
    assert ev["event"] == "BLOCK_JOB_CANCELLED"
    assert set(ev["data"]) == {"type", "device", "len", "offset", "speed"}
    assert "aborting" in statuses(q, "m2")


def test_backup_full(any_daemon, tmp_path):
    base, mid, top = chain(tmp_path)
    want = snapshot_copy(top, tmp_path / "want.raw")
    q = any_daemon.qmp
    add_qcow2(q, "src", top)
    tgt = mirror_target(q, tmp_path)
    q.cmd("blockdev-backup", device="src", target="tgt", sync="full",
          job_id="b0")
    ev = finish_job(q, "b0")
    assert ev["event"] == "BLOCK_JOB_COMPLETED" and "error" not in ev["data"]
    assert ev["data"]["type"] == "backup"
    assert statuses(q, "b0") == SUCCESS
    stop(any_daemon)
    check(tgt)
    compare(tgt, want)


def test_manual_finalize_and_dismiss(any_daemon, tmp_path):
    base, mid, top = chain(tmp_path)
    q = any_daemon.qmp
    add_qcow2(q, "src", top)
    mirror_target(q, tmp_path)
    q.cmd("blockdev-backup", device="src", target="tgt", sync="full",
          job_id="b1", auto_finalize=False, auto_dismiss=False)
    pend = q.get_event("BLOCK_JOB_PENDING", match={"id": "b1"})
    assert pend["data"] == {"type": "backup", "id": "b1"}
    assert q.cmd("query-jobs")[0]["status"] == "pending"
    r = q.execute("job-dismiss", {"id": "b1"})
    assert r["error"]["desc"] == \
        "Job 'b1' in state 'pending' cannot accept command verb 'dismiss'"
    q.cmd("job-finalize", id="b1")
    finish_job(q, "b1")
    assert q.cmd("query-jobs")[0]["status"] == "concluded"
    r = q.execute("job-cancel", {"id": "b1"})
    assert r["error"]["class"] == "GenericError"
    q.cmd("job-dismiss", id="b1")
    assert q.cmd("query-jobs") == []
    assert statuses(q, "b1") == SUCCESS


def test_pause_resume_speed_and_progress(any_daemon, tmp_path):
    base, mid, top = chain(tmp_path)
    q = any_daemon.qmp
    add_qcow2(q, "src", top)
    mirror_target(q, tmp_path)
    # 1 MiB/s over ~9 MiB of data: slow enough to pause in the middle
    q.cmd("blockdev-backup", device="src", target="tgt", sync="full",
          job_id="b2", speed=1 * MiB)
    q.cmd("job-pause", id="b2")
    deadline = time.time() + 30
    while q.cmd("query-jobs")[0]["status"] != "paused":
        assert time.time() < deadline
        time.sleep(0.05)
    j = q.cmd("query-block-jobs")[0]
    assert j["paused"] is True and j["status"] == "paused"
    assert j["speed"] == MiB and j["io-status"] == "ok"
    r = q.execute("job-pause", {"id": "b2"})
    assert r["error"]["class"] == "GenericError"
    r = q.execute("job-complete", {"id": "b2"})
    assert r["error"]["desc"] == \
        "Job 'b2' in state 'paused' cannot accept command verb 'complete'"
    q.cmd("block-job-set-speed", device="b2", speed=0)
    q.cmd("job-resume", id="b2")
    ev = finish_job(q, "b2")
    assert ev["data"]["offset"] == ev["data"]["len"]
    assert ev["data"]["speed"] == 0


def test_job_errors_for_unknown_ids(any_daemon):
    q = any_daemon.qmp
    r = q.execute("block-job-pause", {"device": "nope"})
    assert r["error"] == {"class": "DeviceNotActive",
                          "desc": "Block job 'nope' not found"}
    r = q.execute("job-pause", {"id": "nope"})
    assert r["error"] == {"class": "GenericError", "desc": "Job not found"}


def test_query_answers_have_qsd_shape(both, tmp_path):
    f, q = both
    shapes = []
    for i, d in enumerate(both):
        sub = tmp_path / ("d%d" % i)
        sub.mkdir()
        base, mid, top = chain(sub)
        add_qcow2(d.qmp, "src", top)
        add_qcow2(d.qmp, "tgt", qcow2(sub / "t.qcow2", 16 * MiB))
        d.qmp.cmd("block-dirty-bitmap-add", node="src", name="bm")
        d.qmp.cmd("blockdev-mirror", device="src", target="tgt", sync="full",
                  job_id="m")
        d.qmp.get_event("BLOCK_JOB_READY", match={"device": "m"})
        shapes.append({c: shape(d.qmp.cmd(c)) for c in
                       ["query-jobs", "query-block-jobs"]})
        nodes = d.qmp.cmd("query-named-block-nodes", flat=True)
        src = [n for n in nodes if n["node-name"] == "src"][0]
        shapes[-1]["bitmaps"] = shape([b for b in src["dirty-bitmaps"]
                                       if b.get("name") == "bm"])
        d.qmp.cmd("job-cancel", id="m")
        finish_job(d.qmp, "m")
    assert shapes[0] == shapes[1]


def test_speed_limit_is_kept_and_progress_grows(daemon, tmp_path):
    """speed=2 MiB/s over ~9 MiB of data takes about 4.5 s; progress only
    grows; set-speed to 0 finishes it at once."""
    base, mid, top = chain(tmp_path)
    q = daemon.qmp
    add_qcow2(q, "src", top)
    mirror_target(q, tmp_path)
    t0 = time.time()
    q.cmd("blockdev-backup", device="src", target="tgt", sync="full",
          job_id="s", speed=2 * MiB)
    seen = []
    while time.time() - t0 < 1.5:
        j = q.cmd("query-jobs")[0]
        seen.append(j["current-progress"])
        assert j["total-progress"] >= j["current-progress"]
        time.sleep(0.1)
    assert seen == sorted(seen) and seen[-1] > 0
    # about 2 MiB a second: well under 2.5 s worth of data in 1.5 s
    assert seen[-1] <= 5 * MiB
    q.cmd("block-job-set-speed", device="s", speed=0)
    ev = finish_job(q, "s")
    assert ev["data"]["offset"] == ev["data"]["len"]
    assert time.time() - t0 < 10
