"""The Linux guest (tests/guests/linux/build.sh) on this machine's
paravirtual KVM: a stock kernel cannot finish booting here (CPL0 code is
emulated; see specs/x86-boot.md section 0), so these tests check the boot
path as far as it goes: the bzImage's 64-bit entry is reached and its
decompressor prints, and the PVH entry of the extracted vmlinux reaches
the kernel proper, which prints its banner and memory map from the e820
ferry built.  docs/run.md gives the command that boots it fully on a host
with hardware virtualization."""
import os
import time

import pytest

from guest import need_kvm, start

CACHE = os.path.join(os.environ.get("FERRY_GUEST_CACHE") or
                     os.path.expanduser("~/.cache/ferry/guests"), "linux")
APPEND = ("console=ttyS0 earlyprintk=serial,ttyS0 nokaslr mitigations=off "
          "io_delay=none reboot=k panic=-1 noxsave")


def guest_file(name):
    path = os.path.join(CACHE, name)
    if not os.path.exists(path):
        pytest.skip("%s missing: run tests/guests/linux/build.sh first" % path)
    return path


def boot_until(tmp_path, kernel, want, seconds):
    need_kvm()
    log = tmp_path / "serial.log"
    vm = start(["--kernel", kernel, "--initrd", guest_file("initramfs.cpio.gz"),
                "--append", APPEND, "--cpu", "baseline", "-m", "256",
                "--serial", "file:%s" % log, "--no-reboot"])
    deadline = time.monotonic() + seconds
    text = ""
    while time.monotonic() < deadline and want not in text:
        time.sleep(0.2)
        text = log.read_text(errors="replace") if log.exists() else ""
    vm.proc.terminate()
    rc, out, err = vm.wait()
    return text, err


def test_bzimage_64bit_entry_reaches_the_decompressor(tmp_path):
    text, err = boot_until(tmp_path, guest_file("bzImage"),
                           "KASLR disabled", 30)
    assert "KASLR disabled: 'nokaslr' on cmdline." in text, err


def test_vmlinux_pvh_entry_reaches_the_kernel_and_its_e820(tmp_path):
    text, err = boot_until(tmp_path, guest_file("vmlinux"),
                           "node   0: [mem 0x0000000000100000", 90)
    assert "Linux version 6." in text, text[-2000:]
    # the memory map the kernel took from ferry's PVH memmap (256 MiB)
    assert "0x0000000000100000-0x000000000fffffff" in text, text[-2000:]
