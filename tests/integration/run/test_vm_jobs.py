"""Block jobs on a running guest's disk, over the VM's QMP: testos writes
rounds of a tagged pattern (test=diskloop) while mirror, backup (full and
incremental from a dirty bitmap), stream and active commit run.  The
results are judged by the peers: qemu-img check/compare/map and qemu-io,
and the rounds decoded from each image say which writes went where."""
import json

import pytest

from conftest import need, run
from guest import diskloop_rounds, need_kvm
from vmqmp import Vm

MiB = 1 << 20
START, SECTORS = 100, 2048         # the range the guest rewrites each round
LOOP = "test=diskloop start=%d sectors=%d delay=5" % (START, SECTORS)


@pytest.fixture(autouse=True)
def peers():
    need_kvm()
    need("qemu-img")
    need("qemu-io")


def qcow2(path, size=64 * MiB, backing=None, writes=()):
    args = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing:
        args += ["-b", str(backing), "-F", "qcow2"]
    run(args + [str(path), str(size)])
    for pattern, off, length in writes:
        run(["qemu-io", "-c", "write -P 0x%x %d %d" % (pattern, off, length),
             str(path)])
    return path


def finish(q, job, timeout=60):
    ev = q.get_event(None, timeout=timeout, match={"device": job})
    while ev["event"] not in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"):
        ev = q.get_event(None, timeout=timeout, match={"device": job})
    assert ev["event"] == "BLOCK_JOB_COMPLETED", ev
    assert "error" not in ev["data"], ev
    return ev


def wait_rounds(vm, n, timeout=30):
    vm.wait_serial(r"diskloop: round %d\b" % n, timeout=timeout)


def powerdown(vm):
    """Press the button; the guest verifies its last round and powers off."""
    vm.qmp.cmd("system_powerdown")
    assert vm.wait() == 0, vm.output()
    assert "diskloop: power button pressed, powering off" in vm.text()
    return vm.rounds_seen()


def inserted_file(q, device="drive0"):
    return [b for b in q.cmd("query-block")
            if b["device"] == device][0]["inserted"]["file"]


def check(*images):
    for img in images:
        run(["qemu-img", "check", str(img)])


def test_mirror_pivots_a_running_guest_onto_the_target(tmp_path):
    src = qcow2(tmp_path / "src.qcow2", writes=[(0x5c, 16 * MiB, 8 * MiB)])
    dst = tmp_path / "dst.qcow2"
    vm = Vm(tmp_path, LOOP, drives=[(src, "drive0", None, "")])
    q = vm.qmp
    try:
        wait_rounds(vm, 2)
        q.cmd("drive-mirror", device="drive0", target=str(dst),
              format="qcow2", sync="full")
        q.get_event("BLOCK_JOB_READY", timeout=30)
        at_ready = vm.rounds_seen()
        wait_rounds(vm, at_ready + 2)           # ready, and writes go on
        q.cmd("block-job-complete", device="drive0")
        finish(q, "drive0")
        # every round announced after this started after the pivot
        before = vm.rounds_seen()
        assert inserted_file(q) == str(dst)
        assert q.cmd("query-block-jobs") == []
        wait_rounds(vm, before + 3)
        last = powerdown(vm)
    finally:
        vm.kill()
    check(src, dst)
    on_dst = diskloop_rounds(dst, START, SECTORS, tmp_path)
    on_src = diskloop_rounds(src, START, SECTORS, tmp_path)
    assert on_dst == [last] * SECTORS          # the guest's last round
    assert None not in on_src
    assert max(on_src) <= before                # nothing after the pivot
    assert all(s <= d for s, d in zip(on_src, on_dst))
    # data the guest never touched was copied
    run(["qemu-io", "-c", "read -P 0x5c %d %d" % (16 * MiB, 8 * MiB),
         str(dst)])


def test_mirror_completed_while_stopped_is_an_exact_copy(tmp_path):
    src = qcow2(tmp_path / "src.qcow2", writes=[(0x5c, 16 * MiB, 8 * MiB)])
    dst = tmp_path / "dst.qcow2"
    vm = Vm(tmp_path, LOOP, drives=[(src, "drive0", None, "")])
    q = vm.qmp
    try:
        wait_rounds(vm, 2)
        q.cmd("drive-mirror", device="drive0", target=str(dst),
              format="qcow2", sync="full", job_id="m0")
        q.get_event("BLOCK_JOB_READY", timeout=30)
        q.cmd("stop")
        pivot = vm.rounds_seen()
        q.cmd("job-complete", id="m0")
        finish(q, "m0")
        q.cmd("stop")                           # flushes the new image
        # the pivot moment: source and target hold the same disk
        run(["qemu-img", "compare", "-U", str(src), str(dst)])
        q.cmd("cont")
        wait_rounds(vm, pivot + 3)
        last = powerdown(vm)
    finally:
        vm.kill()
    check(src, dst)
    r = run(["qemu-img", "compare", str(src), str(dst)], check=False)
    assert r.rc == 1, r            # the guest went on writing to dst only
    assert set(diskloop_rounds(dst, START, SECTORS, tmp_path)) == {last}
    assert max(diskloop_rounds(src, START, SECTORS, tmp_path)) <= pivot


