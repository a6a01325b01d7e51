"""The protocol details Debian's clients cannot show: structured reads with
holes, DF, extended headers, meta contexts and their block status, and the
error each bad request earns.  Driven with nbdproto (the NBD spec's bytes),
with nbdinfo as a second judge where it can see the same thing."""
import json
import struct
import time

import pytest

import nbdproto as P
from conftest import need, run
from nbdutil import ferry_nbd, qemu_nbd, sparse_image

MiB = 1 << 20


@pytest.fixture
def sparse(tmp_path):
    # data at [1M, 2M) and [3M+4K, 3M+12K); holes elsewhere; 8 MiB
    return sparse_image(tmp_path / "sparse.raw", 8 * MiB,
                        [(MiB, MiB), (3 * MiB + 4096, 8192)])


def test_structured_read_sends_holes_as_hole_chunks(tmp_path, sparse):
    content = open(sparse, "rb").read()
    with ferry_nbd(tmp_path, sparse, "-r") as srv:
        c = P.Client(srv.sock)
        c.connect_export()
        data, chunks = c.pread(0, 4 * MiB)
        assert data == content[:4 * MiB]
        kinds = [(ch.type, struct.unpack(">Q", ch.payload[:8])[0])
                 for ch in chunks]
        assert kinds == [(P.TYPE_OFFSET_HOLE, 0), (P.TYPE_OFFSET_DATA, MiB),
                         (P.TYPE_OFFSET_HOLE, 2 * MiB),
                         (P.TYPE_OFFSET_DATA, 3 * MiB + 4096),
                         (P.TYPE_OFFSET_HOLE, 3 * MiB + 12288)]
        assert chunks[-1].done and not any(ch.done for ch in chunks[:-1])
        # a small read of zeroes is one hole chunk
        data, chunks = c.pread(5 * MiB, 4096)
        assert data == bytes(4096)
        assert [ch.type for ch in chunks] == [P.TYPE_OFFSET_HOLE]
        # DF: exactly one content chunk, zeroes spelled out
        data, chunks = c.pread(0, 2 * MiB, P.FLAG_DF)
        assert data == content[:2 * MiB]
        assert [ch.type for ch in chunks] == [P.TYPE_OFFSET_DATA]
        c.disconnect()


def test_simple_replies_without_structured_negotiation(tmp_path, sparse):
    content = open(sparse, "rb").read()
    with ferry_nbd(tmp_path, sparse) as srv:
        c = P.Client(srv.sock)
        c.connect_export(structured=False)
        data, _ = c.pread(MiB - 100, 300)
        assert data == content[MiB - 100:MiB + 200]
        assert c.pwrite(7 * MiB, b"x" * 512) == 0
        # DF without structured replies is not allowed
        cookie = c.request(P.CMD_READ, 0, 512, P.FLAG_DF)
        assert c.reply_for(cookie, 512)[2] == P.EINVAL
        c.disconnect()
    assert open(sparse, "rb").read()[7 * MiB:7 * MiB + 512] == b"x" * 512


def test_bad_requests_get_the_spec_errors(tmp_path, sparse):
    with ferry_nbd(tmp_path, sparse) as srv:
        c = P.Client(srv.sock)
        c.connect_export()
        size = c.size
        assert c.simple(P.CMD_READ, size - 512, 1024) == P.EINVAL
        assert c.pwrite(size - 512, b"y" * 1024) == P.ENOSPC
        assert c.simple(P.CMD_WRITE_ZEROES, size, 512) == P.ENOSPC
        assert c.simple(P.CMD_TRIM, size + 4096, 4096) == P.EINVAL
        assert c.simple(99, 0, 0) == P.EINVAL                 # unknown command
        assert c.simple(P.CMD_FLUSH, 0, 0, 1 << 9) == P.EINVAL  # unknown flag
        assert c.simple(P.CMD_WRITE_ZEROES, 0, 512,
                        P.FLAG_REQ_ONE) == P.EINVAL           # misplaced flag
        assert c.simple(P.CMD_READ, 0, 64 * MiB) == P.EINVAL    # too large
        assert c.simple(P.CMD_BLOCK_STATUS, 0, 512) == P.EINVAL  # no context
        # and the connection is still good afterwards
        assert c.simple(P.CMD_FLUSH) == 0
        data, _ = c.pread(MiB, 16)
        assert len(data) == 16
        c.disconnect()


