"""A small NBD client speaking the protocol byte by byte (stdlib only).

Debian's peers (libnbd 1.14, QEMU 7.2) predate extended headers and never
send malformed requests, so the tests that need either drive this client.
It follows doc/proto.md of the NBD project; nothing here is ferry-specific.
"""
import socket
import struct

NBDMAGIC = 0x4e42444d41474943
IHAVEOPT = 0x49484156454F5054
REP_MAGIC = 0x0003e889045565a9
REQUEST_MAGIC = 0x25609513
EXT_REQUEST_MAGIC = 0x21e41c71
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668e33ef
EXT_REPLY_MAGIC = 0x6e8a278c

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST = 1, 2, 3
OPT_STARTTLS, OPT_INFO, OPT_GO, OPT_STRUCTURED_REPLY = 5, 6, 7, 8
OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT, OPT_EXTENDED_HEADERS = 9, 10, 11

REP_ACK, REP_SERVER, REP_INFO, REP_META_CONTEXT = 1, 2, 3, 4
REP_ERR_UNSUP = 0x80000001
REP_ERR_POLICY = 0x80000002
REP_ERR_INVALID = 0x80000003
REP_ERR_TLS_REQD = 0x80000005
REP_ERR_UNKNOWN = 0x80000006
REP_ERR_TOO_BIG = 0x80000009
REP_ERR_EXT_HEADER_REQD = 0x8000000a

INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH = 0, 1, 2, 3
CMD_TRIM, CMD_CACHE, CMD_WRITE_ZEROES, CMD_BLOCK_STATUS = 4, 5, 6, 7
FLAG_FUA, FLAG_NO_HOLE, FLAG_DF, FLAG_REQ_ONE = 1, 2, 4, 8
FLAG_FAST_ZERO, FLAG_PAYLOAD_LEN = 16, 32

TX_READ_ONLY = 1 << 1
TX_CAN_MULTI_CONN = 1 << 8

REPLY_FLAG_DONE = 1
TYPE_NONE, TYPE_OFFSET_DATA, TYPE_OFFSET_HOLE = 0, 1, 2
TYPE_BLOCK_STATUS, TYPE_BLOCK_STATUS_EXT = 5, 6
TYPE_ERROR, TYPE_ERROR_OFFSET = 0x8001, 0x8002

EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP = 1, 5, 12, 22, 28, 75, 95


class ProtocolError(Exception):
    pass


def connect(path=None, addr=None, timeout=10):
    if path:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(path)
    else:
        s = socket.create_connection(addr, timeout=timeout)
    return s


class Chunk:
    def __init__(self, flags, type, cookie, offset, payload):
        self.flags, self.type, self.cookie = flags, type, cookie
        self.offset, self.payload = offset, payload

    @property
    def done(self):
        return bool(self.flags & REPLY_FLAG_DONE)

    def error(self):
        """(errno, message) of an error chunk."""
        err, mlen = struct.unpack(">IH", self.payload[:6])
        return err, self.payload[6:6 + mlen].decode(errors="replace")

    def __repr__(self):
        return "Chunk(type=%d flags=%d cookie=%d len=%d)" % (
            self.type, self.flags, self.cookie, len(self.payload))


