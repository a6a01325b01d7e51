"""Helpers for the VM tests: where testos is, the disk pattern it writes,
running ferry run with a deadline, and the KVM skip."""
import os
import struct
import subprocess
import time

import pytest

from conftest import TOP, ferry_path


def guest_elf():
    exe = ferry_path()
    for base in (os.path.dirname(exe), TOP,
                 os.environ.get("FERRY_BUILDDIR", "")):
        p = os.path.join(base, "tests", "guests", "testos", "testos.elf")
        if base and os.path.exists(p):
            return p
    pytest.exit("testos.elf not found: build first (make builds it)")


def need_kvm():
    if not os.path.exists("/dev/kvm"):
        pytest.skip("/dev/kvm does not exist: KVM tests need it")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm is not accessible to this user")


def pattern_sector(sector):
    """The 512 bytes testos writes to a sector (user.c: pattern())."""
    words = [((sector << 20) ^ (w << 8) ^ 0xa5a5a5a55a5a5a5a) & (2**64 - 1)
             for w in range(64)]
    return struct.pack("<64Q", *words)


def write_reference(path, size, start, count):
    """A raw image of `size` bytes holding the pattern in [start, start+count)."""
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(start * 512)
        f.write(b"".join(pattern_sector(s) for s in range(start, start + count)))


class Vm:
    def __init__(self, proc, t0):
        self.proc = proc
        self.t0 = t0

    def wait(self, timeout=60):
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err


def start(args, stdin=subprocess.DEVNULL):
    t0 = time.monotonic()
    proc = subprocess.Popen([ferry_path(), "run"] + [str(a) for a in args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=stdin, text=True)
    return Vm(proc, t0)


def run_vm(args, timeout=60):
    """Run to the end; returns (rc, serial output, stderr)."""
    vm = start(args)
    try:
        return vm.wait(timeout)
    except subprocess.TimeoutExpired:
        vm.proc.kill()
        out, err = vm.proc.communicate()
        pytest.fail("ferry run did not end in %ds\nstdout:\n%s\nstderr:\n%s"
                    % (timeout, out, err))


def boot_testos(append, *extra, mem="128M", timeout=60):
    return run_vm(["--kernel", guest_elf(), "--append", append,
                   "--no-reboot", "-m", mem] + list(extra), timeout=timeout)
