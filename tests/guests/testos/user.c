/*
 * testos user part (CPL3, native speed on a paravirtual KVM): reads the
 * command line, lists PCI devices, and runs the tests it names:
 *   test=pci,disk,ro,bench,bad,reset,dirty,guestreset  (comma-separated;
 *                          they run in that order)
 *   sectors=N start=S      disk: pattern write/flush/read-verify range
 *   indirect=1 eventidx=1  disk: use indirect descriptors / event idx
 *   mib=N secs=N           bench: region and seconds per phase
 *   pages=N rate=N secs=N  dirty: working set, pages dirtied per second
 *                          (0 = as fast as it can), duration (0 = forever)
 * Prints "testos: PASS" and powers off, or "testos: FAIL ..." and resets.
 */
#include "testos.h"
#include "virtio-blk.h"

#define DIRTY_BASE (32ull << 20)

static char cmdline[512];
static uint64_t tsc_khz;
static uint8_t iobuf[1 << 20] __attribute__((aligned(4096)));

static void poweroff(void)
{
    outb(PORT_SLEEP_CTL, 0x34);
    for (;;) {
    }
}

static void fail(const char *what)
{
    printf_("testos: FAIL %s\n", what);
    outb(PORT_RESET_CTL, 0x06);
    for (;;) {
    }
}

static uint64_t ms_since(uint64_t t0)
{
    return (rdtsc() - t0) / tsc_khz;
}

/* Value of key in the command line, or def. */
static uint64_t opt_num(const char *key, uint64_t def)
{
    size_t kl = strlen(key);

    for (const char *p = cmdline; *p; p++) {
        if ((p == cmdline || p[-1] == ' ') && !memcmp(p, key, kl) &&
            p[kl] == '=') {
            uint64_t v = 0;
            for (p += kl + 1; *p >= '0' && *p <= '9'; p++) {
                v = v * 10 + (*p - '0');
            }
            return v;
        }
    }
    return def;
}

/* Is name one of the comma-separated words after test=? */
static int want(const char *name)
{
    size_t nl = strlen(name);
    const char *p = cmdline;

    for (; *p; p++) {
        if ((p == cmdline || p[-1] == ' ') && !memcmp(p, "test=", 5)) {
            break;
        }
    }
    if (!*p) {
        return 0;
    }
    p += 5;
    while (*p && *p != ' ') {
        if (!memcmp(p, name, nl) && (p[nl] == ',' || p[nl] == ' ' || !p[nl])) {
            return 1;
        }
        while (*p && *p != ',' && *p != ' ') {
            p++;
        }
        if (*p == ',') {
            p++;
        }
    }
    return 0;
}

/* The disk pattern: tests/integration/run/guest.py computes the same. */
static uint64_t pattern(uint64_t sector, uint64_t word)
{
    return (sector << 20) ^ (word << 8) ^ 0xa5a5a5a55a5a5a5aull;
}

static void fill(uint64_t sector, uint32_t nsect)
{
    uint64_t *w = (uint64_t *)iobuf;
    for (uint32_t s = 0; s < nsect; s++) {
        for (int i = 0; i < 64; i++) {
            w[s * 64 + i] = pattern(sector + s, i);
        }
    }
}

static int check(uint64_t sector, uint32_t nsect)
{
    uint64_t *w = (uint64_t *)iobuf;
    for (uint32_t s = 0; s < nsect; s++) {
        for (int i = 0; i < 64; i++) {
            if (w[s * 64 + i] != pattern(sector + s, i)) {
                printf_("disk: mismatch at sector %lu word %d\n", sector + s, i);
                return -1;
            }
        }
    }
    return 0;
}

static void list_pci(void)
{
    for (int dev = 0; dev < 32; dev++) {
        uint32_t id = pci_read(dev, 0);
        if ((id & 0xffff) == 0xffff) {
            continue;
        }
        printf_("pci: 00:%02x.0 %04x:%04x class %06x\n", dev, id & 0xffff,
                id >> 16, pci_read(dev, 8) >> 8);
    }
}

