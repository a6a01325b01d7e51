/*
 * The qtest backend: no CPU at all.  Ferry connects to a unix socket the
 * test listens on and serves QEMU's qtest line protocol (tests/qtest in
 * QEMU documents it): port I/O (outb..inl), memory (readb..readq,
 * writeb..writeq, read/write/b64read/b64write/memset), the virtual clock
 * (clock_step, clock_set) and interrupt interception (irq_intercept_in,
 * then "IRQ raise N"/"IRQ lower N" lines).  vCPU 0's thread runs the
 * protocol, so device code sees the same threads as under KVM.
 */
#include "config.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/error.h"
#include "common/log.h"
#include "cpu/vcpu.h"

#define QTEST_MAX_IRQ 256
#define QTEST_MAX_RW  (16u << 20)     /* largest read/write a test may ask */

typedef struct QtestAccel {
    Accel base;
    int fd;                    /* the test's socket */
    GMutex send_lock;          /* replies and IRQ lines interleave whole */
    bool intercept;            /* irq_intercept_in was given */
    bool irq_level[QTEST_MAX_IRQ];
    uint64_t clock_ns;         /* the virtual clock */
} QtestAccel;

typedef struct QtestVcpu {
    Vcpu base;
    int kick_fd;               /* eventfd: wakes run for a machine request */
    GString *rx;               /* bytes read but not yet a whole line */
} QtestVcpu;

static void qtest_send(QtestAccel *q, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static void qtest_send(QtestAccel *q, const char *fmt, ...)
{
    g_autofree char *line = NULL;
    va_list ap;
    size_t off = 0, len;

    va_start(ap, fmt);
    line = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    len = strlen(line);
    g_mutex_lock(&q->send_lock);
    while (off < len) {
        ssize_t n = send(q->fd, line + off, len - off, MSG_NOSIGNAL);
        if (n <= 0) {
            if (n < 0 && errno == EINTR) {
                continue;
            }
            break;
        }
        off += n;
    }
    g_mutex_unlock(&q->send_lock);
}

static Accel *qtest_create(const AccelConfig *cfg, GError **errp)
{
    QtestAccel *q;
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    const char *path;
    int fd;

    if (!cfg->qtest || !g_str_has_prefix(cfg->qtest, "unix:")) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "--accel qtest needs --qtest unix:PATH");
        return NULL;
    }
    path = cfg->qtest + 5;
    if (strlen(path) >= sizeof(sa.sun_path)) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "qtest socket path '%s' is too long", path);
        return NULL;
    }
    strcpy(sa.sun_path, path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        ferry_error_setg_errno(errp, errno, "qtest: cannot connect to '%s'",
                               path);
        if (fd >= 0) {
            close(fd);
        }
        return NULL;
    }
    q = g_new0(QtestAccel, 1);
    q->base.ops = &qtest_accel_ops;
    q->base.cfg = *cfg;
    q->fd = fd;
    g_mutex_init(&q->send_lock);
    return &q->base;
}

static bool qtest_map_ram(Accel *a, int slot, uint64_t gpa, uint64_t size,
                          void *hva, GError **errp)
{
    return true;     /* memory commands go through the machine's CpuBus */
}

static Vcpu *qtest_vcpu_create(Accel *a, int index, GError **errp)
{
    QtestVcpu *v = g_new0(QtestVcpu, 1);

    v->base.accel = a;
    v->base.index = index;
    v->kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    v->rx = g_string_new(NULL);
    return &v->base;
}

static void qtest_vcpu_destroy(Vcpu *vb)
{
    QtestVcpu *v = (QtestVcpu *)vb;

    close(v->kick_fd);
    g_string_free(v->rx, TRUE);
    g_free(v);
}

static void qtest_vcpu_kick(Vcpu *vb)
{
    QtestVcpu *v = (QtestVcpu *)vb;
    uint64_t one = 1;

    if (write(v->kick_fd, &one, sizeof(one)) < 0) {
        FERRY_TRACE_POINT(CPU, "qtest kick failed errno=%d", errno);
    }
}

