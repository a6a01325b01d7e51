"""Hostile clients against ferry nbd: bad magic, oversized lengths,
offsets past the end and past 2^64, writes to a read-only export, unknown
commands and options, hang-ups in the middle of a request, 500
connections at once, and clients that send one byte a second.

Every test keeps a well-behaved client reading and writing on its own
connection the whole time (it must never see an error or a stall), and
ends by checking the server went back to the threads and file
descriptors it had before: nothing leaks."""
import os
import random
import socket
import struct
import threading
import time

import pytest

import nbdproto as P
from conftest import need, run
from nbdutil import ferry_nbd

MiB = 1 << 20


def proc_counts(pid):
    with open("/proc/%d/status" % pid) as f:
        threads = int([line for line in f if line.startswith("Threads:")][0]
                      .split()[1])
    fds = len(os.listdir("/proc/%d/fd" % pid))
    return threads, fds


def wait_counts(pid, want, timeout=15):
    deadline = time.time() + timeout
    now = None
    while time.time() < deadline:
        now = proc_counts(pid)
        if now == want:
            return
        time.sleep(0.05)
    pytest.fail("server threads/fds %r did not return to %r" % (now, want))


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        return int([line for line in f if line.startswith("VmRSS:")][0]
                   .split()[1])


class GoodClient(threading.Thread):
    """A client doing honest reads and writes until stopped; records the
    worst latency and any error."""

    def __init__(self, sock_path, region):
        super().__init__(daemon=True)
        self.c = P.Client(sock_path)
        self.c.connect_export()
        self.region = region
        self.stop = threading.Event()
        self.error = None
        self.ops = 0
        self.worst = 0.0

    def run(self):
        rnd = random.Random(1)
        try:
            while not self.stop.is_set():
                data = rnd.randbytes(4096)
                t = time.time()
                assert self.c.pwrite(self.region, data) == 0
                got, _ = self.c.pread(self.region, 4096)
                assert got == data
                self.worst = max(self.worst, time.time() - t)
                self.ops += 1
        except Exception as e:  # noqa: BLE001 - reported by finish()
            self.error = e

    def finish(self):
        self.stop.set()
        self.join(30)
        assert self.error is None, self.error
        assert self.ops > 0
        assert self.worst < 2.0, "good client stalled %.1fs" % self.worst
        self.c.disconnect()


@pytest.fixture
def server(tmp_path):
    img = tmp_path / "h.raw"
    with open(img, "wb") as f:
        f.truncate(64 * MiB)
    with ferry_nbd(tmp_path, img, "-e", "0", "--handshake-limit=3") as srv:
        srv.image = img
        # one connection first so the baseline is taken after warm-up
        c = P.Client(srv.sock)
        c.connect_export()
        c.disconnect()
        time.sleep(0.2)
        srv.baseline = proc_counts(srv.proc.pid)
        good = GoodClient(srv.sock, 60 * MiB)
        good.start()
        yield srv
        good.finish()
        wait_counts(srv.proc.pid, srv.baseline)
        assert srv.alive()


def expect_hangup(c, timeout=5):
    c.s.settimeout(timeout)
    with pytest.raises((P.ProtocolError, ConnectionError)):
        while True:
            c.recvall(1)


def test_bad_magic_in_option_and_request(server):
    c = P.Client(server.sock)
    c.handshake()
    c.send(struct.pack(">QII", 0x1234, P.OPT_LIST, 0))
    expect_hangup(c)
    c = P.Client(server.sock)
    c.connect_export()
    c.request(P.CMD_READ, 0, 512, magic=0xdeadbeef)
    expect_hangup(c)
    # unknown client flags end the handshake too
    c = P.Client(server.sock)
    c.handshake(client_flags=0xff)
    expect_hangup(c)