def test_write_zeroes_flags_and_trim(tmp_path):
    img = sparse_image(tmp_path / "z.raw", 4 * MiB, [(0, 4 * MiB)])
    with ferry_nbd(tmp_path, img, "--discard=unmap") as srv:
        c = P.Client(srv.sock)
        c.connect_export()
        assert c.simple(P.CMD_WRITE_ZEROES, 0, MiB, P.FLAG_NO_HOLE) == 0
        assert c.simple(P.CMD_WRITE_ZEROES, MiB, MiB,
                        P.FLAG_FAST_ZERO | P.FLAG_FUA) == 0
        assert c.simple(P.CMD_TRIM, 3 * MiB, MiB, P.FLAG_FUA) == 0
        assert c.simple(P.CMD_CACHE, 0, 4 * MiB) == 0
        data, _ = c.pread(0, 2 * MiB)
        assert data == bytes(2 * MiB)
        c.disconnect()
    with open(img, "rb") as f:
        assert f.read(2 * MiB) == bytes(2 * MiB)


def test_extended_headers(tmp_path, sparse):
    content = open(sparse, "rb").read()
    with ferry_nbd(tmp_path, sparse) as srv:
        c = P.Client(srv.sock)
        ids = c.connect_export(extended=True, meta=["base:allocation"])
        data, chunks = c.pread(MiB - 4096, 8192)
        assert data == content[MiB - 4096:MiB + 4096]
        # extended replies echo the request's offset
        assert all(ch.offset == MiB - 4096 for ch in chunks)
        assert c.pwrite(6 * MiB, b"e" * 4096) == 0
        st = c.block_status(0, 8 * MiB)
        ext = st[ids["base:allocation"]]
        assert ext[0] == (MiB, 3) and ext[1] == (MiB, 0)
        # a 64-bit effect length past the end is refused (the spec's EINVAL)
        assert c.block_status(0, 1 << 33) == P.EINVAL
        # a trim carrying a payload is refused; the payload is consumed so
        # the stream stays in sync
        cookie = c.request(P.CMD_TRIM, 0, 4096, P.FLAG_PAYLOAD_LEN)
        c.send(b"z" * 4096)
        assert c.error_of(c.reply_for(cookie)) == P.EINVAL
        assert c.simple(P.CMD_FLUSH) == 0
        c.disconnect()
    assert open(sparse, "rb").read()[6 * MiB:6 * MiB + 4096] == b"e" * 4096


def test_extended_headers_forbid_old_style_options(tmp_path, sparse):
    with ferry_nbd(tmp_path, sparse) as srv:
        c = P.Client(srv.sock)
        c.handshake()
        assert c.negotiate_extended() == P.REP_ACK
        assert c.negotiate_structured() == P.REP_ERR_EXT_HEADER_REQD
        c.send_option(P.OPT_EXPORT_NAME, b"")
        with pytest.raises((P.ProtocolError, ConnectionError)):
            c.recvall(1)
        c.close()


def test_meta_context_list_and_set(tmp_path, sparse):
    with ferry_nbd(tmp_path, sparse, "-A", "--x-create-bitmap=b0",
                   "--x-create-bitmap=b1:1M", "-B", "b0", "-B", "b1") as srv:
        c = P.Client(srv.sock)
        c.handshake()
        # before structured replies, meta contexts are refused
        typ, _ = c.meta(P.OPT_LIST_META_CONTEXT)
        assert typ == P.REP_ERR_INVALID
        c.negotiate_structured()
        typ, all_ = c.meta(P.OPT_LIST_META_CONTEXT)
        assert typ == P.REP_ACK
        assert set(all_) == {"base:allocation", "qemu:allocation-depth",
                             "qemu:dirty-bitmap:b0", "qemu:dirty-bitmap:b1"}
        _, q = c.meta(P.OPT_LIST_META_CONTEXT, "", ["qemu:dirty-bitmap:"])
        assert set(q) == {"qemu:dirty-bitmap:b0", "qemu:dirty-bitmap:b1"}
        _, q = c.meta(P.OPT_LIST_META_CONTEXT, "", ["base:", "x-other:foo"])
        assert set(q) == {"base:allocation"}
        typ, _ = c.meta(P.OPT_LIST_META_CONTEXT, "nosuch", [])
        assert typ == P.REP_ERR_UNKNOWN
        # SET: wildcards select nothing, exact names select
        typ, sel = c.meta(P.OPT_SET_META_CONTEXT, "", ["qemu:", "base:"])
        assert typ == P.REP_ACK and sel == {}
        typ, sel = c.meta(P.OPT_SET_META_CONTEXT, "",
                          ["base:allocation", "qemu:dirty-bitmap:b1",
                           "qemu:allocation-depth", "qemu:nosuch"])
        assert set(sel) == {"base:allocation", "qemu:dirty-bitmap:b1",
                            "qemu:allocation-depth"}
        assert len(set(sel.values())) == 3
        # malformed: a query length past the end
        bad = struct.pack(">II", 0, 1) + struct.pack(">I", 100) + b"base:"
        typ, _ = c.option(P.OPT_SET_META_CONTEXT, bad)
        assert typ == P.REP_ERR_INVALID
        c.close()