/* -- memory helpers ------------------------------------------------------ */

static void mem_rw(QtestAccel *q, uint64_t gpa, uint8_t *buf, uint64_t len,
                   bool is_write)
{
    const CpuBus *bus = &q->base.cfg.bus;

    while (len > 0) {
        uint8_t *hva = bus->ram_ptr(bus->opaque, gpa, 1);
        if (hva) {
            /* largest RAM run from gpa within len, by halving */
            uint64_t n = len;
            while (!bus->ram_ptr(bus->opaque, gpa, n)) {
                n /= 2;
            }
            if (is_write) {
                memcpy(hva, buf, n);
            } else {
                memcpy(buf, hva, n);
            }
            buf += n;
            gpa += n;
            len -= n;
        } else {
            bus->mmio(bus->opaque, gpa, buf, 1, is_write);
            buf++;
            gpa++;
            len--;
        }
    }
}

static bool parse_u64(const char *s, uint64_t *out)
{
    char *end;

    if (!s || !*s) {
        return false;
    }
    errno = 0;
    *out = strtoull(s, &end, 0);
    return errno == 0 && *end == '\0';
}

static void cmd_read_buf(QtestAccel *q, uint64_t addr, uint64_t size, bool b64)
{
    g_autofree uint8_t *buf = g_malloc(size ? size : 1);
    g_autofree char *enc = NULL;

    mem_rw(q, addr, buf, size, false);
    if (b64) {
        enc = g_base64_encode(buf, size);
        qtest_send(q, "OK %s\n", enc);
        return;
    }
    enc = g_malloc(2 * size + 1);
    for (uint64_t i = 0; i < size; i++) {
        snprintf(enc + 2 * i, 3, "%02x", buf[i]);
    }
    enc[2 * size] = '\0';
    qtest_send(q, "OK 0x%s\n", enc);
}

static bool cmd_write_buf(QtestAccel *q, uint64_t addr, uint64_t size,
                          const char *data, bool b64)
{
    g_autofree uint8_t *buf = g_malloc0(size ? size : 1);

    if (b64) {
        gsize n = 0;
        g_autofree guchar *dec = g_base64_decode(data, &n);
        memcpy(buf, dec, MIN(n, size));
    } else {
        size_t hex;
        if (!g_str_has_prefix(data, "0x")) {
            return false;
        }
        data += 2;
        hex = strlen(data);
        for (uint64_t i = 0; i < size && 2 * i + 1 < hex; i++) {
            char b[3] = { data[2 * i], data[2 * i + 1], 0 };
            if (!g_ascii_isxdigit(b[0]) || !g_ascii_isxdigit(b[1])) {
                return false;
            }
            buf[i] = (uint8_t)strtoul(b, NULL, 16);
        }
    }
    mem_rw(q, addr, buf, size, true);
    return true;
}

static unsigned access_size(char c)
{
    switch (c) {
    case 'b': return 1;
    case 'w': return 2;
    case 'l': return 4;
    case 'q': return 8;
    }
    return 0;
}