def test_backup_and_incremental_backup_of_a_running_guest(tmp_path):
    src = qcow2(tmp_path / "src.qcow2", writes=[(0x5c, 16 * MiB, 8 * MiB)])
    full = tmp_path / "full.qcow2"
    inc = tmp_path / "inc.qcow2"
    vm = Vm(tmp_path, LOOP, drives=[(src, "drive0", None, "")])
    q = vm.qmp
    try:
        wait_rounds(vm, 2)
        # point A: the disk as the full backup must hold it
        q.cmd("stop")
        run(["qemu-img", "convert", "-U", "-O", "raw", str(src),
             str(tmp_path / "a.raw")])
        q.cmd("block-dirty-bitmap-add", node="drive0", name="bm0")
        q.cmd("drive-backup", device="drive0", target=str(full),
              format="qcow2", sync="full", speed=8 * MiB)
        q.cmd("cont")
        a_round = vm.rounds_seen()
        ev = finish(q, "drive0")
        assert ev["data"]["type"] == "backup"
        assert vm.rounds_seen() > a_round + 2, "the guest wrote meanwhile"
        run(["qemu-img", "compare", "-U", str(tmp_path / "a.raw"), str(full)])
        wait_rounds(vm, vm.rounds_seen() + 2)
        # point B: what the incremental backup must add on top of full
        q.cmd("stop")
        run(["qemu-img", "convert", "-U", "-O", "raw", str(src),
             str(tmp_path / "b.raw")])
        bm = q.cmd("query-block")[0]["inserted"]["dirty-bitmaps"][0]
        assert bm["name"] == "bm0" and 0 < bm["count"] <= 2 * MiB
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(full),
             "-F", "qcow2", str(inc)])
        q.cmd_args("blockdev-add", {"driver": "qcow2", "node-name": "inc",
                                    "file": {"driver": "file",
                                             "filename": str(inc)}})
        q.cmd("blockdev-backup", device="drive0", target="inc",
              sync="incremental", bitmap="bm0", job_id="i0", speed=MiB)
        q.cmd("cont")
        finish(q, "i0")
        q.cmd("blockdev-del", node_name="inc")
        run(["qemu-img", "compare", str(tmp_path / "b.raw"), str(inc)])
        # the bitmap now counts what the guest wrote since point B
        wait_rounds(vm, vm.rounds_seen() + 1)
        bm = q.cmd("query-block")[0]["inserted"]["dirty-bitmaps"][0]
        assert bm["count"] > 0
        powerdown(vm)
    finally:
        vm.kill()
    check(src, full, inc)
    # the incremental image holds only clusters the guest wrote
    extents = json.loads(run(["qemu-img", "map", "--output=json", str(inc)]).out)
    mine = [e for e in extents if e["depth"] == 0 and e["data"]]
    assert mine, extents
    for e in mine:
        assert e["start"] + e["length"] <= 2 * MiB, e


def test_stream_under_a_running_guest(tmp_path):
    base = qcow2(tmp_path / "base.qcow2", writes=[(0x11, 0, MiB),
                                                  (0x5c, 16 * MiB, 8 * MiB)])
    top = qcow2(tmp_path / "top.qcow2", backing=base)
    vm = Vm(tmp_path, LOOP, drives=[(top, "drive0", None, "")])
    q = vm.qmp
    try:
        wait_rounds(vm, 2)
        q.cmd("block-stream", device="drive0", speed=16 * MiB)
        finish(q, "drive0")
        ins = q.cmd("query-block")[0]["inserted"]
        assert ins["backing_file_depth"] == 0 and "backing_file" not in ins
        wait_rounds(vm, vm.rounds_seen() + 2)
        last = powerdown(vm)
    finally:
        vm.kill()
    check(top, base)
    info = json.loads(run(["qemu-img", "info", "--output=json", str(top)]).out)
    assert "backing-filename" not in info
    run(["qemu-io", "-c", "read -P 0x5c %d %d" % (16 * MiB, 8 * MiB), str(top)])
    run(["qemu-io", "-c", "read -P 0x11 0 %d" % (START * 512), str(top)])
    assert set(diskloop_rounds(top, START, SECTORS, tmp_path)) == {last}


