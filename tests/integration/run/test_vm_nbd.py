"""A guest disk on an NBD export: ferry run --drive nbd+unix:///NAME?socket=
against `ferry nbd` and against `qemu-nbd` serving a qcow2 image.  testos
writes and reads back its pattern through the export; after the VM and
the server are gone, qemu-img judges the image."""
import os
import subprocess
import time

import pytest

from conftest import ferry_path, need, run
from guest import boot_testos, diskloop_rounds, need_kvm, write_reference
from vmqmp import Vm

MiB = 1 << 20


def serve(kind, image, sock, log):
    """Start an NBD server exporting image as 'disk' on a unix socket."""
    if kind == "ferry":
        r = subprocess.run([ferry_path(), "nbd", "--help"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip("ferry nbd is not in this build (the NBD server "
                        "branch is not merged): %s" % r.stderr.strip())
        args = [ferry_path(), "nbd"]
    else:
        need("qemu-nbd")
        args = ["qemu-nbd"]
    args += ["-t", "-k", str(sock), "-x", "disk", "-f", "qcow2", str(image)]
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 10
    while not os.path.exists(str(sock)):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail("%s did not start" % kind)
        time.sleep(0.02)
    time.sleep(0.1)          # the path appears at bind(), before listen()
    return proc


def need_nbd_driver(uri):
    r = run([ferry_path(), "img", "info", uri], check=False)
    if r.rc != 0 and "No such file or directory" in r.err:
        pytest.skip("the nbd client driver is not in this build (the nbd "
                    "branch is not merged): ferry opens nbd+unix:// as a file")


@pytest.mark.parametrize("server", ["ferry", "qemu-nbd"])
def test_guest_disk_on_an_nbd_export(tmp_path, server):
    need_kvm()
    need("qemu-img")
    image = tmp_path / "disk.qcow2"
    sock = tmp_path / "nbd.sock"
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"])
    log = open(str(tmp_path / "server.log"), "w+")
    proc = serve(server, image, sock, log)
    uri = "nbd+unix:///disk?socket=%s" % sock
    try:
        need_nbd_driver(uri)
        rc, out, err = boot_testos("test=disk sectors=4096 start=2000",
                                   "--drive", uri, timeout=120)
        assert rc == 0, out + err
        assert "wrote and verified 4096 sectors at 2000" in out
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    write_reference(tmp_path / "ref.raw", 64 * MiB, 2000, 4096)
    run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2",
         str(tmp_path / "ref.raw"), str(image)])
    run(["qemu-img", "check", str(image)])


@pytest.mark.parametrize("server", ["ferry", "qemu-nbd"])
def test_mirror_a_running_guest_onto_an_nbd_export(tmp_path, server):
    """Live storage migration's shape: the guest's local disk mirrored to
    an export added with blockdev-add, then the guest runs on the export."""
    need_kvm()
    need("qemu-img")
    src = tmp_path / "src.qcow2"
    dst = tmp_path / "dst.qcow2"
    sock = tmp_path / "nbd.sock"
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(src), "64M"])
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(dst), "64M"])
    log = open(str(tmp_path / "server.log"), "w+")
    proc = serve(server, dst, sock, log)
    try:
        need_nbd_driver("nbd+unix:///disk?socket=%s" % sock)
        vm = Vm(tmp_path, "test=diskloop start=100 sectors=2048 delay=5",
                drives=[(src, "drive0", None, "")])
        q = vm.qmp
        try:
            vm.wait_serial(r"diskloop: round 2\b")
            q.cmd_args("blockdev-add", {
                "driver": "nbd", "node-name": "remote", "export": "disk",
                "server": {"type": "unix", "path": str(sock)}})
            q.cmd("blockdev-mirror", device="drive0", target="remote",
                  sync="full", job_id="m0")
            q.get_event("BLOCK_JOB_READY", timeout=60)
            q.cmd("job-complete", id="m0")
            ev = q.get_event("BLOCK_JOB_COMPLETED", timeout=60)
            assert "error" not in ev["data"], ev
            assert q.cmd("query-block")[0]["inserted"]["node-name"] == "remote"
            before = vm.rounds_seen()
            vm.wait_serial(r"diskloop: round %d\b" % (before + 3))
            q.cmd("system_powerdown")
            assert vm.wait() == 0, vm.output()
        finally:
            vm.kill()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    run(["qemu-img", "check", str(dst)])
    last = vm.rounds_seen()
    assert set(diskloop_rounds(dst, 100, 2048, tmp_path)) == {last}
    assert max(diskloop_rounds(src, 100, 2048, tmp_path)) <= before