/* Run one command line; returns false if the test asked for nothing valid. */
static void qtest_command(QtestAccel *q, char **w)
{
    const CpuBus *bus = &q->base.cfg.bus;
    const char *c = w[0];
    uint64_t a = 0, b = 0;
    unsigned size;

    if (!c) {
        return;
    }
    if ((g_str_has_prefix(c, "out") || g_str_has_prefix(c, "in")) &&
        strlen(c) == (c[0] == 'o' ? 4u : 3u)) {
        bool out = c[0] == 'o';
        uint8_t data[4] = { 0 };
        size = access_size(c[out ? 3 : 2]);
        if (!size || size > 4 || !parse_u64(w[1], &a) || a > 0xffff ||
            (out && !parse_u64(w[2], &b))) {
            qtest_send(q, "FAIL bad arguments\n");
            return;
        }
        memcpy(data, &b, size);
        bus->pio(bus->opaque, (uint16_t)a, data, size, out);
        if (out) {
            qtest_send(q, "OK\n");
        } else {
            uint32_t v = 0;
            memcpy(&v, data, size);
            qtest_send(q, "OK 0x%04x\n", v);
        }
    } else if ((g_str_has_prefix(c, "read") || g_str_has_prefix(c, "write")) &&
               strlen(c) == (c[0] == 'r' ? 5u : 6u)) {
        bool wr = c[0] == 'w';
        uint8_t data[8] = { 0 };
        size = access_size(c[wr ? 5 : 4]);
        if (!size || !parse_u64(w[1], &a) || (wr && !parse_u64(w[2], &b))) {
            qtest_send(q, "FAIL bad arguments\n");
            return;
        }
        memcpy(data, &b, size);
        if (bus->ram_ptr(bus->opaque, a, size)) {
            mem_rw(q, a, data, size, wr);
        } else {
            bus->mmio(bus->opaque, a, data, size, wr);   /* one access */
        }
        if (wr) {
            qtest_send(q, "OK\n");
        } else {
            uint64_t v = 0;
            memcpy(&v, data, size);
            qtest_send(q, "OK 0x%016" G_GINT64_MODIFIER "x\n", v);
        }
    } else if (!strcmp(c, "read") || !strcmp(c, "b64read")) {
        if (!parse_u64(w[1], &a) || !parse_u64(w[2], &b) || b > QTEST_MAX_RW) {
            qtest_send(q, "FAIL bad arguments\n");
            return;
        }
        cmd_read_buf(q, a, b, c[0] == 'b');
    } else if (!strcmp(c, "write") || !strcmp(c, "b64write")) {
        if (!parse_u64(w[1], &a) || !parse_u64(w[2], &b) || b > QTEST_MAX_RW ||
            !w[3] || !cmd_write_buf(q, a, b, w[3], c[0] == 'b')) {
            qtest_send(q, "FAIL bad arguments\n");
            return;
        }
        qtest_send(q, "OK\n");
    } else if (!strcmp(c, "memset")) {
        uint64_t v;
        if (!parse_u64(w[1], &a) || !parse_u64(w[2], &b) || b > QTEST_MAX_RW ||
            !parse_u64(w[3], &v)) {
            qtest_send(q, "FAIL bad arguments\n");
            return;
        }
        g_autofree uint8_t *buf = g_malloc(b ? b : 1);
        memset(buf, (int)v, b);
        mem_rw(q, a, buf, b, true);
        qtest_send(q, "OK\n");
    } else if (!strcmp(c, "clock_step")) {
        if (w[1] && !parse_u64(w[1], &a)) {
            qtest_send(q, "FAIL bad arguments\n");
            return;
        }
        /* no timers are armed by ferry's devices: a step is just time */
        q->clock_ns += w[1] ? a : 1000000;
        qtest_send(q, "OK %" G_GINT64_MODIFIER "u\n", q->clock_ns);
    } else if (!strcmp(c, "clock_set")) {
        if (!parse_u64(w[1], &a)) {
            qtest_send(q, "FAIL bad arguments\n");
            return;
        }
        q->clock_ns = MAX(q->clock_ns, a);
        qtest_send(q, "OK %" G_GINT64_MODIFIER "u\n", q->clock_ns);
    } else if (!strcmp(c, "irq_intercept_in") ||
               !strcmp(c, "irq_intercept_out")) {
        if (!w[1]) {
            qtest_send(q, "FAIL Unknown device\n");
            return;
        }
        q->intercept = true;
        qtest_send(q, "OK\n");
    } else if (!strcmp(c, "endianness")) {
        qtest_send(q, "OK little\n");
    } else {
        qtest_send(q, "FAIL Unknown command '%s'\n", c);
    }
}