def test_active_commit_moves_the_guest_onto_the_base(tmp_path):
    base = qcow2(tmp_path / "base.qcow2", writes=[(0x5c, 16 * MiB, 8 * MiB)])
    top = qcow2(tmp_path / "top.qcow2", backing=base,
                writes=[(0x22, 32 * MiB, MiB)])
    vm = Vm(tmp_path, LOOP, drives=[(top, "drive0", None, "")])
    q = vm.qmp
    try:
        wait_rounds(vm, 2)
        q.cmd("block-commit", device="drive0", job_id="c0")
        q.get_event("BLOCK_JOB_READY", timeout=30)
        q.cmd("job-complete", id="c0")
        finish(q, "c0")
        before = vm.rounds_seen()
        assert inserted_file(q) == str(base)
        wait_rounds(vm, before + 3)
        last = powerdown(vm)
    finally:
        vm.kill()
    check(top, base)
    run(["qemu-io", "-c", "read -P 0x22 %d %d" % (32 * MiB, MiB), str(base)])
    assert set(diskloop_rounds(base, START, SECTORS, tmp_path)) == {last}
    assert max(diskloop_rounds(top, START, SECTORS, tmp_path)) <= before


@pytest.mark.parametrize("how", ["quit", "sigterm"])
def test_ending_the_vm_with_jobs_running_leaves_whole_images(tmp_path, how):
    src = qcow2(tmp_path / "src.qcow2", writes=[(0x5c, 16 * MiB, 8 * MiB)])
    mirror, backup = tmp_path / "m.qcow2", tmp_path / "b.qcow2"
    vm = Vm(tmp_path, LOOP, drives=[(src, "drive0", None, "")])
    q = vm.qmp
    try:
        wait_rounds(vm, 2)
        q.cmd("drive-mirror", device="drive0", target=str(mirror),
              format="qcow2", sync="full", speed=MiB)
        q.cmd("drive-backup", device="drive0", target=str(backup),
              format="qcow2", sync="full", speed=MiB, job_id="b0")
        wait_rounds(vm, vm.rounds_seen() + 2)
        jobs = {j["device"]: j for j in q.cmd("query-block-jobs")}
        assert set(jobs) == {"drive0", "b0"}
        assert all(j["status"] == "running" for j in jobs.values())
        if how == "quit":
            q.cmd("quit")
            assert vm.wait() == 0
        else:
            vm.proc.terminate()
            assert vm.wait() == 4
    finally:
        vm.kill()
    check(src, mirror, backup)
    # the guest never moved: its last rounds are in the source
    assert None not in diskloop_rounds(src, START, SECTORS, tmp_path)


def test_external_snapshot_then_active_commit_of_a_running_guest(tmp_path):
    """libvirt's backup shape: snapshot the disk (the guest writes on into
    the overlay), read the now-frozen base, then commit the overlay back
    and pivot, all while diskloop writes and verifies."""
    base = qcow2(tmp_path / "base.qcow2", writes=[(0x5c, 16 * MiB, 8 * MiB)])
    ov = tmp_path / "overlay.qcow2"
    vm = Vm(tmp_path, LOOP, drives=[(base, "drive0", None, "")])
    q = vm.qmp
    try:
        wait_rounds(vm, 2)
        q.cmd("blockdev-snapshot-sync", device="drive0",
              snapshot_file=str(ov), snapshot_node_name="ov",
              format="qcow2")
        at_snapshot = vm.rounds_seen()
        assert inserted_file(q) == str(ov)
        wait_rounds(vm, at_snapshot + 2)        # the guest writes the overlay
        frozen = diskloop_rounds(base, START, SECTORS, tmp_path)
        assert None not in frozen and max(frozen) <= at_snapshot + 1
        q.cmd("block-commit", device="drive0", job_id="c")
        q.get_event("BLOCK_JOB_READY", timeout=30)
        q.cmd("job-complete", id="c")
        finish(q, "c")
        assert inserted_file(q) == str(base)
        before = vm.rounds_seen()
        wait_rounds(vm, before + 2)
        last = powerdown(vm)
    finally:
        vm.kill()
    check(base, ov)
    assert diskloop_rounds(base, START, SECTORS, tmp_path) == [last] * SECTORS
    run(["qemu-io", "-c", "read -P 0x5c %d %d" % (16 * MiB, 8 * MiB),
         str(base)])
