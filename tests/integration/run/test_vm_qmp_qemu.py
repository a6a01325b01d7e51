"""ferry run's QMP against QEMU's: the same script against ferry on KVM and
qemu-system-x86_64 (Debian's 7.2, TCG) booting the same testos through its
PVH entry, with the same drives.  Answers must have QEMU's shape (keys and
types) and the run-state events QEMU's sequence and data."""
import time

from conftest import need, run
from guest import need_kvm
from vmqmp import Vm, need_qemu_system, shape

# secs != 0: testos does not watch ferry's power button, so both guests
# ignore system_powerdown and the event sequences can be compared
STEADY = "test=dirty pages=64 secs=3600 report=1000"


class Recorder:
    """Waits for events by name and keeps them all in arrival order."""

    def __init__(self, q):
        self.q = q
        self.cursor = 0

    def take(self, name):
        deadline = time.time() + 60
        while True:
            for i in range(self.cursor, len(self.q.events)):
                if self.q.events[i]["event"] == name:
                    self.cursor = i + 1
                    return self.q.events[i]
            assert time.time() < deadline, "no %s: %r" % (name, self.q.events)
            msg = self.q.recv()
            if "event" in msg:
                self.q.events.append(msg)

    def rest(self):
        return [(e["event"], e.get("data")) for e in self.q.events]


def script(vm):
    """The commands of the comparison: {name: answer} and the events."""
    q = vm.qmp
    ev = Recorder(q)
    vm.wait_serial(r"dirty: pages=64", timeout=60)
    got = {}
    for c in ("query-status", "query-cpus-fast", "query-name", "query-kvm"):
        got[c] = q.cmd(c)
    q.cmd("block-dirty-bitmap-add", node="drive0", name="b0")
    got["query-block"] = q.cmd("query-block")
    root = got["query-block"][0]["inserted"]["node-name"]
    got["query-named-block-nodes"] = [
        n for n in q.cmd("query-named-block-nodes") if n["node-name"] == root]
    q.cmd("stop")
    ev.take("STOP")
    got["query-status paused"] = q.cmd("query-status")
    q.cmd("stop")
    q.cmd("cont")
    ev.take("RESUME")
    q.cmd("cont")
    q.cmd("system_reset")
    ev.take("RESET")
    vm.wait_serial(r"user mode reached", 2, timeout=60)
    q.cmd("system_powerdown")
    ev.take("POWERDOWN")
    q.cmd("quit")
    ev.take("SHUTDOWN")
    return got, ev


def test_vm_answers_and_events_have_qemus_shape(tmp_path):
    need_kvm()
    need_qemu_system()
    need("qemu-img")
    results = {}
    for kind in ("ferry", "qemu"):
        disk = tmp_path / ("%s.qcow2" % kind)
        raw = tmp_path / ("%s.raw" % kind)
        run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"])
        run(["qemu-img", "create", "-q", "-f", "raw", str(raw), "8M"])
        vm = Vm(tmp_path, STEADY, kind=kind, smp=2, name=kind,
                drives=[(disk, "drive0", "qcow2", ""),
                        (raw, "drive1", "raw", "read-only=on")],
                extra=["-name", "g1"])
        try:
            got, rec = script(vm)
            assert vm.wait(timeout=30) == 0
            ev = rec.rest()
        finally:
            vm.kill()
        results[kind] = (got, ev)
    (f, fev), (q, qev) = results["ferry"], results["qemu"]
    for name in q:
        assert shape(f[name]) == shape(q[name]), name
    assert f["query-status"] == q["query-status"]
    assert f["query-status paused"] == q["query-status paused"]
    assert len(f["query-cpus-fast"]) == len(q["query-cpus-fast"]) == 2
    for a, b in zip(f["query-cpus-fast"], q["query-cpus-fast"]):
        assert a["props"] == b["props"] and a["cpu-index"] == b["cpu-index"]
        assert a["target"] == b["target"]
    assert f["query-name"] == q["query-name"] == {"name": "g1"}
    fb, qb = f["query-block"], q["query-block"]
    assert [b["device"] for b in fb] == [b["device"] for b in qb]
    assert [b["qdev"] for b in fb] == [b["qdev"] for b in qb]
    for a, b in zip(fb, qb):
        for key in ("type", "removable", "locked", "io-status"):
            assert a[key] == b[key], key
        ia, ib = a["inserted"], b["inserted"]
        for key in ("ro", "drv", "backing_file_depth", "encrypted",
                    "detect_zeroes"):
            assert ia[key] == ib[key], key
        assert ia["image"]["virtual-size"] == ib["image"]["virtual-size"]
        assert ia.get("dirty-bitmaps") == ib.get("dirty-bitmaps")
    # QEMU's firmware (SeaBIOS) resets the machine again when it runs after
    # system_reset; testos here never resets, and ferry has no firmware
    firmware = ("RESET", {"guest": True, "reason": "guest-reset"})
    assert firmware not in fev
    qev = [e for e in qev if e != firmware]
    assert fev == qev, (fev, qev)


def test_reset_shutdown_and_cont_refusal_as_qemu(tmp_path):
    """-S, -no-reboot and -no-shutdown: the guest's reset is a shutdown the
    VM stays in; cont is refused, system_reset is another shutdown."""
    need_kvm()
    need_qemu_system()
    results = {}
    for kind in ("ferry", "qemu"):
        vm = Vm(tmp_path, "test=guestreset", kind=kind, name=kind,
                extra=["-S", "-no-reboot", "-no-shutdown"])
        q = vm.qmp
        rec = Recorder(q)
        try:
            got = [q.cmd("query-status")]
            q.cmd("cont")
            rec.take("RESUME")
            rec.take("SHUTDOWN")
            rec.take("STOP")
            got.append(q.cmd("query-status"))
            got.append(q.execute("cont", id="x"))
            q.cmd("system_reset")
            rec.take("SHUTDOWN")
            got.append(q.cmd("query-status"))
            q.cmd("quit")
            rec.take("SHUTDOWN")
            rc = vm.wait()
            assert "testos: resetting" in vm.text()
        finally:
            vm.kill()
        results[kind] = (got, rec.rest(), rc)
    assert results["ferry"] == results["qemu"]
    got, evs, rc = results["ferry"]
    assert got[0]["status"] == "prelaunch" and got[1]["status"] == "shutdown"
    assert [e[1] for e in evs if e[0] == "SHUTDOWN"] == [
        {"guest": True, "reason": "guest-reset"},
        {"guest": False, "reason": "host-qmp-system-reset"},
        {"guest": False, "reason": "host-qmp-quit"}]
    assert got[2]["error"]["desc"] == "Resetting the Virtual Machine is required"