static VcpuExit qtest_vcpu_run(Vcpu *vb, GError **errp)
{
    QtestVcpu *v = (QtestVcpu *)vb;
    QtestAccel *q = (QtestAccel *)vb->accel;
    struct pollfd fds[2] = {
        { .fd = v->kick_fd, .events = POLLIN },
        { .fd = q->fd, .events = POLLIN },
    };
    uint64_t cnt;
    char buf[4096];

    for (;;) {
        char *nl;
        if (read(v->kick_fd, &cnt, sizeof(cnt)) > 0) {
            return VCPU_EXIT_KICKED;
        }
        /* run whole lines we already hold before reading more */
        while (vb->index == 0 && (nl = memchr(v->rx->str, '\n', v->rx->len))) {
            g_autofree char *line = g_strndup(v->rx->str, nl - v->rx->str);
            g_auto(GStrv) words = NULL;
            g_string_erase(v->rx, 0, nl - v->rx->str + 1);
            g_strstrip(line);
            words = g_strsplit_set(line, " ", -1);
            FERRY_TRACE_POINT(CPU, "qtest cmd=\"%s\"", line);
            qtest_command(q, words);
            if (read(v->kick_fd, &cnt, sizeof(cnt)) > 0) {
                return VCPU_EXIT_KICKED;
            }
        }
        if (poll(fds, vb->index == 0 ? 2 : 1, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            ferry_error_setg_errno(errp, errno, "qtest: poll");
            return VCPU_EXIT_ERROR;
        }
        if (vb->index == 0 && fds[1].revents) {
            ssize_t n = recv(q->fd, buf, sizeof(buf), 0);
            if (n <= 0) {
                if (n < 0 && errno == EINTR) {
                    continue;
                }
                return VCPU_EXIT_POWEROFF;   /* the test hung up: done */
            }
            g_string_append_len(v->rx, buf, n);
        }
    }
}

static bool qtest_get_state(Vcpu *v, X86CpuState *s, GError **errp)
{
    x86_state_reset(s, v->index);
    return true;
}

static bool qtest_set_state(Vcpu *v, const X86CpuState *s, GError **errp)
{
    return true;     /* no CPU to load */
}

static void qtest_set_irq(Accel *a, int gsi, bool level)
{
    QtestAccel *q = (QtestAccel *)a;

    if (gsi < 0 || gsi >= QTEST_MAX_IRQ || !q->intercept ||
        q->irq_level[gsi] == level) {
        return;
    }
    q->irq_level[gsi] = level;
    qtest_send(q, "IRQ %s %d\n", level ? "raise" : "lower", gsi);
}

/*
 * An MSI is a memory write of data at addr.  Without a LAPIC the write
 * lands in RAM when the test pointed the vector there (as QEMU's libqos
 * does), so the test polls memory for it.
 */
static void qtest_signal_msi(Accel *a, uint64_t addr, uint32_t data)
{
    QtestAccel *q = (QtestAccel *)a;
    const CpuBus *bus = &q->base.cfg.bus;
    uint8_t *p = bus->ram_ptr(bus->opaque, addr, 4);

    if (p) {
        __atomic_store_n((uint32_t *)p, data, __ATOMIC_RELEASE);
    }
}

static void qtest_destroy(Accel *a)
{
    QtestAccel *q = (QtestAccel *)a;

    close(q->fd);
    g_mutex_clear(&q->send_lock);
    g_free(q);
}

const AccelOps qtest_accel_ops = {
    .name           = "qtest",
    .create         = qtest_create,
    .map_ram        = qtest_map_ram,
    .vcpu_create    = qtest_vcpu_create,
    .vcpu_run       = qtest_vcpu_run,
    .vcpu_kick      = qtest_vcpu_kick,
    .vcpu_get_state = qtest_get_state,
    .vcpu_set_state = qtest_set_state,
    .vcpu_destroy   = qtest_vcpu_destroy,
    .set_irq        = qtest_set_irq,
    .signal_msi     = qtest_signal_msi,
    .destroy        = qtest_destroy,
};