static void test_disk(VBlk *b)
{
    uint64_t start = opt_num("start", 0), n = opt_num("sectors", 2048);
    uint64_t extra = 0;
    char id[21];

    if (opt_num("indirect", 0)) {
        extra |= 1ull << 28;
    }
    if (opt_num("eventidx", 0)) {
        extra |= 1ull << 29;
    }
    if (vblk_init(b, extra, 0) < 0) {
        fail("disk: init");
    }
    b->use_indirect = (b->features >> 28) & 1;
    printf_("disk: capacity %lu sectors, features 0x%lx, queue %u\n",
            b->capacity, b->features, b->qsize);
    if (start + n > b->capacity) {
        fail("disk: range past the end");
    }
    for (uint64_t s = start; s < start + n; s += 128) {
        uint32_t c = (uint32_t)((start + n - s) < 128 ? start + n - s : 128);
        fill(s, c);
        if (vblk_rw(b, 1, s, iobuf, c * 512) != 0) {
            fail("disk: write");
        }
    }
    if (vblk_rw(b, 4, 0, 0, 0) != 0) {
        fail("disk: flush");
    }
    for (uint64_t s = start; s < start + n; s += 128) {
        uint32_t c = (uint32_t)((start + n - s) < 128 ? start + n - s : 128);
        memset(iobuf, 0, c * 512);
        if (vblk_rw(b, 0, s, iobuf, c * 512) != 0 || check(s, c) < 0) {
            fail("disk: read back");
        }
    }
    memset(id, 0, sizeof(id));
    if (vblk_rw(b, 8, 0, id, 20) != 0) {
        fail("disk: get-id");
    }
    /* a read past the end must fail with IOERR, not succeed */
    if (vblk_rw(b, 0, b->capacity, iobuf, 512) != 1) {
        fail("disk: read past the end was not refused");
    }
    printf_("disk: id '%s' wrote and verified %lu sectors at %lu\n", id, n,
            start);
}

