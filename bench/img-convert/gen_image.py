#!/usr/bin/env python3
"""Write a reproducible mixed raw disk image for the img-convert benchmark.

About a third each of random (incompressible) data, zero extents and
compressible data, interleaved in extents of varied sizes (4 KiB to 8 MiB).
Half of the zero extents are holes, half are written zeroes, so a converter
must both skip what block status calls zero and find zeroes in the data.

    gen_image.py OUTPUT SIZE [--seed N]
"""
import argparse
import random
import sys

SIZES = [4 << 10, 16 << 10, 64 << 10, 192 << 10, 1 << 20, 3 << 20, 8 << 20]


def parse_size(s):
    mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    s = s.strip().lower()
    if s and s[-1] in mult:
        return int(float(s[:-1]) * mult[s[-1]])
    return int(s)


def compressible(rnd, n):
    """Text-like records: zlib gets about 4:1 out of these."""
    words = [b"ferry", b"block", b"cluster", b"qcow2", b"sector", b"guest",
             b"%08x" % rnd.getrandbits(32), b"%04d" % rnd.randrange(10000)]
    line = b" ".join(rnd.choice(words) for _ in range(12)) + b"\n"
    chunk = (line * (65536 // len(line) + 1))[:65536]
    reps = n // len(chunk) + 1
    return (chunk * reps)[:n]


def generate(path, size, seed):
    rnd = random.Random(seed)
    counts = {"random": 0, "zero-hole": 0, "zero-written": 0, "text": 0}
    with open(path, "wb") as f:
        f.truncate(0)
        f.truncate(size)
        off = 0
        while off < size:
            n = min(rnd.choice(SIZES), size - off)
            kind = rnd.randrange(3)
            if kind == 0:
                f.seek(off)
                f.write(rnd.randbytes(n))
                counts["random"] += n
            elif kind == 1:
                if rnd.randrange(2):
                    f.seek(off)
                    f.write(bytes(n))
                    counts["zero-written"] += n
                else:
                    counts["zero-hole"] += n
            else:
                f.seek(off)
                f.write(compressible(rnd, n))
                counts["text"] += n
            off += n
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("output")
    ap.add_argument("size")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    counts = generate(args.output, parse_size(args.size), args.seed)
    total = sum(counts.values())
    print(" ".join("%s=%.1f%%" % (k, 100.0 * v / total)
                   for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
