"""A VM with a QMP socket for the tests: ferry run on KVM, or (as the
oracle) qemu-system-x86_64 on TCG booting the same testos through its PVH
entry.  The serial console goes to a file the tests watch; QMP goes through
the stdlib client tests/integration/qmp/qmpclient.py already has."""
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

from conftest import ferry_path
from guest import guest_elf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "qmp"))
from qmpclient import Qmp, shape  # noqa: E402,F401


def need_qemu_system():
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 not installed (Debian package "
                    "qemu-system-x86; scripts/install-deps.sh installs it)")


class Vm:
    """drives: [(path, id, format or None, extra options or "")]."""

    def __init__(self, tmp_path, append, drives=(), kind="ferry", smp=1,
                 mem=128, extra=(), name="vm", qmp_spec=None):
        self.kind = kind
        self.tmp = tmp_path
        self.serial = tmp_path / ("%s-serial.log" % name)
        self.sock = str(tmp_path / ("%s-qmp.sock" % name))
        spec = qmp_spec or "unix:%s,server,wait=off" % self.sock
        if kind == "ferry":
            args = [ferry_path(), "run", "--kernel", guest_elf(), "--append",
                    append, "-m", str(mem), "--smp", str(smp), "--serial",
                    "file:%s" % self.serial, "--qmp", spec]
            for path, did, fmt, opts in drives:
                d = "%s,id=%s" % (path, did)
                if fmt:
                    d += ",format=%s" % fmt
                if opts:
                    d += "," + opts
                args += ["--drive", d]
        else:
            need_qemu_system()
            args = ["qemu-system-x86_64", "-accel", "tcg", "-nodefaults",
                    "-display", "none", "-kernel", guest_elf(), "-append",
                    append, "-m", str(mem), "-smp", str(smp), "-serial",
                    "file:%s" % self.serial, "-qmp",
                    spec.replace(",server,", ",server=on,")]
            for path, did, fmt, opts in drives:
                d = "file=%s,if=virtio,id=%s" % (path, did)
                if fmt:
                    d += ",format=%s" % fmt
                if opts:
                    d += "," + opts
                args += ["-drive", d]
        args += [str(a) for a in extra]
        self.log = open(str(tmp_path / ("%s.log" % name)), "w+")
        self.proc = subprocess.Popen(args, stdout=self.log,
                                     stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self.qmp = None
        if qmp_spec is None:
            self.qmp = self.connect()

    def connect(self, timeout=20):
        deadline = time.time() + timeout
        while True:
            try:
                return Qmp(self.sock)
            except (FileNotFoundError, ConnectionRefusedError):
                if self.proc.poll() is not None or time.time() > deadline:
                    raise AssertionError("%s did not start QMP: %s" %
                                         (self.kind, self.output()))
                time.sleep(0.02)

    def output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def text(self):
        return self.serial.read_text() if self.serial.exists() else ""

    def wait_serial(self, regex, count=1, timeout=30):
        """Wait until regex matched `count` times; return the matches."""
        deadline = time.time() + timeout
        while True:
            found = re.findall(regex, self.text())
            if len(found) >= count:
                return found
            if self.proc.poll() is not None or time.time() > deadline:
                pytest.fail("no %d x %r on serial (%s, rc=%s):\n%s\n%s" %
                            (count, regex, self.kind, self.proc.poll(),
                             self.text()[-2000:], self.output()))
            time.sleep(0.02)

    def rounds_seen(self):
        r = re.findall(r"diskloop: round (\d+)", self.text())
        return int(r[-1]) if r else 0

    def wait(self, timeout=30):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail("%s did not exit in %ds:\n%s" %
                        (self.kind, timeout, self.output()))

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def qmp_tcp(host, port, timeout=20):
    """A Qmp over TCP (the client class speaks unix sockets)."""
    q = Qmp.__new__(Qmp)
    deadline = time.time() + timeout
    while True:
        try:
            q.sock = socket.create_connection((host, port), timeout=60)
            break
        except ConnectionRefusedError:
            if time.time() > deadline:
                raise
            time.sleep(0.02)
    q.buf = b""
    q.events = []
    q.next_id = 1
    q.greeting = q.recv()
    q.cmd("qmp_capabilities")
    return q


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