static uint64_t xorshift(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void test_bench(VBlk *b)
{
    uint64_t mib = opt_num("mib", 64), secs = opt_num("secs", 2);
    uint64_t region = mib * 2048, seed = 88172645463325252ull;
    uint64_t t0, ops, ms;
    static const char *const names[4] = {
        "seq-write", "seq-read", "rand-write", "rand-read"
    };

    if (vblk_init(b, opt_num("eventidx", 1) ? 1ull << 29 : 0, 0) < 0) {
        fail("bench: init");
    }
    if (region > b->capacity) {
        region = b->capacity & ~2047ull;
    }
    memset(iobuf, 0x5a, sizeof(iobuf));
    b->kicks = b->requests = 0;
    for (int phase = 0; phase < 4; phase++) {
        if (opt_num("phase", 9) != 9 && opt_num("phase", 9) != (uint64_t)phase) {
            continue;
        }
        int write = !(phase & 1);
        int rnd = phase >= 2;
        uint32_t len = rnd ? 4096 : (1u << 20);
        uint64_t pos = 0;
        ops = 0;
        t0 = rdtsc();
        do {
            uint64_t sector;
            if (rnd) {
                sector = (xorshift(&seed) % (region / 8)) * 8;
            } else {
                sector = pos;
                pos = (pos + 2048) % region;
            }
            if (vblk_rw(b, write, sector, iobuf, len) != 0) {
                fail("bench: I/O error");
            }
            ops++;
        } while (ms_since(t0) < secs * 1000);
        ms = ms_since(t0);
        if (write) {
            vblk_rw(b, 4, 0, 0, 0);
        }
        if (rnd) {
            printf_("bench: %s iops=%lu\n", names[phase], ops * 1000 / ms);
        } else {
            printf_("bench: %s MBps=%lu\n", names[phase],
                    ops * 1000 * 1048576 / ms / 1000000);
        }
    }
    printf_("bench: %lu requests, %lu doorbells\n", b->requests, b->kicks);
}

/*
 * The migration workload: a working set of pages, each filled from one
 * counter value; pages are rewritten at the given rate and the expected
 * checksum is kept incrementally, so a report compares it with the sum
 * actually in memory.
 */
static uint64_t page_sum(uint64_t v)
{
    uint64_t s = 0;
    for (uint64_t i = 0; i < 512; i++) {
        s += v ^ (i * 0x9e3779b97f4a7c15ull);
    }
    return s;
}

static void write_page(uint64_t *p, uint64_t v)
{
    for (uint64_t i = 0; i < 512; i++) {
        p[i] = v ^ (i * 0x9e3779b97f4a7c15ull);
    }
}

static void test_dirty(void)
{
    uint64_t pages = opt_num("pages", 4096), rate = opt_num("rate", 0);
    uint64_t secs = opt_num("secs", 2), report_ms = opt_num("report", 500);
    uint64_t *base = (uint64_t *)DIRTY_BASE;
    uint64_t expect = 0, counter = 0, dirtied = 0, next_report = report_ms;
    uint64_t t0, seed = 0x1234567887654321ull;

    for (uint64_t p = 0; p < pages; p++) {
        write_page(base + p * 512, 0);
        expect += page_sum(0);
    }
    printf_("dirty: pages=%lu rate=%lu secs=%lu\n", pages, rate, secs);
    t0 = rdtsc();
    for (;;) {
        uint64_t ms = ms_since(t0);
        uint64_t target = rate ? rate * ms / 1000 : dirtied + 64;
        while (dirtied < target) {
            uint64_t p = xorshift(&seed) % pages;
            uint64_t *pg = base + p * 512;
            expect -= page_sum(pg[0]);
            counter++;
            write_page(pg, counter);
            expect += page_sum(counter);
            dirtied++;
        }
        if (ms >= next_report) {
            uint64_t sum = 0;
            for (uint64_t i = 0; i < pages * 512; i++) {
                sum += base[i];
            }
            printf_("dirty: t=%lums dirtied=%lu checksum=0x%lx %s\n", ms,
                    dirtied, sum, sum == expect ? "ok" : "MISMATCH");
            if (sum != expect) {
                fail("dirty: checksum mismatch");
            }
            next_report += report_ms;
        }
        if (secs && ms >= secs * 1000) {
            break;
        }
    }
}

/* A read-only disk: offered VIRTIO_BLK_F_RO, reads work, writes fail. */
static void test_ro(VBlk *b)
{
    if (vblk_init(b, 1ull << 5, 0) < 0) {
        fail("ro: init");
    }
    if (!((b->features >> 5) & 1)) {
        fail("ro: device did not offer VIRTIO_BLK_F_RO");
    }
    if (vblk_rw(b, 0, 0, iobuf, 4096) != 0) {
        fail("ro: read");
    }
    if (vblk_rw(b, 1, 0, iobuf, 4096) != 1) {
        fail("ro: write was not refused with IOERR");
    }
    printf_("ro: read ok, write refused\n");
}

/* What an exit to ferry costs: port and MMIO writes nobody claims. */
static void test_exits(void)
{
    uint64_t t0, n = 2000;

    t0 = rdtsc();
    for (uint64_t i = 0; i < n; i++) {
        outb(0x80, 0);
    }
    printf_("exits: pio %lu ns\n", (rdtsc() - t0) * 1000000 / tsc_khz / n);
    t0 = rdtsc();
    for (uint64_t i = 0; i < n; i++) {
        *(volatile uint32_t *)0xd0000000ull = 0;
    }
    printf_("exits: mmio %lu ns\n", (rdtsc() - t0) * 1000000 / tsc_khz / n);
    t0 = rdtsc();
    for (uint64_t i = 0; i < n; i++) {
        rdtsc();
    }
    printf_("exits: rdtsc %lu ns\n", (rdtsc() - t0) * 1000000 / tsc_khz / n);
    t0 = rdtsc();
    for (uint64_t i = 0; i < n; i++) {
        uint64_t r;
        __asm__ volatile("syscall" : "=a"(r) : "a"(0ull), "D"(1ull)
                         : "rcx", "r11", "rdx", "rsi", "r8", "r9", "r10", "memory");
    }
    printf_("exits: syscall round trip %lu ns\n",
            (rdtsc() - t0) * 1000000 / tsc_khz / n);
}

static void test_bad(VBlk *b)
{
    static const char *const cases[] = {
        "loop", "addr", "indirect", "avail", "head", "qsize", "ring",
    };

    for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (vblk_init(b, 1ull << 28, 0) < 0) {
            fail("bad: init");
        }
        if (vblk_bad(b, cases[i], tsc_khz) < 0) {
            printf_("bad: %s: device did not refuse (status 0x%x)\n",
                    cases[i], vblk_status(b));
            fail("bad");
        }
        printf_("bad: %s: device status 0x%x (NEEDS_RESET)\n", cases[i],
                vblk_status(b));
    }
    /* after a reset the device works again */
    if (vblk_init(b, 0, 0) < 0 || vblk_rw(b, 0, 0, iobuf, 4096) != 0) {
        fail("bad: device unusable after reset");
    }
    printf_("bad: device works after reset\n");
}

