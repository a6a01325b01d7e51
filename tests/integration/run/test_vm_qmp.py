"""QMP in ferry run, on KVM with testos: run states (query-status, stop,
cont, -S, --no-shutdown), system_reset (a second boot on serial),
system_powerdown (testos sees the power button and powers off), quit,
query-cpus-fast against the process's threads, query-block and
query-named-block-nodes on the VM's drives, the socket spellings, and the
power button register itself under qtest."""
import json
import os
import re
import time

import pytest

from conftest import ferry_path, need, run
from guest import guest_elf, need_kvm
from qtest import QTest
from vmqmp import Vm, free_port, qmp_tcp
from qmpclient import Qmp, QmpError

DIRTY = "test=dirty pages=256 secs=0 report=100"


@pytest.fixture
def kvm():
    need_kvm()


def dirty_reports(vm):
    return [int(x) for x in re.findall(r"dirty: t=\d+ms dirtied=(\d+) "
                                       r"checksum=0x[0-9a-f]+ ok", vm.text())]


def status(q):
    return q.cmd("query-status")


def test_stop_freezes_the_guest_and_cont_resumes_it(kvm, tmp_path):
    vm = Vm(tmp_path, DIRTY)
    q = vm.qmp
    try:
        vm.wait_serial(r"dirty: t=", 3)
        assert status(q) == {"status": "running", "singlestep": False,
                             "running": True}
        q.cmd("stop")
        q.get_event("STOP", timeout=10)
        assert status(q) == {"status": "paused", "singlestep": False,
                             "running": False}
        frozen = dirty_reports(vm)
        time.sleep(1.0)                 # ten report periods
        assert dirty_reports(vm) == frozen, "the guest ran while stopped"
        q.cmd("stop")                   # again: no second STOP
        q.cmd("cont")
        q.get_event("RESUME", timeout=10)
        assert status(q)["status"] == "running"
        vm.wait_serial(r"dirty: t=", len(frozen) + 3)
        after = dirty_reports(vm)
        assert after[-1] > frozen[-1]   # the counter moves again
        q.cmd("cont")                   # again: no second RESUME
        time.sleep(0.2)
        q.execute("query-version")
        names = [e["event"] for e in q.events]
        assert "STOP" not in names and "RESUME" not in names, names
        q.cmd("quit")
        ev = q.get_event("SHUTDOWN", timeout=10)
        assert ev["data"] == {"guest": False, "reason": "host-qmp-quit"}
        assert vm.wait() == 0
    finally:
        vm.kill()


def test_system_reset_reboots_the_guest(kvm, tmp_path):
    vm = Vm(tmp_path, DIRTY)
    q = vm.qmp
    try:
        vm.wait_serial(r"dirty: t=", 2)
        q.cmd("system_reset")
        ev = q.get_event("RESET", timeout=10)
        assert ev["data"] == {"guest": False,
                              "reason": "host-qmp-system-reset"}
        vm.wait_serial(r"user mode reached", 2)       # a second boot
        vm.wait_serial(r"dirty: pages=256", 2)
        assert status(q)["status"] == "running"
        # reset while paused: the guest stays held (prelaunch) until cont
        q.cmd("stop")
        q.cmd("system_reset")
        q.get_event("RESET", timeout=10)
        assert status(q)["status"] == "prelaunch"
        time.sleep(0.5)
        assert vm.text().count("user mode reached") == 2
        q.cmd("cont")
        q.get_event("RESUME", timeout=10)
        vm.wait_serial(r"user mode reached", 3)
    finally:
        q.cmd("quit")
        vm.wait()
        vm.kill()


def test_system_powerdown_the_guest_powers_off(kvm, tmp_path):
    vm = Vm(tmp_path, DIRTY)
    q = vm.qmp
    try:
        vm.wait_serial(r"dirty: t=", 2)
        q.cmd("system_powerdown")
        q.get_event("POWERDOWN", timeout=10)
        ev = q.get_event("SHUTDOWN", timeout=10)
        assert ev["data"] == {"guest": True, "reason": "guest-shutdown"}
        assert vm.wait() == 0
        assert "dirty: power button pressed, powering off" in vm.text()
    finally:
        vm.kill()


def test_guest_reset_with_no_reboot_is_a_shutdown(kvm, tmp_path):
    vm = Vm(tmp_path, "test=guestreset", extra=["-S", "--no-reboot"])
    q = vm.qmp
    try:
        assert status(q)["status"] == "prelaunch"
        time.sleep(0.3)
        assert "user mode reached" not in vm.text()   # held by -S
        q.cmd("cont")
        q.get_event("RESUME", timeout=10)
        ev = q.get_event("SHUTDOWN", timeout=10)
        assert ev["data"] == {"guest": True, "reason": "guest-reset"}
        assert vm.wait() == 2
    finally:
        vm.kill()


