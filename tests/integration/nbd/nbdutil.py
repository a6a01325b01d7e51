"""Starting NBD servers for tests: ferry nbd and its peers (qemu-nbd, nbdkit).

A server runs as a child process with its output in a log file (never a
pipe, so a forgotten server cannot hang the test run) and is stopped at the
end of the `with` block.  Tests get the URI to hand to clients.
"""
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import ferry_path, need  # noqa: E402


class Server:
    def __init__(self, proc, log_path, sock=None, port=None, name=""):
        self.proc = proc
        self.log_path = log_path
        self.sock = sock
        self.port = port
        self.name = name

    def uri(self, name=None, scheme=None):
        name = self.name if name is None else name
        if self.sock:
            return "%s:///%s?socket=%s" % (scheme or "nbd+unix", name,
                                           self.sock)
        return "%s://127.0.0.1:%d/%s" % (scheme or "nbd", self.port, name)

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def alive(self):
        return self.proc.poll() is None


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_listening(proc, log_path, sock=None, port=None, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            with open(log_path) as f:
                pytest.fail("server exited with %d before listening:\n%s"
                            % (proc.returncode, f.read()))
        try:
            if sock:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(sock)
            else:
                s = socket.create_connection(("127.0.0.1", port), timeout=1)
            s.close()
            return
        except OSError:
            time.sleep(0.02)
    pytest.fail("server did not start listening in %ds" % timeout)


@contextlib.contextmanager
def serve(cmd, tmp_path, tag, sock=None, port=None, name="", probe=True,
          env=None):
    log_path = str(tmp_path / ("%s.log" % tag))
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(c) for c in cmd], stdout=log,
                                stderr=subprocess.STDOUT, env=env)
    srv = Server(proc, log_path, sock=sock, port=port, name=name)
    try:
        if probe:
            wait_listening(proc, log_path, sock, port)
        yield srv
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def ferry_nbd(tmp_path, image, *args, fmt="raw", name="", tcp=False,
              persistent=True, tag="ferry-nbd", probe=True, env=None):
    """Context manager: `ferry nbd` on image (unix socket unless tcp)."""
    cmd = [ferry_path(), "nbd"]
    if fmt:
        cmd += ["-f", fmt]
    if name:
        cmd += ["-x", name]
    if persistent:
        cmd += ["-t"]
    sock = port = None
    if tcp:
        port = free_port()
        cmd += ["-b", "127.0.0.1", "-p", str(port)]
    else:
        sock = str(tmp_path / ("%s.sock" % tag))
        cmd += ["-k", sock]
    cmd += [str(a) for a in args] + [str(image)]
    # Probing connects once: without -t that would be the one client.
    return serve(cmd, tmp_path, tag, sock=sock, port=port, name=name,
                 probe=probe and persistent, env=env)


def qemu_nbd(tmp_path, image, *args, fmt="raw", name="", tcp=False,
             tag="qemu-nbd"):
    need("qemu-nbd")
    cmd = ["qemu-nbd", "-t", "-e", "16", "-f", fmt]
    if name:
        cmd += ["-x", name]
    sock = port = None
    if tcp:
        port = free_port()
        cmd += ["-b", "127.0.0.1", "-p", str(port)]
    else:
        sock = str(tmp_path / ("%s.sock" % tag))
        cmd += ["-k", sock]
    cmd += [str(a) for a in args] + [str(image)]
    return serve(cmd, tmp_path, tag, sock=sock, port=port, name=name)


def nbdkit(tmp_path, plugin, *args, tag="nbdkit", tcp=False):
    need("nbdkit")
    cmd = ["nbdkit", "-f", "--exit-with-parent"]
    sock = port = None
    if tcp:
        port = free_port()
        cmd += ["-i", "127.0.0.1", "-p", str(port)]
    else:
        sock = str(tmp_path / ("%s.sock" % tag))
        cmd += ["-U", sock]
    cmd += [plugin] + [str(a) for a in args]
    return serve(cmd, tmp_path, tag, sock=sock, port=port)


def sparse_image(path, size, extents, seed=7):
    """A sparse file of `size` with random data at each (offset, length)."""
    import random
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for off, length in extents:
            f.seek(off)
            f.write(rnd.randbytes(length))
    return path
