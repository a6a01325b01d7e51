"""Device tests without guest code: ferry run --accel qtest, driven over
QEMU's qtest protocol.  Serial registers and its interrupt line, PCI
config space and BAR sizing, virtio-blk requests with MSI-X, and the
reliability rules (bad rings make NEEDS_RESET, ferry stays up)."""
import struct

import pytest

from conftest import need, run
from qtest import QTest, VirtioPci


def test_serial_registers_loopback_and_irq(tmp_path):
    qt = QTest(tmp_path)
    qt.outb(0x3ff, 0x5a)                       # scratch register
    assert qt.inb(0x3ff) == 0x5a
    assert qt.inb(0x3fd) & 0x60 == 0x60        # THR empty, transmitter empty
    qt.outb(0x3fb, 0x80)                       # DLAB: divisor latch
    qt.outb(0x3f8, 0x01)
    assert qt.inb(0x3f8) == 0x01
    qt.outb(0x3fb, 0x03)                       # 8N1, DLAB off
    qt.outb(0x3fc, 0x10)                       # loopback
    qt.outb(0x3f8, ord("Q"))
    assert qt.inb(0x3fd) & 0x01                # data ready
    assert qt.inb(0x3f8) == ord("Q")
    assert not qt.inb(0x3fd) & 0x01
    qt.outb(0x3fc, 0x08)                       # OUT2, loopback off
    assert qt.ok("irq_intercept_in ioapic") == ""
    qt.outb(0x3f9, 0x02)                       # IER: THR empty
    assert "IRQ raise 4" in qt.irqs
    assert qt.inb(0x3fa) & 0x0f == 0x02        # IIR: THRE, clears it
    assert qt.irqs[-1] == "IRQ lower 4"
    qt.outb(0x3f9, 0x00)
    for ch in b"hi\n":
        qt.outb(0x3f8, ch)
    rc, out, err = qt.close()
    assert rc == 0, err
    assert qt.serial_log.read_bytes() == b"hi\n"


def test_qtest_protocol_basics(tmp_path):
    qt = QTest(tmp_path)
    assert qt.cmd("endianness") == "OK little"
    assert qt.clock_step(1000) == 1000
    assert qt.clock_step(500) == 1500
    qt.writeq(0x5000, 0x1122334455667788)
    assert qt.readl(0x5000) == 0x55667788
    assert qt.memread(0x5000, 2) == b"\x88\x77"
    qt.memwrite(0x6000, b"ferry")
    assert qt.memread(0x6000, 5) == b"ferry"
    assert qt.cmd("nonsense 1 2").startswith("FAIL")
    assert qt.cmd("outb notanumber 1").startswith("FAIL")
    assert qt.inl(0x1234) == 0xffffffff         # unclaimed port
    rc, _, err = qt.close()
    assert rc == 0, err


def test_pci_config_space_and_bar_sizing(tmp_path):
    need("qemu-img")
    disk = tmp_path / "d.raw"
    run(["qemu-img", "create", "-q", "-f", "raw", str(disk), "1M"])
    qt = QTest(tmp_path, "--drive", disk, "--rng")
    assert qt.cfg_read(0, 0) == 0x29c08086                  # host bridge
    assert qt.cfg_read(0, 8) >> 8 == 0x060000
    assert qt.cfg_read(1, 0) == 0x10421af4                  # virtio-blk
    assert qt.cfg_read(2, 0) == 0x10441af4                  # virtio-rng
    assert qt.cfg_read(3, 0) == 0xffffffff                  # empty slot
    assert qt.cfg_read(1, 0x2c) == 0x00421af4               # subsystem
    # vendor id is read only
    qt.cfg_write(1, 0, 0xdeadbeef)
    assert qt.cfg_read(1, 0) == 0x10421af4
    # BAR 0: 64-bit memory, 32 KiB, assigned by ferry in the PCI hole
    bar = qt.cfg_read(1, 0x10)
    assert bar & 0xf == 0x4 and bar & ~0xf >= 0xc0000000
    qt.cfg_write(1, 0x10, 0xffffffff)
    assert qt.cfg_read(1, 0x10) == 0xffff8004
    qt.cfg_write(1, 0x10, bar)
    # a byte write to 0xcfb does not latch a config address
    qt.outl(0xcf8, 0x80000800)
    qt.outb(0xcfb, 0)
    assert qt.inl(0xcf8) == 0x80000800
    caps = qt.caps(1)
    vendor = sorted(raw[3] for off, cid, raw in caps if cid == 0x09)
    assert vendor == [1, 2, 3, 4, 5]                        # common..pci-cfg
    assert any(cid == 0x11 for off, cid, raw in caps)       # MSI-X
    # the PCI config access capability reads the BAR: num_queues (offset 18)
    cfgcap = [off for off, cid, raw in caps if cid == 0x09 and raw[3] == 5][0]
    qt.cfg_write(1, cfgcap + 4, 0, 1)                       # bar 0
    qt.cfg_write(1, cfgcap + 8, 18)                         # offset
    qt.cfg_write(1, cfgcap + 12, 2)                         # length
    assert qt.cfg_read(1, cfgcap + 16) & 0xffff == 1
    rc, _, err = qt.close()
    assert rc == 0, err