def test_no_shutdown_keeps_the_vm_until_reset(kvm, tmp_path):
    vm = Vm(tmp_path, "test=pci", extra=["--no-shutdown"])
    q = vm.qmp
    try:
        ev = q.get_event("SHUTDOWN", timeout=20)
        assert ev["data"] == {"guest": True, "reason": "guest-shutdown"}
        q.get_event("STOP", timeout=10)
        assert status(q) == {"status": "shutdown", "singlestep": False,
                             "running": False}
        r = q.execute("cont")
        assert r["error"] == {"class": "GenericError", "desc":
                              "Resetting the Virtual Machine is required"}
        q.cmd("system_reset")
        q.get_event("RESET", timeout=10)
        assert status(q)["status"] == "prelaunch"
        q.cmd("cont")
        q.get_event("RESUME", timeout=10)
        ev = q.get_event("SHUTDOWN", timeout=20)      # it ran again
        assert vm.text().count("testos: PASS") == 2
        q.cmd("quit")
        assert vm.wait() == 0
    finally:
        vm.kill()


def test_signal_is_a_host_signal_shutdown(kvm, tmp_path):
    vm = Vm(tmp_path, DIRTY)
    try:
        vm.wait_serial(r"dirty: t=", 1)
        vm.proc.terminate()
        ev = vm.qmp.get_event("SHUTDOWN", timeout=10)
        assert ev["data"] == {"guest": False, "reason": "host-signal"}
        assert vm.wait() == 4
    finally:
        vm.kill()


def test_query_cpus_fast_names_the_vcpu_threads(kvm, tmp_path):
    vm = Vm(tmp_path, DIRTY, smp=2, extra=["--name", "guest7"])
    q = vm.qmp
    try:
        cpus = q.cmd("query-cpus-fast")
        assert [c["cpu-index"] for c in cpus] == [0, 1]
        tasks = os.listdir("/proc/%d/task" % vm.proc.pid)
        for c in cpus:
            assert set(c) == {"cpu-index", "qom-path", "thread-id", "props",
                              "target"}
            assert c["target"] == "x86_64"
            assert c["props"] == {"core-id": c["cpu-index"], "thread-id": 0,
                                  "socket-id": 0}
            tid = c["thread-id"]
            assert str(tid) in tasks and tid != vm.proc.pid
            comm = open("/proc/%d/task/%d/comm" % (vm.proc.pid, tid)).read()
            assert comm.strip() == "vcpu%d" % c["cpu-index"]
        assert len({c["qom-path"] for c in cpus}) == 2
        assert q.cmd("query-name") == {"name": "guest7"}
        assert q.cmd("query-kvm") == {"enabled": True, "present": True}
    finally:
        q.cmd("quit")
        vm.wait()
        vm.kill()


def test_query_block_lists_the_drives(kvm, tmp_path):
    need("qemu-img")
    base = tmp_path / "base.qcow2"
    top = tmp_path / "top.qcow2"
    raw = tmp_path / "ro.raw"
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "32M"])
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F",
         "qcow2", str(top)])
    run(["qemu-img", "create", "-q", "-f", "raw", str(raw), "8M"])
    vm = Vm(tmp_path, DIRTY, drives=[(top, "sys", None, ""),
                                     (raw, "data", "raw", "read-only=on")])
    q = vm.qmp
    try:
        blocks = q.cmd("query-block")
        assert [b["device"] for b in blocks] == ["sys", "data"]
        assert [b["qdev"] for b in blocks] == [
            "/machine/peripheral-anon/device[%d]/virtio-backend" % i
            for i in range(2)]
        for b in blocks:
            assert b["type"] == "unknown" and b["removable"] is False
            assert b["locked"] is False and b["io-status"] == "ok"
        sys_, data = (b["inserted"] for b in blocks)
        assert sys_["file"] == str(top) and sys_["drv"] == "qcow2"
        assert sys_["ro"] is False and sys_["backing_file_depth"] == 1
        assert sys_["image"]["backing-image"]["filename"] == str(base)
        assert data["ro"] is True and data["drv"] == "raw"
        assert data["image"]["virtual-size"] == 8 << 20
        nodes = {n["node-name"]: n for n in q.cmd("query-named-block-nodes")}
        assert sys_["node-name"] in nodes and data["node-name"] in nodes
        assert nodes[sys_["node-name"]]["file"] == str(top)
        # the device name works wherever a node is asked for
        q.cmd("block-dirty-bitmap-add", node="sys", name="b0")
        sys_ = q.cmd("query-block")[0]["inserted"]
        assert [b["name"] for b in sys_["dirty-bitmaps"]] == ["b0"]
        r = q.execute("block-dirty-bitmap-add", {"node": "nope", "name": "x"})
        assert r["error"]["desc"] == \
            "Cannot find device='nope' nor node-name='nope'"
        # a writer is refused while the VM holds the disk
        assert run(["qemu-io", "-c", "write 0 4k", str(top)],
                   check=False).rc != 0
    finally:
        q.cmd("quit")
        vm.wait()
        vm.kill()


