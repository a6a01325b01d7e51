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


DISKLOOP_MAGIC = 0x4c4f4f50


def diskloop_round(data, sector):
    """The diskloop round a sector's 512 bytes hold (user.c: fill_round),
    or None if they are not a whole diskloop sector."""
    words = struct.unpack("<64Q", data)
    if words[0] >> 32 != DISKLOOP_MAGIC or words[1] != sector:
        return None
    r = words[0] & 0xffffffff
    for w in range(2, 64):
        base = ((sector << 20) ^ (w << 8) ^ 0xa5a5a5a55a5a5a5a) & (2**64 - 1)
        if words[w] != base ^ r:
            return None
    return r


def diskloop_rounds(image, start, count, tmp_path, fmt="qcow2"):
    """Rounds found in sectors [start, start+count) of an image, read
    through qemu-img (the peer) into a raw file."""
    raw = os.path.join(str(tmp_path), os.path.basename(str(image)) + ".read.raw")
    subprocess.run(["qemu-img", "convert", "-U", "-f", fmt, "-O", "raw",
                    str(image), raw], check=True, capture_output=True)
    with open(raw, "rb") as f:
        f.seek(start * 512)
        data = f.read(count * 512)
    os.unlink(raw)
    return [diskloop_round(data[i * 512:(i + 1) * 512], start + i)
            for i in range(count)]
