"""A client for ferry's qtest accelerator: the test listens on a unix
socket, ferry connects, and the test drives ports and memory with QEMU's
qtest verbs.  Also a small PCI and virtio-pci driver written in those verbs."""
import os
import socket
import struct
import subprocess
import time

from conftest import ferry_path


class QTest:
    def __init__(self, tmp_path, *extra, mem="64M"):
        self.path = str(tmp_path / "qtest.sock")
        self.serial_log = tmp_path / "serial.log"
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(self.path)
        srv.listen(1)
        srv.settimeout(20)
        self.proc = subprocess.Popen(
            [ferry_path(), "run", "--accel", "qtest", "--qtest",
             "unix:" + self.path, "-m", mem, "--serial",
             "file:%s" % self.serial_log] + [str(a) for a in extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            self.sock, _ = srv.accept()
        except socket.timeout:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise AssertionError("ferry did not connect: %s" % err)
        finally:
            srv.close()
        self.sock.settimeout(20)
        self.rx = b""
        self.irqs = []

    def _line(self):
        while b"\n" not in self.rx:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError("ferry closed the qtest socket")
            self.rx += chunk
        line, self.rx = self.rx.split(b"\n", 1)
        return line.decode()

    def cmd(self, line):
        self.sock.sendall(line.encode() + b"\n")
        while True:
            reply = self._line()
            if reply.startswith("IRQ "):
                self.irqs.append(reply)
                continue
            return reply

    def ok(self, line):
        reply = self.cmd(line)
        assert reply.startswith("OK"), "%s -> %s" % (line, reply)
        return reply[3:]

    def outb(self, port, v): self.ok("outb 0x%x 0x%x" % (port, v))
    def outw(self, port, v): self.ok("outw 0x%x 0x%x" % (port, v))
    def outl(self, port, v): self.ok("outl 0x%x 0x%x" % (port, v))
    def inb(self, port): return int(self.ok("inb 0x%x" % port), 16)
    def inw(self, port): return int(self.ok("inw 0x%x" % port), 16)
    def inl(self, port): return int(self.ok("inl 0x%x" % port), 16)

    def readb(self, a): return int(self.ok("readb 0x%x" % a), 16)
    def readw(self, a): return int(self.ok("readw 0x%x" % a), 16)
    def readl(self, a): return int(self.ok("readl 0x%x" % a), 16)
    def readq(self, a): return int(self.ok("readq 0x%x" % a), 16)
    def writeb(self, a, v): self.ok("writeb 0x%x 0x%x" % (a, v))
    def writew(self, a, v): self.ok("writew 0x%x 0x%x" % (a, v))
    def writel(self, a, v): self.ok("writel 0x%x 0x%x" % (a, v))
    def writeq(self, a, v): self.ok("writeq 0x%x 0x%x" % (a, v))

    def memread(self, a, size):
        return bytes.fromhex(self.ok("read 0x%x 0x%x" % (a, size))[2:])

    def memwrite(self, a, data):
        self.ok("write 0x%x 0x%x 0x%s" % (a, len(data), data.hex()))

    def clock_step(self, ns=None):
        return int(self.ok("clock_step" + ("" if ns is None else " %d" % ns)))

    def close(self, timeout=20):
        self.sock.close()
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    # -- PCI through the type-1 ports --------------------------------------
    def cfg_addr(self, dev, off):
        self.outl(0xcf8, 0x80000000 | (dev << 11) | (off & 0xfc))

    def cfg_read(self, dev, off, size=4):
        self.cfg_addr(dev, off)
        port = 0xcfc + (off & 3)
        return {1: self.inb, 2: self.inw, 4: self.inl}[size](port)

    def cfg_write(self, dev, off, v, size=4):
        self.cfg_addr(dev, off)
        port = 0xcfc + (off & 3)
        {1: self.outb, 2: self.outw, 4: self.outl}[size](port, v)

    def caps(self, dev):
        """[(offset, id, bytes)] of the capability list."""
        out = []
        off = self.cfg_read(dev, 0x34, 1)
        while off:
            raw = struct.pack("<5I", *[self.cfg_read(dev, off + 4 * i)
                                       for i in range(5)])
            out.append((off, raw[0], raw))
            off = raw[1]
        return out


class VirtioPci:
    """Modern virtio-pci in qtest verbs; rings at fixed guest addresses."""
    DESC, AVAIL, USED = 0x100000, 0x101000, 0x102000

    def __init__(self, qt, dev):
        self.qt, self.dev = qt, dev
        lo = qt.cfg_read(dev, 0x10)
        hi = qt.cfg_read(dev, 0x14)
        self.bar = (lo & ~0xf) | (hi << 32)
        self.common = self.notify = self.devcfg = None
        for off, cid, raw in qt.caps(dev):
            if cid == 0x09:
                ctype, bar = raw[3], raw[4]
                offset = struct.unpack_from("<I", raw, 8)[0]
                if ctype == 1:
                    self.common = self.bar + offset
                elif ctype == 2:
                    self.notify = self.bar + offset
                    self.mult = struct.unpack_from("<I", raw, 16)[0]
                elif ctype == 4:
                    self.devcfg = self.bar + offset
            elif cid == 0x11:
                self.msix_cap = off
                self.msix_table = self.bar + (struct.unpack_from("<I", raw, 4)[0] & ~7)
        self.avail_idx = 0
        self.used_seen = 0

    def status(self):
        return self.qt.readb(self.common + 20)

    def init(self, features=1 << 32, qsize=64, vector=0xffff):
        qt, c = self.qt, self.common
        qt.writeb(c + 20, 0)
        qt.writeb(c + 20, 3)
        qt.writel(c + 0, 0)
        host = qt.readl(c + 4)
        qt.writel(c + 0, 1)
        host |= qt.readl(c + 4) << 32
        self.host_features = host
        qt.writel(c + 8, 0)
        qt.writel(c + 12, features & 0xffffffff)
        qt.writel(c + 8, 1)
        qt.writel(c + 12, features >> 32)
        qt.writeb(c + 20, 0xb)
        assert qt.readb(c + 20) & 8, "FEATURES_OK refused"
        qt.writew(c + 22, 0)
        qt.writew(c + 24, qsize)
        qt.writew(c + 26, vector)
        for off, addr in ((32, self.DESC), (40, self.AVAIL), (48, self.USED)):
            qt.writel(c + off, addr & 0xffffffff)
            qt.writel(c + off + 4, addr >> 32)
        qt.ok("memset 0x%x 0x3000 0" % self.DESC)
        qt.writew(c + 28, 1)
        self.notify_off = qt.readw(c + 30)
        qt.writeb(c + 20, 0xf)
        self.qsize = qsize
        self.avail_idx = self.used_seen = 0

    def set_desc(self, i, addr, length, flags, nxt):
        self.qt.memwrite(self.DESC + 16 * i,
                         struct.pack("<QIHH", addr, length, flags, nxt))

    def submit(self, head):
        qt = self.qt
        qt.writew(self.AVAIL + 4 + 2 * (self.avail_idx % self.qsize), head)
        self.avail_idx = (self.avail_idx + 1) & 0xffff
        qt.writew(self.AVAIL + 2, self.avail_idx)
        qt.writew(self.notify + self.notify_off * self.mult, 0)

    def wait_used(self, seconds=15.0):
        """The next used entry (id, len), or None after `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.qt.readw(self.USED + 2) != self.used_seen:
                slot = self.used_seen % self.qsize
                self.used_seen = (self.used_seen + 1) & 0xffff
                return struct.unpack("<II", self.qt.memread(self.USED + 4 + 8 * slot, 8))
            self.qt.clock_step(100000)
            time.sleep(0.0005)
        return None