class Client:
    """One connection; call handshake(), options, then go()."""

    def __init__(self, path=None, addr=None, sock=None, timeout=10):
        self.s = sock or connect(path, addr, timeout)
        self.structured = False
        self.extended = False
        self.size = None
        self.tx_flags = None
        self.cookie = 0

    # -- bytes --
    def recvall(self, n):
        buf = b""
        while len(buf) < n:
            part = self.s.recv(n - len(buf))
            if not part:
                raise ProtocolError("connection closed after %d of %d bytes"
                                    % (len(buf), n))
            buf += part
        return buf

    def send(self, data):
        self.s.sendall(data)

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass

    # -- handshake --
    def handshake(self, client_flags=3):
        magic, opts, hflags = struct.unpack(">QQH", self.recvall(18))
        if magic != NBDMAGIC or opts != IHAVEOPT:
            raise ProtocolError("bad greeting")
        self.handshake_flags = hflags
        self.send(struct.pack(">I", client_flags))
        return hflags

    def send_option(self, opt, data=b"", length=None):
        self.send(struct.pack(">QII", IHAVEOPT, opt,
                              len(data) if length is None else length) + data)

    def option_reply(self):
        magic, opt, typ, length = struct.unpack(">QIII", self.recvall(20))
        if magic != REP_MAGIC:
            raise ProtocolError("bad option reply magic %#x" % magic)
        return opt, typ, self.recvall(length)

    def option(self, opt, data=b""):
        """Send an option; return (final reply type, [(type, data)...])."""
        self.send_option(opt, data)
        parts = []
        while True:
            ropt, typ, payload = self.option_reply()
            if ropt != opt:
                raise ProtocolError("reply for option %d, expected %d"
                                    % (ropt, opt))
            if typ == REP_ACK or typ & 0x80000000:
                return typ, parts
            parts.append((typ, payload))

    def negotiate_structured(self):
        typ, _ = self.option(OPT_STRUCTURED_REPLY)
        self.structured = typ == REP_ACK
        return typ

    def negotiate_extended(self):
        typ, _ = self.option(OPT_EXTENDED_HEADERS)
        if typ == REP_ACK:
            self.extended = self.structured = True
        return typ

    @staticmethod
    def meta_data(name, queries):
        data = struct.pack(">I", len(name)) + name.encode()
        data += struct.pack(">I", len(queries))
        for q in queries:
            data += struct.pack(">I", len(q)) + q.encode()
        return data

    def meta(self, opt, name="", queries=()):
        typ, parts = self.option(opt, self.meta_data(name, queries))
        out = {}
        for ptyp, payload in parts:
            assert ptyp == REP_META_CONTEXT
            cid, = struct.unpack(">I", payload[:4])
            out[payload[4:].decode()] = cid
        return typ, out

    def info_data(self, name, infos):
        data = struct.pack(">I", len(name)) + name.encode()
        data += struct.pack(">H", len(infos))
        for i in infos:
            data += struct.pack(">H", i)
        return data

    def go(self, name="", infos=(INFO_BLOCK_SIZE,), opt=OPT_GO):
        typ, parts = self.option(opt, self.info_data(name, infos))
        info = {}
        for ptyp, payload in parts:
            if ptyp != REP_INFO:
                continue
            itype, = struct.unpack(">H", payload[:2])
            if itype == INFO_EXPORT:
                info["size"], info["flags"] = struct.unpack(">QH", payload[2:12])
            elif itype == INFO_BLOCK_SIZE:
                info["block_size"] = struct.unpack(">III", payload[2:14])
            elif itype == INFO_NAME:
                info["name"] = payload[2:].decode()
            elif itype == INFO_DESCRIPTION:
                info["description"] = payload[2:].decode()
        if typ == REP_ACK and opt == OPT_GO:
            self.size, self.tx_flags = info["size"], info["flags"]
        return typ, info

    def connect_export(self, name="", structured=True, extended=False,
                       meta=()):
        self.handshake()
        if extended:
            assert self.negotiate_extended() == REP_ACK
        elif structured:
            assert self.negotiate_structured() == REP_ACK
        ids = {}
        if meta:
            typ, ids = self.meta(OPT_SET_META_CONTEXT, name, meta)
            assert typ == REP_ACK
        typ, info = self.go(name)
        if typ != REP_ACK:
            raise ProtocolError("NBD_OPT_GO failed: %#x" % typ)
        return ids

    # -- transmission --
    def next_cookie(self):
        self.cookie += 1
        return self.cookie

    def request(self, cmd, offset=0, length=0, flags=0, payload=b"",
                cookie=None, magic=None):
        cookie = self.next_cookie() if cookie is None else cookie
        if self.extended:
            if payload:
                flags |= FLAG_PAYLOAD_LEN
                length = len(payload)
            hdr = struct.pack(">IHHQQQ", magic or EXT_REQUEST_MAGIC, flags,
                              cmd, cookie, offset, length)
        else:
            hdr = struct.pack(">IHHQQI", magic or REQUEST_MAGIC, flags, cmd,
                              cookie, offset, length)
        self.send(hdr + payload)
        return cookie

    def read_reply(self, read_len=None):
        """One simple reply or one chunk.

        A simple reply to a read carries read_len bytes of data (the caller
        must know, as in the protocol).
        """
        magic, = struct.unpack(">I", self.recvall(4))
        if magic == SIMPLE_REPLY_MAGIC:
            err, cookie = struct.unpack(">IQ", self.recvall(12))
            data = self.recvall(read_len) if read_len and not err else b""
            return ("simple", cookie, err, data)
        if magic == STRUCTURED_REPLY_MAGIC:
            flags, typ, cookie, length = struct.unpack(">HHQI",
                                                       self.recvall(16))
            return Chunk(flags, typ, cookie, None, self.recvall(length))
        if magic == EXT_REPLY_MAGIC:
            flags, typ, cookie, offset, length = struct.unpack(
                ">HHQQQ", self.recvall(28))
            return Chunk(flags, typ, cookie, offset, self.recvall(length))
        raise ProtocolError("bad reply magic %#x" % magic)

    def reply_for(self, cookie, read_len=None):
        """All chunks (or the simple reply) of one request, in order."""
        chunks = []
        while True:
            r = self.read_reply(read_len)
            if isinstance(r, tuple):
                assert r[1] == cookie, "cookie %d, expected %d" % (r[1], cookie)
                return r
            assert r.cookie == cookie, "cookie %d, expected %d" % (r.cookie,
                                                                   cookie)
            chunks.append(r)
            if r.done:
                return chunks

    def error_of(self, reply):
        """The error number of a reply (0 on success)."""
        if isinstance(reply, tuple):
            return reply[2]
        for ch in reply:
            if ch.type & 0x8000:
                return ch.error()[0]
        return 0

    # -- commands --
    def pread(self, offset, length, flags=0):
        """(data, chunks) where data is reassembled from the reply."""
        cookie = self.request(CMD_READ, offset, length, flags)
        reply = self.reply_for(cookie, length)
        if isinstance(reply, tuple):
            if reply[2]:
                raise IOError(reply[2], "read failed")
            return reply[3], []
        buf = bytearray(length)
        for ch in reply:
            if ch.type == TYPE_OFFSET_DATA:
                off, = struct.unpack(">Q", ch.payload[:8])
                data = ch.payload[8:]
                buf[off - offset:off - offset + len(data)] = data
            elif ch.type == TYPE_OFFSET_HOLE:
                off, n = struct.unpack(">QI", ch.payload[:12])
                buf[off - offset:off - offset + n] = bytes(n)
            elif ch.type & 0x8000:
                raise IOError(ch.error()[0], ch.error()[1])
        return bytes(buf), reply

    def simple(self, cmd, offset=0, length=0, flags=0, payload=b""):
        """Send a command and return its error number (0: success)."""
        cookie = self.request(cmd, offset, length, flags, payload)
        return self.error_of(self.reply_for(cookie))

    def pwrite(self, offset, data, flags=0):
        return self.simple(CMD_WRITE, offset, len(data), flags, data)

    def block_status(self, offset, length, flags=0):
        """{context id: [(length, flags), ...]} or an error number."""
        cookie = self.request(CMD_BLOCK_STATUS, offset, length, flags)
        reply = self.reply_for(cookie)
        err = self.error_of(reply)
        if err:
            return err
        out = {}
        for ch in reply:
            if ch.type == TYPE_BLOCK_STATUS:
                cid, = struct.unpack(">I", ch.payload[:4])
                body = ch.payload[4:]
                out[cid] = [struct.unpack(">II", body[i:i + 8])
                            for i in range(0, len(body), 8)]
            elif ch.type == TYPE_BLOCK_STATUS_EXT:
                cid, count = struct.unpack(">II", ch.payload[:8])
                body = ch.payload[8:]
                assert len(body) == 16 * count
                out[cid] = [struct.unpack(">QQ", body[i:i + 16])
                            for i in range(0, len(body), 16)]
        return out

    def disconnect(self):
        self.request(CMD_DISC)
        self.close()