def test_qmp_spellings_tcp_and_bad_addresses(kvm, tmp_path):
    port = free_port()
    vm = Vm(tmp_path, DIRTY, qmp_spec="tcp:127.0.0.1:%d,server" % port,
            extra=["-qmp", "unix:%s,server=on,wait=off" % (tmp_path / "b.sock")])
    try:
        q = qmp_tcp("127.0.0.1", port)
        other = Qmp(str(tmp_path / "b.sock"))
        assert q.cmd("query-status")["status"] in ("running", "prelaunch")
        q.cmd("stop")
        # every client of every socket gets the event
        assert other.get_event("STOP", timeout=10)["event"] == "STOP"
        names = {c["name"] for c in other.cmd("query-commands")}
        assert {"query-status", "stop", "cont", "system_reset",
                "system_powerdown", "quit", "query-cpus-fast", "query-block",
                "drive-mirror", "drive-backup", "blockdev-backup",
                "block-dirty-bitmap-add"} <= names
        schema = other.cmd("query-qmp-schema")
        events = {e["name"] for e in schema if e["meta-type"] == "event"}
        assert {"STOP", "RESUME", "RESET", "POWERDOWN", "SHUTDOWN"} <= events
        q.cmd("quit")
        assert vm.wait() == 0
    finally:
        vm.kill()
    r = run([ferry_path(), "run", "--kernel", guest_elf(), "--qmp",
             "bogus:x"], check=False)
    assert r.rc == 1
    assert "--qmp: qmp address 'bogus:x' must be unix:PATH or tcp:HOST:PORT" \
        in r.err


def test_power_button_register_and_line_under_qtest(tmp_path):
    """The register testos polls, seen without guest code: system_powerdown
    sets bit 0 and raises GSI 9; a read returns and clears it, and the
    line falls; a reset drops a press nobody read."""
    sock = tmp_path / "qmp.sock"
    qt = QTest(tmp_path, "--qmp", "unix:%s,server,wait=off" % sock)
    try:
        deadline = time.time() + 10
        while not sock.exists():
            assert time.time() < deadline, "no QMP socket"
            time.sleep(0.02)
        q = Qmp(str(sock))
        assert qt.ok("irq_intercept_in ioapic") == ""
        assert qt.inl(0x610) == 0
        q.cmd("system_powerdown")
        q.get_event("POWERDOWN", timeout=10)
        assert qt.inb(0x611) == 0                  # other bytes: nothing
        assert "IRQ raise 9" in qt.irqs
        assert qt.inl(0x610) == 1                  # the press, cleared
        assert qt.irqs[-1] == "IRQ lower 9"
        assert qt.inl(0x610) == 0
        q.cmd("system_powerdown")
        q.get_event("POWERDOWN", timeout=10)
        q.cmd("system_reset")
        q.get_event("RESET", timeout=10)
        assert qt.inl(0x610) == 0                  # reset dropped it
        assert qt.irqs[-1] == "IRQ lower 9"
        q.close()
    finally:
        rc, out, err = qt.close()
    assert rc == 0, err


def test_qmp_server_without_wait_off_holds_the_guest(kvm, tmp_path):
    """QEMU's wait=on, the default for a server socket: the guest starts
    only once a client has connected."""
    sock = tmp_path / "w.sock"
    vm = Vm(tmp_path, DIRTY, qmp_spec="unix:%s,server" % sock)
    try:
        deadline = time.time() + 10
        while not sock.exists():
            assert time.time() < deadline, vm.output()
            time.sleep(0.02)
        time.sleep(0.5)
        assert vm.text() == "", "the guest ran before a client connected"
        assert "waiting for a connection on unix:%s,server" % sock \
            in vm.output()
        q = Qmp(str(sock))
        vm.wait_serial(r"dirty: t=", 1)
        assert q.cmd("query-status")["status"] == "running"
        q.cmd("quit")
        assert vm.wait() == 0
    finally:
        vm.kill()