static void test_reset_io(VBlk *b)
{
    for (int round = 0; round < 20; round++) {
        if (vblk_init(b, 0, 0) < 0) {
            fail("reset: init");
        }
        vblk_reset_during_io(b, iobuf, 1 << 20);
    }
    if (vblk_init(b, 0, 0) < 0 || vblk_rw(b, 0, 0, iobuf, 4096) != 0) {
        fail("reset: device unusable after resets during I/O");
    }
    printf_("reset: 20 resets during I/O, device works\n");
}

void user_main(uint64_t kind, uint64_t ptr);
void user_main(uint64_t kind, uint64_t ptr)
{
    const char *src;
    uint32_t a, b_, c, d;
    uint64_t r, t0 = rdtsc();
    VBlk blk;

    if (kind == 1) {
        src = (const char *)*(uint64_t *)(ptr + 24);     /* start_info */
    } else {
        src = (const char *)(uint64_t)*(uint32_t *)(ptr + 0x228);
    }
    for (size_t i = 0; src && src[i] && i < sizeof(cmdline) - 1; i++) {
        cmdline[i] = src[i];
    }
    printf_("testos: user mode reached (boot=%s)\n", kind == 1 ? "pvh" : "elf64");
    __asm__ volatile("syscall" : "=a"(r) : "a"(0ull), "D"(41ull)
                     : "rcx", "r11", "rdx", "rsi", "r8", "r9", "r10", "memory");
    if (r != 42) {
        fail("syscall path");
    }
    cpuid(0x40000000, &a, &b_, &c, &d);
    if (a >= 0x40000010) {
        cpuid(0x40000010, &a, &b_, &c, &d);
        tsc_khz = a;
    }
    if (!tsc_khz) {
        tsc_khz = 1000000;
        printf_("testos: no TSC frequency leaf, assuming 1 GHz\n");
    }
    printf_("testos: cmdline '%s' tsc_khz=%lu\n", cmdline, tsc_khz);
    if (want("pci")) {
        list_pci();
    }
    if (want("disk") || want("bench") || want("bad") || want("reset") ||
        want("ro")) {
        if (vblk_find(&blk, 0) < 0) {
            fail("no virtio-blk device");
        }
    }
    if (want("disk")) {
        test_disk(&blk);
    }
    if (want("ro")) {
        test_ro(&blk);
    }
    if (want("bench")) {
        test_bench(&blk);
    }
    if (want("bad")) {
        test_bad(&blk);
    }
    if (want("reset")) {
        test_reset_io(&blk);
    }
    if (want("dirty")) {
        test_dirty();
    }
    if (want("exits")) {
        test_exits();
    }
    if (want("guestreset")) {
        printf_("testos: resetting\n");
        outb(PORT_RESET_CTL, 0x06);
        for (;;) {
        }
    }
    printf_("testos: PASS (%lu ms in user mode)\n", ms_since(t0));
    poweroff();
}
