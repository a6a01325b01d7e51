#!/usr/bin/env python3
"""Write the seed corpora of fuzz-nbd-parse and fuzz-nbd-session: valid
handshakes, options and requests a fuzzer then mutates.  Rerun after a
protocol change: python3 tests/fuzz/gen-nbd-corpus.py"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
IHAVEOPT = 0x49484156454F5054


def opt(o, data=b""):
    return struct.pack(">QII", IHAVEOPT, o, len(data)) + data


def info(name=b"", infos=(3,)):
    return struct.pack(">I", len(name)) + name + struct.pack(
        ">H", len(infos)) + b"".join(struct.pack(">H", i) for i in infos)


def meta(name=b"", queries=()):
    d = struct.pack(">I", len(name)) + name + struct.pack(">I", len(queries))
    for q in queries:
        d += struct.pack(">I", len(q)) + q
    return d


def req(cmd, off, length, flags=0, cookie=1, payload=b""):
    return struct.pack(">IHHQQI", 0x25609513, flags, cmd, cookie, off,
                       length) + payload


def xreq(cmd, off, length, flags=0, cookie=1, payload=b""):
    if payload:
        flags |= 32
        length = len(payload)
    return struct.pack(">IHHQQQ", 0x21e41c71, flags, cmd, cookie, off,
                       length) + payload


ALL_META = [b"base:allocation", b"qemu:allocation-depth",
            b"qemu:dirty-bitmap:b0"]
CLIENT = struct.pack(">I", 3)

session = {
    "list-info": CLIENT + opt(3) + opt(6, info(b"ro", (0, 1, 2, 3))) +
    opt(99, b"x") + opt(2),
    "simple-io": CLIENT + opt(7, info()) + req(1, 0, 512, 1,
                                               payload=b"a" * 512) +
    req(0, 0, 4096, cookie=2) + req(3, 0, 0, cookie=3) +
    req(6, 4096, 65536, 2, cookie=4) + req(4, 0, 4096, cookie=5) +
    req(5, 0, 8192, cookie=6) + req(2, 0, 0, cookie=7),
    "structured-status": CLIENT + opt(8) + opt(9, meta()) +
    opt(10, meta(b"", ALL_META)) + opt(7, info()) +
    req(0, 0, 1 << 20, cookie=1) + req(0, 0, 65536, 4, cookie=2) +
    req(1, 131072, 4096, payload=b"b" * 4096, cookie=3) +
    req(7, 0, 1 << 20, cookie=4) + req(7, 4096, 512, 8, cookie=5) +
    req(2, 0, 0, cookie=6),
    "extended": CLIENT + opt(11) + opt(10, meta(b"", ALL_META)) +
    opt(7, info()) + xreq(1, 0, 0, payload=b"c" * 1000) +
    xreq(0, 0, 8192, cookie=2) + xreq(7, 0, 1 << 20, cookie=3) +
    xreq(6, 0, 1 << 20, 16, cookie=4) + xreq(2, 0, 0, cookie=5),
    "export-name": struct.pack(">I", 1) + opt(1, b"") + req(0, 512, 512) +
    req(2, 0, 0, cookie=2),
    "read-only": CLIENT + opt(8) + opt(7, info(b"ro")) +
    req(1, 0, 512, payload=b"d" * 512) + req(6, 0, 512, cookie=2) +
    req(99, 0, 0, cookie=3),
    "bad-magic": CLIENT + opt(7, info()) + b"\x12\x34\x56\x78" + bytes(24),
}

parse = {
    "info": b"\x00" + info(b"name", (0, 1, 2, 3, 77)),
    "meta-list": b"\x01" + meta(b"", [b"qemu:", b"base:", b"x-y:z"]),
    "meta-set": b"\x02" + meta(b"", ALL_META + [b"qemu:dirty-bitmap:"]),
    "req-read": b"\x03" + req(0, 4096, 4096, 4)[:28],
    "req-write": b"\x03" + req(1, 1 << 19, 1 << 20, 1)[:28],
    "req-ext-status": b"\x04" + xreq(7, 0, 1 << 40, 8),
    "req-ext-payload": b"\x04" + xreq(1, 0, 0, payload=b"e")[:32],
}

for name, seeds in (("nbd-session", session), ("nbd-parse", parse)):
    d = os.path.join(HERE, "corpus", name)
    os.makedirs(d, exist_ok=True)
    for k, v in seeds.items():
        with open(os.path.join(d, k), "wb") as f:
            f.write(v)