def blk_request(v, qt, req_type, sector, data_addr, length, write_data=None):
    HDR, STATUS = 0x103000, 0x105000
    qt.memwrite(HDR, struct.pack("<IIQ", req_type, 0, sector))
    qt.writeb(STATUS, 0xff)
    if write_data is not None:
        qt.memwrite(data_addr, write_data)
    v.set_desc(0, HDR, 16, 1, 1)
    device_writes = req_type in (0, 8)
    v.set_desc(1, data_addr, length, 1 | (2 if device_writes else 0), 2)
    v.set_desc(2, STATUS, 1, 2, 0)
    v.submit(0)
    used = v.wait_used()
    assert used is not None, "no used entry"
    return qt.readb(STATUS), used


def test_virtio_blk_requests_and_msix(tmp_path):
    need("qemu-io")
    disk = tmp_path / "d.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "4M"])
    qt = QTest(tmp_path, "--drive", "%s,serial=qtest-disk" % disk)
    v = VirtioPci(qt, 1)
    assert v.host_features if hasattr(v, "host_features") else True
    # MSI-X on, vector 1 pointed at guest RAM (no LAPIC in qtest)
    ctl = qt.cfg_read(1, v.msix_cap + 2, 2)
    qt.cfg_write(1, v.msix_cap + 2, ctl | 0x8000, 2)
    MSI = 0x106000
    qt.writel(v.msix_table + 16 + 0, MSI)
    qt.writel(v.msix_table + 16 + 4, 0)
    qt.writel(v.msix_table + 16 + 8, 0x4242)
    qt.writel(v.msix_table + 16 + 12, 0)                  # unmask
    v.init(features=(1 << 32) | (1 << 9), vector=1)
    assert v.host_features & (1 << 9) and v.host_features & (1 << 32)
    assert qt.readq(v.devcfg) == 8192                      # capacity, sectors
    data = bytes(range(256)) * 16
    st, used = blk_request(v, qt, 1, 8, 0x104000, 4096, data)
    assert st == 0
    assert qt.readl(MSI) == 0x4242                          # the interrupt
    qt.memwrite(0x104000, b"\0" * 4096)
    st, used = blk_request(v, qt, 0, 8, 0x104000, 4096)
    assert st == 0 and used[1] == 4097
    assert qt.memread(0x104000, 4096) == data
    st, used = blk_request(v, qt, 8, 0, 0x104000, 20)      # GET_ID
    assert st == 0 and qt.memread(0x104000, 10) == b"qtest-disk"
    st, used = blk_request(v, qt, 4, 0, 0x104000, 0)       # flush (no data)
    assert st == 0
    st, used = blk_request(v, qt, 0, 8192, 0x104000, 512)  # past the end
    assert st == 1
    st, used = blk_request(v, qt, 99, 0, 0x104000, 512)    # unknown type
    assert st == 2
    # write zeroes over the data, then read zeroes back
    seg = struct.pack("<QII", 8, 8, 0)
    st, _ = blk_request(v, qt, 13, 0, 0x107000, len(seg), seg)
    assert st == 0
    st, _ = blk_request(v, qt, 0, 8, 0x104000, 4096)
    assert qt.memread(0x104000, 4096) == b"\0" * 4096
    st, _ = blk_request(v, qt, 1, 16, 0x104000, 4096, data)
    assert st == 0
    rc, _, err = qt.close()
    assert rc == 0, err
    run(["qemu-io", "-c", "read -P 0 4K 4K", "-c", "read -v 8K 16", str(disk)])
    out = run(["qemu-io", "-c", "read -v 8K 16", str(disk)]).out
    assert "00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f" in out
    run(["qemu-img", "check", str(disk)])


@pytest.mark.parametrize("case", ["loop", "outside-ram", "qsize", "rings",
                                  "indirect-len", "write-after-read"])
def test_virtio_bad_rings_need_reset_and_ferry_stays_up(tmp_path, case):
    need("qemu-img")
    disk = tmp_path / "d.raw"
    run(["qemu-img", "create", "-q", "-f", "raw", str(disk), "1M"])
    qt = QTest(tmp_path, "--drive", "%s,format=raw" % disk)
    v = VirtioPci(qt, 1)
    if case == "qsize":
        v.init(qsize=100)
    elif case == "rings":
        v.DESC = 0x7ff000000000
        v.init()
    else:
        v.init(features=(1 << 32) | (1 << 28))
        HDR = 0x103000
        qt.memwrite(HDR, struct.pack("<IIQ", 0, 0, 0))
        if case == "loop":
            v.set_desc(0, HDR, 16, 1, 1)
            v.set_desc(1, HDR, 16, 1, 0)
        elif case == "outside-ram":
            v.set_desc(0, HDR, 16, 1, 1)
            v.set_desc(1, 0x7ff000000000, 4096, 3, 2)
            v.set_desc(2, 0x105000, 1, 2, 0)
        elif case == "indirect-len":
            v.set_desc(0, 0x108000, 17, 4, 0)
        elif case == "write-after-read":
            v.set_desc(0, 0x105000, 1, 3, 1)
            v.set_desc(1, HDR, 16, 0, 0)
        v.submit(0)
        assert v.wait_used(seconds=0.3) is None
    assert v.status() & 0x40, "device not marked NEEDS_RESET"
    # the device comes back after a reset and serves a request
    v.DESC = VirtioPci.DESC
    v.init()
    st, _ = blk_request(v, qt, 0, 0, 0x104000, 512)
    assert st == 0
    rc, _, err = qt.close()
    assert rc == 0
    assert "needs reset" in err