def test_oversized_lengths(server):
    pid = server.proc.pid
    rss = rss_kib(pid)
    # an option claiming 4 GiB of data
    c = P.Client(server.sock)
    c.handshake()
    c.send(struct.pack(">QII", P.IHAVEOPT, P.OPT_GO, 0xffffffff) + b"x" * 100)
    expect_hangup(c)
    # a write claiming a 4 GiB payload
    c = P.Client(server.sock)
    c.connect_export()
    c.send(struct.pack(">IHHQQI", P.REQUEST_MAGIC, 0, P.CMD_WRITE, 1, 0,
                       0xfffffff0) + b"y" * 1000)
    expect_hangup(c)
    # an extended request with a 2^63 payload
    c = P.Client(server.sock)
    c.connect_export(extended=True)
    c.send(struct.pack(">IHHQQQ", P.EXT_REQUEST_MAGIC, P.FLAG_PAYLOAD_LEN,
                       P.CMD_WRITE, 1, 0, 1 << 63))
    expect_hangup(c)
    # a meta context option with absurd query counts and lengths
    c = P.Client(server.sock)
    c.handshake()
    c.negotiate_structured()
    typ, _ = c.option(P.OPT_LIST_META_CONTEXT,
                      struct.pack(">II", 0, 0xffffffff))
    assert typ == P.REP_ERR_TOO_BIG
    typ, _ = c.option(P.OPT_SET_META_CONTEXT,
                      struct.pack(">IIII", 0, 1, 0xfffffff0, 0))
    assert typ == P.REP_ERR_INVALID
    typ, _ = c.option(P.OPT_GO, struct.pack(">I", 0xffffff00) + b"abc")
    assert typ == P.REP_ERR_INVALID
    c.close()
    assert rss_kib(pid) < rss + 64 * 1024, "memory grew on lies"


def test_offsets_past_the_end_and_wrapping(server):
    c = P.Client(server.sock)
    c.connect_export(extended=True, meta=["base:allocation"])
    size = c.size
    top = (1 << 64) - 4096
    assert c.simple(P.CMD_READ, top, 8192) == P.EINVAL
    assert c.pwrite(top, b"z" * 8192) == P.ENOSPC
    assert c.simple(P.CMD_WRITE_ZEROES, 4096, (1 << 64) - 1) == P.ENOSPC
    assert c.simple(P.CMD_TRIM, size, 1) == P.EINVAL
    assert c.simple(P.CMD_CACHE, top, 4096) == P.EINVAL
    assert c.block_status(top, 4096) == P.EINVAL
    assert c.block_status(size, 1) == P.EINVAL
    data, _ = c.pread(size - 4096, 4096)          # the last block is fine
    assert len(data) == 4096
    c.disconnect()


def test_writes_to_a_read_only_export(tmp_path):
    img = tmp_path / "ro.raw"
    with open(img, "wb") as f:
        f.write(b"\x77" * MiB)
    with ferry_nbd(tmp_path, img, "-r", "-e", "0") as srv:
        c = P.Client(srv.sock)
        c.connect_export()
        assert c.tx_flags & P.TX_READ_ONLY
        assert c.pwrite(0, b"a" * 4096) == P.EPERM
        assert c.pwrite(0, b"a" * 4096, P.FLAG_FUA) == P.EPERM
        assert c.simple(P.CMD_WRITE_ZEROES, 0, 4096) == P.EPERM
        assert c.simple(P.CMD_TRIM, 0, 4096) == P.EPERM
        assert c.simple(P.CMD_FLUSH) == 0
        data, _ = c.pread(0, 4096)
        assert data == b"\x77" * 4096
        c.disconnect()
    assert open(img, "rb").read() == b"\x77" * MiB


def test_unknown_commands_flags_and_options(server):
    c = P.Client(server.sock)
    c.handshake()
    for opt in (0, 4, 12, 99, 0x7fffffff, 0xffffffff):
        typ, _ = c.option(opt, b"payload")
        assert typ == P.REP_ERR_UNSUP, opt
    typ, _ = c.option(P.OPT_STRUCTURED_REPLY, b"junk")
    assert typ == P.REP_ERR_INVALID
    c.negotiate_structured()
    c.go()
    for cmd in (8, 9, 100, 0xffff):
        assert c.simple(cmd, 0, 4096) == P.EINVAL, cmd
    # unknown flag bits on every command
    for cmd in (P.CMD_READ, P.CMD_FLUSH, P.CMD_TRIM, P.CMD_CACHE):
        assert c.simple(cmd, 0, 4096, 0x8000) == P.EINVAL
    # a write with an unknown flag: its payload is consumed, stream in sync
    assert c.pwrite(0, b"q" * 4096, 0x4000) == P.EINVAL
    assert c.simple(P.CMD_FLUSH) == 0
    c.disconnect()