def test_dirty_bitmap_block_status_follows_writes(tmp_path, sparse):
    need("nbdinfo")
    with ferry_nbd(tmp_path, sparse, "--x-create-bitmap=b0:64k",
                   "-B", "b0") as srv:
        c = P.Client(srv.sock)
        ids = c.connect_export(meta=["qemu:dirty-bitmap:b0",
                                     "base:allocation"])
        assert c.pwrite(128 * 1024 + 10, b"d" * 100) == 0
        assert c.simple(P.CMD_WRITE_ZEROES, 2 * MiB, MiB) == 0
        st = c.block_status(0, 8 * MiB)
        bm = st[ids["qemu:dirty-bitmap:b0"]]
        assert bm == [(128 * 1024, 0), (64 * 1024, 1),
                      (2 * MiB - 192 * 1024, 0), (MiB, 1), (5 * MiB, 0)]
        # REQ_ONE: one extent per context, never past the request
        st = c.block_status(100 * 1024, 50 * 1024, P.FLAG_REQ_ONE)
        assert st[ids["qemu:dirty-bitmap:b0"]] == [(28 * 1024, 0)]
        assert len(st[ids["base:allocation"]]) == 1
        c.disconnect()
        m = run(["nbdinfo", "--map=qemu:dirty-bitmap:b0", "--json",
                 srv.uri()]).out
    dirty = [(e["offset"], e["length"]) for e in json.loads(m)
             if e["type"] == 1]
    assert dirty == [(128 * 1024, 64 * 1024), (2 * MiB, MiB)]


def test_allocation_depth_matches_qemu_nbd(tmp_path, sparse):
    need("nbdinfo")
    with ferry_nbd(tmp_path, sparse, "-A", "-r") as ours, \
            qemu_nbd(tmp_path, sparse, "-A", "-r") as theirs:
        a = run(["nbdinfo", "--map=qemu:allocation-depth", "--json",
                 ours.uri()]).out
        b = run(["nbdinfo", "--map=qemu:allocation-depth", "--json",
                 theirs.uri()]).out
    assert json.loads(a) == json.loads(b)


def test_pipelined_requests_all_answered(tmp_path, sparse):
    content = open(sparse, "rb").read()
    with ferry_nbd(tmp_path, sparse, "-r") as srv:
        c = P.Client(srv.sock)
        c.connect_export()
        want = {}
        for i in range(64):
            off = (i * 37 * 4096) % (7 * MiB)
            cookie = c.request(P.CMD_READ, off, 64 * 1024 if i % 8 else MiB)
            want[cookie] = off
        seen = {}
        while len(seen) < len(want):
            ch = c.read_reply()
            assert ch.cookie in want
            seen.setdefault(ch.cookie, []).append(ch)
            if ch.done:
                seen[ch.cookie] = "done"
        c.disconnect()


def test_info_reports_block_size_and_name(tmp_path, sparse):
    with ferry_nbd(tmp_path, sparse, "-D", "desc", name="n1") as srv:
        c = P.Client(srv.sock)
        c.handshake()
        typ, info = c.go("n1", (P.INFO_NAME, P.INFO_DESCRIPTION,
                                P.INFO_BLOCK_SIZE), opt=P.OPT_INFO)
        assert typ == P.REP_ACK
        assert info["name"] == "n1" and info["description"] == "desc"
        assert info["block_size"] == (1, 4096, 32 * MiB)
        assert info["size"] == 8 * MiB
        # LIST carries data: refused; unknown options: unsupported
        typ, _ = c.option(P.OPT_LIST, b"x")
        assert typ == P.REP_ERR_INVALID
        typ, _ = c.option(77, b"abc")
        assert typ == P.REP_ERR_UNSUP
        typ, _ = c.option(P.OPT_STARTTLS)
        assert typ == P.REP_ERR_POLICY
        typ, parts = c.option(P.OPT_LIST)
        assert typ == P.REP_ACK and len(parts) == 1
        c.send_option(P.OPT_ABORT)
        assert c.option_reply()[1] == P.REP_ACK
        c.close()


