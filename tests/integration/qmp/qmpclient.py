"""A stdlib QMP client and daemon fixtures for ferry and qemu-storage-daemon.

The same test code drives both: `Daemon` starts either `ferry qmp --serve`
(later `ferry nbd --qmp`) or `qemu-storage-daemon --monitor`, and `Qmp`
speaks the protocol (greeting, capabilities, commands with ids, events).
"""
import json
import os
import shutil
import socket
import subprocess
import time


class QmpError(Exception):
    def __init__(self, reply):
        self.reply = reply
        err = reply.get("error", {})
        self.cls = err.get("class")
        self.desc = err.get("desc")
        super().__init__("%s: %s" % (self.cls, self.desc))


class Qmp:
    """One QMP connection.  Replies and events are read from one stream;
    events that arrive while waiting for a reply are kept for get_event."""

    def __init__(self, path, negotiate=True, timeout=60):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self.events = []
        self.next_id = 1
        self.greeting = self.recv()
        if negotiate:
            self.cmd("qmp_capabilities")

    def close(self):
        self.sock.close()

    def send_raw(self, data):
        self.sock.sendall(data)

    def recv(self):
        """The next JSON message (one per line, as both servers write)."""
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError("QMP connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, name, args=None, id=None):
        """Send a command; return the whole reply (return or error)."""
        req = {"execute": name}
        if args is not None:
            req["arguments"] = args
        if id is None:
            id = "c%d" % self.next_id
            self.next_id += 1
        req["id"] = id
        self.send_raw(json.dumps(req).encode() + b"\n")
        return self.reply()

    def reply(self):
        while True:
            msg = self.recv()
            if "event" in msg:
                self.events.append(msg)
                continue
            return msg

    def cmd(self, _command, **kwargs):
        """Execute; return the 'return' value or raise QmpError."""
        args = {k.replace("_", "-"): v for k, v in kwargs.items()}
        r = self.execute(_command, args or None)
        if "error" in r:
            raise QmpError(r)
        return r["return"]

    def cmd_args(self, name, args):
        r = self.execute(name, args)
        if "error" in r:
            raise QmpError(r)
        return r["return"]

    def get_event(self, name=None, timeout=60, match=None):
        """The first event called name (and matching data), waiting for it."""
        deadline = time.time() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if (name is None or ev["event"] == name) and \
                        (match is None or all(ev.get("data", {}).get(k) == v
                                              for k, v in match.items())):
                    return self.events.pop(i)
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError("no %s event in %ds; have %r" %
                                   (name, timeout, self.events))
            self.sock.settimeout(left)
            try:
                msg = self.recv()
            except socket.timeout:
                continue
            finally:
                self.sock.settimeout(60)
            if "event" in msg:
                self.events.append(msg)

    def wait_job(self, job_id, status, timeout=120):
        """Wait for JOB_STATUS_CHANGE to `status`; returns the events seen."""
        self.get_event("JOB_STATUS_CHANGE", timeout=timeout,
                       match={"id": job_id, "status": status})

    def job_statuses(self):
        return [(e["data"]["id"], e["data"]["status"]) for e in self.events
                if e["event"] == "JOB_STATUS_CHANGE"]


class Daemon:
    """A storage daemon with a QMP socket: kind is 'ferry' or 'qsd'."""

    def __init__(self, kind, tmpdir, ferry=None):
        self.kind = kind
        self.sock = os.path.join(str(tmpdir), "%s-qmp.sock" % kind)
        if kind == "ferry":
            args = [ferry, "qmp", "--serve", "unix:%s,server" % self.sock]
        else:
            exe = shutil.which("qemu-storage-daemon")
            # a QEMU monitor serves one client: give it a few
            args = [exe]
            for i in range(self.QSD_MONITORS):
                path = self.sock if i == 0 else "%s.%d" % (self.sock, i)
                args += ["--chardev",
                         "socket,id=m%d,path=%s,server=on,wait=off" % (i, path),
                         "--monitor", "chardev=m%d" % i]
        self.extra = 0
        self.log = open(os.path.join(str(tmpdir), "%s.log" % kind), "w+")
        self.proc = subprocess.Popen(args, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.time() > deadline:
                self.log.seek(0)
                raise RuntimeError("%s did not start: %s" %
                                   (kind, self.log.read()))
            time.sleep(0.02)
        while True:      # the path appears at bind(), before listen()
            try:
                self.qmp = Qmp(self.sock)
                break
            except ConnectionRefusedError:
                if time.time() > deadline:
                    self.proc.kill()
                    self.proc.wait()
                    raise
                time.sleep(0.02)

    QSD_MONITORS = 6

    def connect(self, negotiate=True):
        """Another client (for qsd, on another monitor)."""
        if self.kind == "ferry":
            return Qmp(self.sock, negotiate=negotiate)
        self.extra += 1
        assert self.extra < self.QSD_MONITORS
        return Qmp("%s.%d" % (self.sock, self.extra), negotiate=negotiate)

    def stop(self):
        try:
            self.qmp.execute("quit")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.seek(0)
        return self.log.read()


def shape(value):
    """The shape of a JSON value: keys and types, not contents."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    return type(value).__name__


# -- pytest fixtures (test modules import them by name) ----------------------

import pytest  # noqa: E402

from conftest import ferry_path  # noqa: E402  (tests/integration/conftest.py)


def start(kind, tmp_path):
    if kind == "qsd" and shutil.which("qemu-storage-daemon") is None:
        pytest.skip("qemu-storage-daemon not installed (Debian package "
                    "qemu-system-common; scripts/install-deps.sh installs it)")
    return Daemon(kind, tmp_path, ferry=ferry_path())


@pytest.fixture
def daemon(tmp_path):
    d = start("ferry", tmp_path)
    yield d
    d.stop()


@pytest.fixture(params=["ferry", "qsd"])
def any_daemon(request, tmp_path):
    """The same test against ferry and against qemu-storage-daemon."""
    d = start(request.param, tmp_path)
    yield d
    d.stop()


@pytest.fixture
def both(tmp_path):
    """ferry and qemu-storage-daemon side by side, for shape comparisons."""
    f = start("ferry", tmp_path)
    try:
        q = start("qsd", tmp_path)
    except BaseException:
        f.stop()
        raise
    yield f, q
    f.stop()
    q.stop()
