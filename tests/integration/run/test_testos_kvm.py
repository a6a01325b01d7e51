"""ferry run on KVM with the test OS: boot paths, serial, PCI, virtio-blk
on qcow2/raw/backing chains judged by qemu-img, read-only disks, exit
codes, image locking between two VMs, and the memory-dirtying workload."""
import os
import re
import subprocess
import time

import pytest

from conftest import need, run
from guest import (boot_testos, guest_elf, need_kvm, run_vm, start,
                   write_reference)


@pytest.fixture(autouse=True)
def kvm():
    need_kvm()


@pytest.mark.parametrize("boot", ["pvh", "elf64"])
def test_testos_boots_to_user_mode_and_powers_off(boot):
    rc, out, err = boot_testos("test=pci", "--boot", boot, "--rng")
    assert rc == 0, err
    assert "testos: user mode reached (boot=%s)" % boot in out
    assert "pci: 00:00.0 8086:29c0 class 060000" in out
    assert "1af4:1044 class 00ff00" in out          # virtio-rng
    assert "testos: PASS" in out


def test_qcow2_disk_pattern_judged_by_qemu_img(tmp_path):
    need("qemu-img")
    disk = tmp_path / "disk.qcow2"
    ref = tmp_path / "ref.raw"
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"])
    rc, out, err = boot_testos("test=disk sectors=6000 start=1000",
                          "--drive", disk)
    assert rc == 0, out + err
    assert "wrote and verified 6000 sectors at 1000" in out
    write_reference(ref, 64 << 20, 1000, 6000)
    run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(ref), str(disk)])
    run(["qemu-img", "check", str(disk)])


def test_raw_disk_with_indirect_descriptors_and_event_idx(tmp_path):
    need("qemu-img")
    disk = tmp_path / "disk.raw"
    ref = tmp_path / "ref.raw"
    run(["qemu-img", "create", "-q", "-f", "raw", str(disk), "16M"])
    rc, out, err = boot_testos("test=disk sectors=2048 start=7 indirect=1 eventidx=1",
                          "--drive", "%s,format=raw,num-queues=2" % disk)
    assert rc == 0, out + err
    m = re.search(r"features 0x([0-9a-f]+)", out)
    features = int(m.group(1), 16)
    assert features & (1 << 28) and features & (1 << 29), out
    write_reference(ref, 16 << 20, 7, 2048)
    run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(ref), str(disk)])


def test_guest_writes_land_in_overlay_of_a_backing_chain(tmp_path):
    need("qemu-img")
    need("qemu-io")
    base = tmp_path / "base.qcow2"
    top = tmp_path / "top.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "32M"])
    run(["qemu-io", "-c", "write -P 0x77 8M 1M", str(base)])
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F",
         "qcow2", str(top)])
    rc, out, err = boot_testos("test=disk sectors=1024 start=0", "--drive", top)
    assert rc == 0, out + err
    # the base is untouched, the backing data still shows through the top
    run(["qemu-io", "-c", "read -P 0x77 8M 1M", str(top)])
    run(["qemu-io", "-c", "read -P 0 0 512K", str(base)])
    run(["qemu-img", "check", str(top)])
    run(["qemu-img", "check", str(base)])


def test_read_only_drive_refuses_writes(tmp_path):
    need("qemu-img")
    disk = tmp_path / "ro.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "8M"])
    before = open(disk, "rb").read()
    rc, out, err = boot_testos("test=ro", "--drive", "%s,read-only=on" % disk)
    assert rc == 0, out + err
    assert "ro: read ok, write refused" in out
    assert open(disk, "rb").read() == before


def test_second_vm_on_the_same_qcow2_is_refused(tmp_path):
    need("qemu-img")
    disk = tmp_path / "shared.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "8M"])
    first = start(["--kernel", guest_elf(), "--append",
                   "test=dirty pages=256 secs=3", "--no-reboot", "-m", "128",
                   "--drive", disk])
    try:
        time.sleep(0.5)
        assert first.proc.poll() is None, "first VM ended early"
        rc, out, err = run_vm(["--kernel", guest_elf(), "--append", "test=pci",
                               "--no-reboot", "-m", "128", "--drive", disk])
        assert rc == 1
        assert "in use by another process" in err, err
    finally:
        rc1, out1, err1 = first.wait()
    assert rc1 == 0, err1
    assert "testos: PASS" in out1


def test_bad_device_programming_needs_reset_not_a_crash(tmp_path):
    need("qemu-img")
    disk = tmp_path / "bad.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "8M"])
    rc, out, err = boot_testos("test=bad,reset", "--drive", disk)
    assert rc == 0, out + err
    for case in ("loop", "addr", "indirect", "avail", "head", "qsize", "ring"):
        assert "bad: %s: device status" % case in out
    assert "bad: device works after reset" in out
    assert "20 resets during I/O, device works" in out
    # one log line per NEEDS_RESET event, naming the fault
    assert "a loop" in err and "outside RAM" in err and "power of two" in err
    run(["qemu-img", "check", str(disk)])


def test_exit_codes():
    # guest reset with --no-reboot: 2
    rc, out, err = boot_testos("test=guestreset")
    assert rc == 2, err
    assert "testos: resetting" in out
    # a kernel that is not one: 1, with one line naming the file
    rc, out, err = run_vm(["--kernel", "/etc/hostname"])
    assert rc == 1
    assert "neither a bzImage nor an ELF" in err


def test_guest_reset_reboots_without_no_reboot(tmp_path):
    log = tmp_path / "serial.log"
    vm = start(["--kernel", guest_elf(), "--append", "test=guestreset",
                "-m", "128", "--serial", "file:%s" % log])
    deadline = time.monotonic() + 20
    seen = ""
    while time.monotonic() < deadline and seen.count("user mode reached") < 3:
        time.sleep(0.05)
        seen = log.read_text() if log.exists() else ""
    vm.proc.terminate()
    rc, _, err = vm.wait()
    assert seen.count("user mode reached") >= 3, seen
    assert rc == 4, err      # SIGTERM


def test_smp_and_dirty_workload_checksums():
    rc, out, err = boot_testos("test=dirty pages=2048 rate=5000 secs=1 report=250",
                          "--smp", "2", timeout=60)
    assert rc == 0, out + err
    reports = re.findall(r"dirty: t=\d+ms dirtied=(\d+) checksum=0x[0-9a-f]+ ok",
                         out)
    assert len(reports) >= 3
    assert int(reports[-1]) >= 4000      # ~5000 pages/s for a second


def test_first_serial_line_is_fast():
    t0 = time.monotonic()
    vm = start(["--kernel", guest_elf(), "--append", "test=pci",
                "--no-reboot", "-m", "128"])
    line = vm.proc.stdout.readline()
    first = time.monotonic() - t0
    vm.wait()
    assert "user mode reached" in line
    # target 50 ms; allow slack for a loaded CI machine
    assert first < 0.5, first