def test_old_export_name_option_with_and_without_zeroes(tmp_path, sparse):
    with ferry_nbd(tmp_path, sparse, name="e") as srv:
        for cflags, pad in ((3, 0), (1, 124)):
            c = P.Client(srv.sock)
            c.handshake(cflags)
            c.send_option(P.OPT_EXPORT_NAME, b"e")
            size, flags = struct.unpack(">QH", c.recvall(10))
            assert size == 8 * MiB
            assert c.recvall(pad) == bytes(pad)
            # transmission works, with simple replies
            c.size = size
            data, _ = c.pread(MiB, 8)
            assert len(data) == 8
            c.disconnect()


# -- zero-copy reads ------------------------------------------------------------

def data_image(path):
    """Random data at [0, 6M) and [7M, 8M+1000), a hole in between; an odd
    size, so the last read ends where the file does."""
    import random
    rnd = random.Random(5)
    with open(path, "wb") as f:
        f.write(rnd.randbytes(6 * MiB))
        f.seek(7 * MiB)
        f.write(rnd.randbytes(MiB + 1000))
    return open(path, "rb").read()


@pytest.mark.parametrize("extended", [False, True])
def test_reads_of_raw_data_are_whole_data_chunks(tmp_path, extended):
    """Reads of plain data in a raw file go out by splice (page cache to
    socket, no copy through ferry's buffers): the bytes and the chunk
    framing are those of the buffered path."""
    img = tmp_path / "data.raw"
    content = data_image(img)
    with ferry_nbd(tmp_path, img, "-r") as srv:
        c = P.Client(srv.sock)
        c.connect_export(extended=extended)
        for off, ln in [(0, MiB), (4096, 640 * 1024), (1536, 64 * 1024),
                        (5 * MiB + 512, MiB - 512),
                        (len(content) - 100000, 100000)]:
            data, chunks = c.pread(off, ln)
            assert data == content[off:off + ln], (off, ln)
            assert [ch.type for ch in chunks] == [P.TYPE_OFFSET_DATA]
            assert chunks[0].done
        # spanning data and the hole: the hole is still a hole
        data, chunks = c.pread(6 * MiB - 65536, 256 * 1024)
        assert data == content[6 * MiB - 65536:6 * MiB + 196608]
        assert [ch.type for ch in chunks] == [P.TYPE_OFFSET_DATA,
                                              P.TYPE_OFFSET_HOLE]
        # DF: one chunk either way
        data, chunks = c.pread(MiB, MiB, P.FLAG_DF)
        assert data == content[MiB:2 * MiB]
        assert [ch.type for ch in chunks] == [P.TYPE_OFFSET_DATA]
        # larger than the pipe: the buffered path, same bytes
        data, _ = c.pread(0, 4 * MiB)
        assert data == content[:4 * MiB]
        # many reads in flight at once, replies in any order
        cookies = {c.request(P.CMD_READ, i * 393216, 262144): i
                   for i in range(12)}
        for _ in range(12):
            ch = c.read_reply()
            i = cookies.pop(ch.cookie)
            assert ch.type == P.TYPE_OFFSET_DATA and ch.done
            assert ch.payload[8:] == content[i * 393216:i * 393216 + 262144]
        c.disconnect()


def test_reads_see_writes_from_other_connections(tmp_path):
    """A spliced read after an acknowledged write (on another connection)
    returns the written bytes."""
    img = tmp_path / "data.raw"
    content = bytearray(data_image(img))
    with ferry_nbd(tmp_path, img, "-e", "2") as srv:
        w, r = P.Client(srv.sock), P.Client(srv.sock)
        w.connect_export()
        r.connect_export()
        for k in range(8):
            off = k * 700 * 1024
            blob = bytes([k + 1]) * 300000
            assert w.pwrite(off, blob) == 0
            content[off:off + len(blob)] = blob
            data, _ = r.pread(off - off % 4096, MiB)
            start = off - off % 4096
            assert data == bytes(content[start:start + MiB]), k
        w.disconnect()
        r.disconnect()