def test_hangups_mid_request(server):
    # mid option data
    c = P.Client(server.sock)
    c.handshake()
    c.send(struct.pack(">QII", P.IHAVEOPT, P.OPT_GO, 100) + b"abc")
    c.close()
    # mid write payload
    c = P.Client(server.sock)
    c.connect_export()
    c.send(struct.pack(">IHHQQI", P.REQUEST_MAGIC, 0, P.CMD_WRITE, 1, 0,
                       MiB) + b"w" * 5000)
    c.close()
    # mid header
    c = P.Client(server.sock)
    c.connect_export()
    c.send(struct.pack(">IHH", P.REQUEST_MAGIC, 0, P.CMD_READ))
    c.close()
    # gone before a big reply is sent: the server's send fails
    for _ in range(5):
        c = P.Client(server.sock)
        c.connect_export(structured=False)
        for i in range(8):
            c.request(P.CMD_READ, i * 4 * MiB, 4 * MiB)
        c.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                       struct.pack("ii", 1, 0))      # RST, not FIN
        c.close()
    # NBD_CMD_DISC with requests in flight: they are answered first
    c = P.Client(server.sock)
    c.connect_export()
    cookies = [c.request(P.CMD_READ, i * MiB, MiB) for i in range(4)]
    c.request(P.CMD_DISC)
    seen = set()
    while len(seen) < 4:
        ch = c.read_reply()
        if ch.done:
            seen.add(ch.cookie)
    assert seen == set(cookies)
    expect_hangup(c)


def test_five_hundred_connections(server):
    need("nbdinfo")
    conns = []
    try:
        for i in range(500):
            c = P.Client(server.sock)
            if i % 2:
                c.connect_export()       # in transmission
            else:
                c.handshake()            # parked in negotiation
            conns.append(c)
        threads, _ = proc_counts(server.proc.pid)
        assert threads >= 500
        # everyone else is still served, promptly
        t = time.time()
        run(["nbdinfo", server.uri()])
        assert time.time() - t < 5
        for c in conns[1::2][:50]:
            data, _ = c.pread(0, 4096)
            assert len(data) == 4096
    finally:
        for c in conns:
            c.close()


def test_one_byte_a_second(server):
    """A client trickling its handshake is cut off at the handshake limit
    (3 s here); one trickling a request in transmission only holds itself
    up.  Others are served throughout (the good client checks latency)."""
    c = P.Client(server.sock)
    c.handshake()
    opt = struct.pack(">QII", P.IHAVEOPT, P.OPT_LIST, 0)
    start = time.time()
    with pytest.raises((P.ProtocolError, ConnectionError, BrokenPipeError)):
        for b in opt:
            c.send(bytes([b]))
            time.sleep(1)
        c.recvall(20)
    assert time.time() - start < 8
    c.close()

    slow = P.Client(server.sock)
    slow.connect_export()
    hdr = struct.pack(">IHHQQI", P.REQUEST_MAGIC, 0, P.CMD_READ, 9, 0, 512)
    other = P.Client(server.sock)
    other.connect_export()
    for b in hdr[:5]:
        slow.send(bytes([b]))
        t = time.time()
        data, _ = other.pread(4096, 4096)
        assert time.time() - t < 0.5
        time.sleep(1)
    slow.send(hdr[5:])
    assert slow.reply_for(9, 512)[0].type in (P.TYPE_OFFSET_DATA,
                                              P.TYPE_OFFSET_HOLE)
    slow.disconnect()
    other.disconnect()


def test_garbage_handshakes(server):
    rnd = random.Random(42)
    for i in range(200):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(server.sock)
        s.recv(18)
        junk = rnd.randbytes(rnd.randrange(1, 200))
        if i % 3 == 0:
            junk = struct.pack(">I", 1) + struct.pack(">Q", P.IHAVEOPT) + junk
        try:
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
        except OSError:
            pass
        s.close()


def test_hangups_during_spliced_replies(tmp_path):
    """Reads of raw data leave by splice (which raises SIGPIPE, not an error,
    on a closed socket unless it is ignored): clients that reset mid-reply
    neither kill the server nor leak its pipes and threads."""
    img = tmp_path / "d.raw"
    with open(img, "wb") as f:
        f.write(random.Random(9).randbytes(32 * MiB))
    with ferry_nbd(tmp_path, img, "-e", "0") as srv:
        c = P.Client(srv.sock)
        c.connect_export()
        c.pread(0, MiB)
        c.disconnect()
        time.sleep(0.2)
        baseline = proc_counts(srv.proc.pid)
        for k in range(20):
            c = P.Client(srv.sock)
            c.connect_export(extended=bool(k % 2))
            for i in range(16):
                c.request(P.CMD_READ, i * MiB, MiB)
            c.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                           struct.pack("ii", 1, 0))      # RST, not FIN
            c.close()
        c = P.Client(srv.sock)
        c.connect_export()
        data, _ = c.pread(3 * MiB, MiB)
        assert data == open(img, "rb").read()[3 * MiB:4 * MiB]
        c.disconnect()
        wait_counts(srv.proc.pid, baseline)
        assert srv.alive()
