"""Shared fixtures for ferry's integration tests.

Every test drives the real `ferry` binary and judges it with a Debian peer
(qemu-img, qemu-io, nbdinfo, ...).  A missing peer is a skip that says which.
"""
import json
import os
import shutil
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))


def ferry_path():
    path = os.environ.get("FERRY") or os.path.join(TOP, "ferry")
    if not os.path.exists(path):
        pytest.exit("ferry binary not found at %s: build first (scripts/build.sh)" % path)
    return path


class Result:
    def __init__(self, proc):
        self.rc = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr

    def json(self):
        return json.loads(self.out)

    def __repr__(self):
        return "rc=%d\nstdout:\n%s\nstderr:\n%s" % (self.rc, self.out, self.err)


def run(args, check=True, input=None, timeout=300, env=None):
    """Run a command; with check, fail the test with its output on rc != 0."""
    proc = subprocess.run(args, capture_output=True, text=True, input=input,
                          timeout=timeout, env=env)
    res = Result(proc)
    if check and res.rc != 0:
        pytest.fail("command failed: %s\n%r" % (" ".join(args), res))
    return res


def need(prog):
    if shutil.which(prog) is None:
        pytest.skip("%s not installed (scripts/install-deps.sh installs it)" % prog)


@pytest.fixture
def ferry():
    exe = ferry_path()

    def _ferry(*args, check=True, **kw):
        return run([exe] + [str(a) for a in args], check=check, **kw)
    return _ferry


@pytest.fixture
def qemu_img():
    need("qemu-img")

    def _qemu_img(*args, check=True, **kw):
        return run(["qemu-img"] + [str(a) for a in args], check=check, **kw)
    return _qemu_img


@pytest.fixture
def qemu_io():
    need("qemu-io")

    def _qemu_io(*args, check=True, **kw):
        return run(["qemu-io"] + [str(a) for a in args], check=check, **kw)
    return _qemu_io


def pattern_file(path, size, seed=1, chunk=65536):
    """Write `size` bytes of a reproducible pattern (not zeroes) to path."""
    import random
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(chunk, left)
            f.write(rnd.randbytes(n))
            left -= n