def test_large_writes_land_and_mark_bitmaps(tmp_path, sparse):
    """Large and small writes pipelined together (the small ones partly in
    ferry's read-ahead behind a large payload) land where they belong, FUA
    holds, and dirty bitmaps mark exactly the granules written."""
    import random
    rnd = random.Random(12)
    expect = bytearray(open(sparse, "rb").read())
    with ferry_nbd(tmp_path, sparse, "--x-create-bitmap=b0:64k",
                   "-B", "b0") as srv:
        c = P.Client(srv.sock)
        ids = c.connect_export(meta=["qemu:dirty-bitmap:b0"])
        writes = [(4 * MiB, 64 * 1024, 0), (4 * MiB + 65536 + 512, MiB, 0),
                  (6 * MiB + 4096, 300 * 1024, P.FLAG_FUA),
                  (7 * MiB, 1000, 0), (7 * MiB + 2048, 200 * 1024, 0),
                  (7 * MiB + 300 * 1024, 8, 0)]
        cookies = {}
        for off, ln, fl in writes:                 # all in flight at once
            blob = rnd.randbytes(ln)
            expect[off:off + ln] = blob
            cookies[c.request(P.CMD_WRITE, off, ln, fl, blob)] = off
        for _ in writes:
            r = c.read_reply()
            if isinstance(r, tuple):          # a simple reply
                _, cookie, err, _ = r
            else:                             # a NONE chunk
                cookie, err = r.cookie, 0
                assert r.done and r.type == P.TYPE_NONE
            assert err == 0
            del cookies[cookie]
        data, _ = c.pread(4 * MiB, 4 * MiB)
        assert data == bytes(expect[4 * MiB:8 * MiB])
        bm = c.block_status(0, 8 * MiB)[ids["qemu:dirty-bitmap:b0"]]
        dirty, pos = [], 0
        for ln, fl in bm:
            if fl & 1:
                dirty.append((pos, ln))
            pos += ln
        assert dirty == [(4 * MiB, MiB + 128 * 1024),
                         (6 * MiB, 320 * 1024), (7 * MiB, 320 * 1024)]
        c.disconnect()
    assert open(sparse, "rb").read() == bytes(expect)


def threads_of(pid):
    with open("/proc/%d/status" % pid) as f:
        return int([line for line in f if line.startswith("Threads:")][0]
                   .split()[1])


def settled_threads(pid, want, timeout=10):
    deadline = time.time() + timeout
    now = threads_of(pid)
    while now != want and time.time() < deadline:
        time.sleep(0.02)
        now = threads_of(pid)
    return now


def test_one_thread_serves_small_requests_and_a_flush_starts_another(
        tmp_path):
    """docs/nbd.md, "Threads": small page-cache reads and writes are served
    by the connection's one thread; a request that may block (a flush)
    first starts a second, so the socket keeps a receiver."""
    img = tmp_path / "t.raw"
    with open(img, "wb") as f:
        f.write(bytes(8 * MiB))
    with ferry_nbd(tmp_path, img, "-e", "0") as srv:
        pid = srv.proc.pid
        warm = P.Client(srv.sock)
        warm.connect_export()
        warm.disconnect()
        base = settled_threads(pid, -1, timeout=0.3)
        c = P.Client(srv.sock)
        c.connect_export()
        data = bytes(range(256)) * 16
        for burst in range(20):
            cookies = [c.request(P.CMD_WRITE, (burst * 16 + i) * 4096, 4096,
                                 payload=data) for i in range(8)]
            cookies += [c.request(P.CMD_READ, i * 4096, 4096)
                        for i in range(8)]
            pending = set(cookies)
            while pending:
                r = c.read_reply()
                if isinstance(r, tuple):        # a write's simple reply
                    assert r[2] == 0
                    pending.discard(r[1])
                else:
                    assert not r.type & 0x8000, r
                    if r.done:
                        pending.discard(r.cookie)
        assert settled_threads(pid, base + 1) == base + 1
        assert c.simple(P.CMD_FLUSH) == 0
        assert settled_threads(pid, base + 2) == base + 2
        got, _ = c.pread(0, 4096)
        assert got == data
        c.disconnect()
        assert settled_threads(pid, base) == base
