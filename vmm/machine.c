/*
 * The machine: RAM, platform devices, vCPU threads and the life cycle
 * described in vmm/machine.h.  The main thread runs a glib main loop
 * (serial input, signals, QMP) and makes every state transition; vCPU
 * threads run the accelerator and park when the main thread holds them.
 */
#include "config.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <glib-unix.h>

#include "blockdev/backend.h"
#include "common/error.h"
#include "common/log.h"
#include "cpu/vcpu.h"
#include "devices/pci.h"
#include "devices/serial.h"
#include "devices/virtio-blk.h"
#include "devices/virtio-pci.h"
#include "devices/virtio-rng.h"
#include "vmm/chardev.h"
#include "vmm/machine.h"

#define LOW_RAM_MAX   0xc0000000ull      /* the PCI hole starts here */
#define HIGH_RAM_BASE (4ull << 30)

typedef struct MachineDrive {
    VmmDriveConf *conf;
    BlockBackend *blk;
    VirtioBlk *dev;
    VirtioPci *pci;
} MachineDrive;

struct Machine {
    VmmConfig cfg;
    const AccelOps *ops;
    Accel *accel;
    int nr_vcpus;
    Vcpu **vcpus;
    GThread **threads;

    int memfd;
    uint8_t *ram;
    uint64_t ram_bytes, low_bytes, high_bytes;

    DevBus bus;
    PciBus *pci;
    Serial *serial;
    Chardev *chr;
    GPtrArray *drives;                 /* MachineDrive* */
    VirtioRng *rng;
    VirtioPci *rng_pci;
    IoRegion pm_region;                /* 0x600: sleep control (S5) */
    IoRegion kbd_region;               /* 0x64: i8042 command (reset) */

    X86CpuState boot_state;
    BootInfo boot_info;

    GMutex lock;                       /* everything below */
    GCond cond;
    int hold;                          /* >0: vCPUs must park */
    int parked;                        /* vCPUs parked now */
    bool user_paused;                  /* QMP stop */
    bool quit;                         /* vCPU threads exit */
    VmmRequest pending;                /* being handled by the main thread */
    char *pending_msg;
    VmmRequest deferred;               /* arrived while pending was busy */
    char *deferred_msg;
    int exit_code;

    GMainLoop *loop;
    guint sig_int, sig_term;
};

/* -- wiring: accelerator <-> bus ----------------------------------------- */

static void bus_pio(void *opaque, uint16_t port, uint8_t *data, unsigned size,
                    bool is_write)
{
    Machine *m = opaque;
    dev_bus_access(&m->bus, true, port, data, size, is_write);
}

static void bus_mmio(void *opaque, uint64_t gpa, uint8_t *data, unsigned size,
                     bool is_write)
{
    Machine *m = opaque;
    dev_bus_access(&m->bus, false, gpa, data, size, is_write);
}

static void *bus_ram_ptr(void *opaque, uint64_t gpa, uint64_t len)
{
    Machine *m = opaque;
    return dev_bus_ram_ptr(&m->bus, gpa, len);
}

static void irq_set(void *opaque, int gsi, bool level)
{
    Machine *m = opaque;
    m->ops->set_irq(m->accel, gsi, level);
}

static void irq_msi(void *opaque, uint64_t addr, uint32_t data)
{
    Machine *m = opaque;
    m->ops->signal_msi(m->accel, addr, data);
}

static bool add_ioeventfd(void *opaque, uint64_t gpa, unsigned len, int fd)
{
    Machine *m = opaque;
    return m->ops->add_ioeventfd && m->ops->add_ioeventfd(m->accel, gpa, len, fd);
}

static void del_ioeventfd(void *opaque, uint64_t gpa, unsigned len, int fd)
{
    Machine *m = opaque;
    if (m->ops->del_ioeventfd) {
        m->ops->del_ioeventfd(m->accel, gpa, len, fd);
    }
}

/* -- platform ports: power off and reset ---------------------------------- */

static uint64_t pm_read(void *opaque, uint64_t off, unsigned size)
{
    return 0;
}

/* ACPI hardware-reduced sleep control: SLP_EN (bit 5) with SLP_TYP 5 = S5. */
static void pm_write(void *opaque, uint64_t off, uint64_t val, unsigned size)
{
    Machine *m = opaque;

    if ((val & 0x20) && ((val >> 2) & 7) == 5) {
        vmm_machine_request(m, VMM_REQ_POWEROFF, NULL);
    }
}

static const IoOps pm_ops = { .read = pm_read, .write = pm_write };

static uint64_t kbd_read(void *opaque, uint64_t off, unsigned size)
{
    return 0xff;      /* as if no controller: Linux skips the i8042 */
}

static void kbd_write(void *opaque, uint64_t off, uint64_t val, unsigned size)
{
    if ((val & 0xff) == 0xfe) {
        vmm_machine_request(opaque, VMM_REQ_RESET, "i8042 reset");
    }
}

static const IoOps kbd_ops = { .read = kbd_read, .write = kbd_write };

static void rcr_write(void *opaque, uint8_t v)
{
    if (v & 0x04) {
        vmm_machine_request(opaque, VMM_REQ_RESET, "reset control register");
    }
}

static void serial_out(void *opaque, const uint8_t *buf, size_t len)
{
    chardev_write(opaque, buf, len);
}

static void serial_in(void *opaque, const uint8_t *buf, size_t len)
{
    serial_receive(opaque, buf, len);
}

/* -- vCPU threads and holding them ---------------------------------------- */

typedef struct VcpuThread {
    Machine *m;
    Vcpu *v;
} VcpuThread;

static gpointer vcpu_thread(gpointer opaque)
{
    VcpuThread *t = opaque;
    Machine *m = t->m;
    bool wait_request = false;   /* we posted a request: let it be handled */

    for (;;) {
        GError *err = NULL;
        VcpuExit e;

        g_mutex_lock(&m->lock);
        while (!m->quit && (m->hold > 0 ||
                            (wait_request && m->pending != VMM_REQ_NONE))) {
            m->parked++;
            g_cond_broadcast(&m->cond);
            g_cond_wait(&m->cond, &m->lock);
            m->parked--;
        }
        if (m->quit) {
            g_mutex_unlock(&m->lock);
            break;
        }
        g_mutex_unlock(&m->lock);

        e = m->ops->vcpu_run(t->v, &err);
        wait_request = e != VCPU_EXIT_KICKED;
        switch (e) {
        case VCPU_EXIT_KICKED:
            break;
        case VCPU_EXIT_SHUTDOWN:
            vmm_machine_request(m, VMM_REQ_RESET, "triple fault");
            break;
        case VCPU_EXIT_RESET:
            vmm_machine_request(m, VMM_REQ_RESET, "guest reset");
            break;
        case VCPU_EXIT_POWEROFF:
            vmm_machine_request(m, VMM_REQ_POWEROFF, NULL);
            break;
        case VCPU_EXIT_ERROR:
            vmm_machine_request(m, VMM_REQ_ERROR, err ? err->message : NULL);
            break;
        }
        g_clear_error(&err);
    }
    g_free(t);
    return NULL;
}

static void kick_all(Machine *m)
{
    for (int i = 0; i < m->nr_vcpus; i++) {
        m->ops->vcpu_kick(m->vcpus[i]);
    }
}

/* Main thread: stop every vCPU and wait until all are parked. */
static void hold_all(Machine *m)
{
    g_mutex_lock(&m->lock);
    m->hold++;
    g_mutex_unlock(&m->lock);
    kick_all(m);
    g_mutex_lock(&m->lock);
    while (m->parked < m->nr_vcpus) {
        gint64 deadline = g_get_monotonic_time() + 10 * G_TIME_SPAN_MILLISECOND;
        if (!g_cond_wait_until(&m->cond, &m->lock, deadline)) {
            g_mutex_unlock(&m->lock);
            kick_all(m);          /* a kick can race with entering the guest */
            g_mutex_lock(&m->lock);
        }
    }
    g_mutex_unlock(&m->lock);
}

static void release_all(Machine *m)
{
    g_mutex_lock(&m->lock);
    m->hold--;
    g_cond_broadcast(&m->cond);
    g_mutex_unlock(&m->lock);
}

void vmm_machine_stop(Machine *m)
{
    if (!m->user_paused) {
        hold_all(m);
        m->user_paused = true;
    }
}

void vmm_machine_cont(Machine *m)
{
    if (m->user_paused) {
        m->user_paused = false;
        release_all(m);
    }
}

bool vmm_machine_running(Machine *m)
{
    return !m->user_paused;
}

/* -- booting and resetting ------------------------------------------------ */

static bool load_and_set_cpus(Machine *m, GError **errp)
{
    BootParams bp = {
        .kernel = m->cfg.kernel, .initrd = m->cfg.initrd,
        .cmdline = m->cfg.append, .protocol = m->cfg.boot,
        .low_ram_bytes = m->low_bytes, .high_ram_bytes = m->high_bytes,
    };

    if (m->cfg.kernel) {
        if (!boot_load(&m->bus, &bp, &m->boot_state, &m->boot_info, errp)) {
            return false;
        }
        FERRY_TRACE_POINT(VMM, "boot protocol=%s entry=0x%" G_GINT64_MODIFIER
                          "x kernel=0x%" G_GINT64_MODIFIER "x-0x%"
                          G_GINT64_MODIFIER "x initrd=0x%" G_GINT64_MODIFIER
                          "x+0x%" G_GINT64_MODIFIER "x",
                          boot_protocol_name(m->boot_info.protocol),
                          m->boot_info.entry, m->boot_info.kernel_start,
                          m->boot_info.kernel_end, m->boot_info.initrd_gpa,
                          m->boot_info.initrd_bytes);
    } else {
        x86_state_reset(&m->boot_state, 0);
    }
    for (int i = 0; i < m->nr_vcpus; i++) {
        X86CpuState s;
        const X86CpuState *st = &m->boot_state;
        if (i > 0) {
            x86_state_reset(&s, i);
            st = &s;
        }
        if (!m->ops->vcpu_set_state(m->vcpus[i], st, errp)) {
            return false;
        }
    }
    return true;
}

static void machine_reset(Machine *m, const char *why)
{
    GError *err = NULL;

    ferry_info("machine reset (%s)", why ? why : "requested");
    hold_all(m);
    for (guint i = 0; i < m->drives->len; i++) {
        MachineDrive *d = g_ptr_array_index(m->drives, i);
        virtio_pci_reset(d->pci);
        blk_flush(d->blk);
    }
    if (m->rng_pci) {
        virtio_pci_reset(m->rng_pci);
    }
    serial_reset(m->serial);
    if (!load_and_set_cpus(m, &err)) {
        ferry_error_report("reset failed: %s", err->message);
        g_error_free(err);
        m->exit_code = VMM_EXIT_FAILURE;
        g_mutex_lock(&m->lock);
        m->quit = true;
        g_cond_broadcast(&m->cond);
        g_mutex_unlock(&m->lock);
        g_main_loop_quit(m->loop);
    }
    release_all(m);
}

static void machine_shutdown(Machine *m, int code)
{
    m->exit_code = code;
    g_mutex_lock(&m->lock);
    m->quit = true;
    g_cond_broadcast(&m->cond);
    g_mutex_unlock(&m->lock);
    kick_all(m);
    g_main_loop_quit(m->loop);
}

static gboolean handle_request(gpointer opaque)
{
    Machine *m = opaque;
    VmmRequest req;
    g_autofree char *msg = NULL;

    g_mutex_lock(&m->lock);
    req = m->pending;
    msg = m->pending_msg;
    m->pending_msg = NULL;
    g_mutex_unlock(&m->lock);

    switch (req) {
    case VMM_REQ_NONE:
        break;
    case VMM_REQ_RESET:
        if (m->cfg.no_reboot) {
            ferry_info("guest reset (%s): exiting (--no-reboot)",
                       msg ? msg : "requested");
            machine_shutdown(m, VMM_EXIT_RESET);
        } else {
            machine_reset(m, msg);
        }
        break;
    case VMM_REQ_POWEROFF:
    case VMM_REQ_QUIT:
        machine_shutdown(m, VMM_EXIT_POWEROFF);
        break;
    case VMM_REQ_ERROR:
        ferry_error_report("%s", msg ? msg : "guest error");
        machine_shutdown(m, VMM_EXIT_GUEST_ERROR);
        break;
    case VMM_REQ_SIGNAL:
        ferry_info("terminating on signal");
        machine_shutdown(m, VMM_EXIT_SIGNAL);
        break;
    }
    g_mutex_lock(&m->lock);
    m->pending = m->quit ? VMM_REQ_NONE : m->deferred;
    m->pending_msg = m->deferred_msg;
    m->deferred = VMM_REQ_NONE;
    m->deferred_msg = NULL;
    g_cond_broadcast(&m->cond);
    g_mutex_unlock(&m->lock);
    return m->pending != VMM_REQ_NONE ? G_SOURCE_CONTINUE : G_SOURCE_REMOVE;
}

void vmm_machine_request(Machine *m, VmmRequest req, const char *msg)
{
    bool post = false;

    g_mutex_lock(&m->lock);
    /*
     * One request in hand, one waiting: a guest that resets again right
     * after a reset is not lost; more requests meanwhile are duplicates.
     */
    if (m->quit) {
        /* shutting down: nothing more to do */
    } else if (m->pending == VMM_REQ_NONE) {
        m->pending = req;
        g_free(m->pending_msg);
        m->pending_msg = g_strdup(msg);
        post = true;
    } else if (m->deferred == VMM_REQ_NONE) {
        m->deferred = req;
        m->deferred_msg = g_strdup(msg);
    }
    g_mutex_unlock(&m->lock);
    if (post) {
        g_idle_add(handle_request, m);
    }
}

static gboolean on_signal(gpointer opaque)
{
    vmm_machine_request(opaque, VMM_REQ_SIGNAL, NULL);
    return G_SOURCE_CONTINUE;
}

/* -- building the machine --------------------------------------------------- */

static bool alloc_ram(Machine *m, GError **errp)
{
    m->ram_bytes = m->cfg.ram_bytes;
    m->low_bytes = MIN(m->ram_bytes, LOW_RAM_MAX);
    m->high_bytes = m->ram_bytes - m->low_bytes;
    m->memfd = memfd_create("ferry-ram", MFD_CLOEXEC);
    if (m->memfd < 0 || ftruncate(m->memfd, m->ram_bytes) < 0) {
        ferry_error_setg_errno(errp, errno, "guest RAM (%" G_GUINT64_FORMAT
                               " bytes) in a memfd", m->ram_bytes);
        return false;
    }
    m->ram = mmap(NULL, m->ram_bytes, PROT_READ | PROT_WRITE,
                  MAP_SHARED | MAP_NORESERVE, m->memfd, 0);
    if (m->ram == MAP_FAILED) {
        m->ram = NULL;
        ferry_error_setg_errno(errp, errno, "mapping guest RAM");
        return false;
    }
    dev_bus_add_ram(&m->bus, 0, m->low_bytes, m->ram);
    if (!m->ops->map_ram(m->accel, 0, 0, m->low_bytes, m->ram, errp)) {
        return false;
    }
    if (m->high_bytes) {
        dev_bus_add_ram(&m->bus, HIGH_RAM_BASE, m->high_bytes,
                        m->ram + m->low_bytes);
        if (!m->ops->map_ram(m->accel, 1, HIGH_RAM_BASE, m->high_bytes,
                             m->ram + m->low_bytes, errp)) {
            return false;
        }
    }
    return true;
}

static bool add_drive(Machine *m, VmmDriveConf *dc, int index, GError **errp)
{
    MachineDrive *d = g_new0(MachineDrive, 1);
    uint32_t flags = dc->read_only ? 0 : BLOCK_O_RDWR;
    VirtioBlkConf bc;
    int nq = dc->num_queues ? dc->num_queues : MIN(m->nr_vcpus, 16);

    if (dc->cache_unsafe) {
        flags |= BLOCK_O_NO_FLUSH;
    }
    if (dc->direct) {
        flags |= BLOCK_O_NOCACHE;
    }
    if (!dc->id) {
        dc->id = g_strdup_printf("disk%d", index);
    }
    d->conf = dc;
    g_ptr_array_add(m->drives, d);
    d->blk = blk_open(dc->spec, dc->format, NULL, flags, errp);
    if (!d->blk) {
        g_prefix_error(errp, "--drive %s: ", dc->spec);
        return false;
    }
    bc = (VirtioBlkConf){ .blk = d->blk, .read_only = dc->read_only,
                          .num_queues = nq, .queue_size = dc->queue_size,
                          .serial = dc->serial ? dc->serial : dc->id };
    d->dev = virtio_blk_new(&m->bus, &bc, errp);
    if (!d->dev) {
        return false;
    }
    d->pci = virtio_pci_new(m->pci, virtio_blk_vdev(d->dev), errp);
    return d->pci != NULL;
}

static bool build_devices(Machine *m, GError **errp)
{
    m->chr = chardev_open(m->cfg.serial ? m->cfg.serial : "stdio", errp);
    if (!m->chr) {
        return false;
    }
    m->serial = serial_new(&m->bus, 0x3f8, 4, serial_out, m->chr);
    chardev_set_input(m->chr, serial_in, m->serial);
    m->pci = pci_bus_new(&m->bus);
    pci_bus_set_reset_hook(m->pci, rcr_write, m);
    m->pm_region = (IoRegion){ .name = "pm-sleep", .size = 1, .ops = &pm_ops,
                               .opaque = m, .pio = true };
    dev_bus_map(&m->bus, &m->pm_region, 0x600);
    m->kbd_region = (IoRegion){ .name = "i8042", .size = 1, .ops = &kbd_ops,
                                .opaque = m, .pio = true };
    dev_bus_map(&m->bus, &m->kbd_region, 0x64);
    for (guint i = 0; m->cfg.drives && i < m->cfg.drives->len; i++) {
        if (!add_drive(m, g_ptr_array_index(m->cfg.drives, i), i, errp)) {
            return false;
        }
    }
    if (m->cfg.rng) {
        m->rng = virtio_rng_new(&m->bus);
        m->rng_pci = virtio_pci_new(m->pci, virtio_rng_vdev(m->rng), errp);
        if (!m->rng_pci) {
            return false;
        }
    }
    pci_bus_assign_bars(m->pci);
    return true;
}

Machine *vmm_machine_new(const VmmConfig *cfg, GError **errp)
{
    Machine *m = g_new0(Machine, 1);
    AccelConfig ac;

    m->cfg = *cfg;
    m->memfd = -1;
    m->nr_vcpus = cfg->smp > 0 ? cfg->smp : 1;
    m->drives = g_ptr_array_new();
    g_mutex_init(&m->lock);
    g_cond_init(&m->cond);
    dev_bus_init(&m->bus);
    m->bus.irq_opaque = m;
    m->bus.set_irq = irq_set;
    m->bus.signal_msi = irq_msi;
    m->bus.add_ioeventfd = add_ioeventfd;
    m->bus.del_ioeventfd = del_ioeventfd;
    m->loop = g_main_loop_new(NULL, FALSE);

    m->ops = accel_find(cfg->accel ? cfg->accel : "kvm", errp);
    if (!m->ops) {
        goto fail;
    }
    if (!strcmp(m->ops->name, "kvm") && !cfg->kernel) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "--accel kvm needs --kernel (ferry has no firmware)");
        goto fail;
    }
    ac = (AccelConfig){
        .smp = m->nr_vcpus, .qtest = cfg->qtest,
        .cpuid_baseline = cfg->cpuid_baseline,
        .bus = { .opaque = m, .pio = bus_pio, .mmio = bus_mmio,
                 .ram_ptr = bus_ram_ptr },
    };
    m->accel = m->ops->create(&ac, errp);
    if (!m->accel || !alloc_ram(m, errp) || !build_devices(m, errp)) {
        goto fail;
    }
    m->vcpus = g_new0(Vcpu *, m->nr_vcpus);
    for (int i = 0; i < m->nr_vcpus; i++) {
        m->vcpus[i] = m->ops->vcpu_create(m->accel, i, errp);
        if (!m->vcpus[i]) {
            goto fail;
        }
    }
    if (!load_and_set_cpus(m, errp)) {
        goto fail;
    }
    return m;

fail:
    vmm_machine_free(m);
    return NULL;
}

int vmm_machine_run(Machine *m)
{
    m->threads = g_new0(GThread *, m->nr_vcpus);
    m->sig_int = g_unix_signal_add(SIGINT, on_signal, m);
    m->sig_term = g_unix_signal_add(SIGTERM, on_signal, m);
    for (int i = 0; i < m->nr_vcpus; i++) {
        VcpuThread *t = g_new0(VcpuThread, 1);
        g_autofree char *name = g_strdup_printf("vcpu%d", i);
        t->m = m;
        t->v = m->vcpus[i];
        m->threads[i] = g_thread_new(name, vcpu_thread, t);
    }
    g_main_loop_run(m->loop);
    /* quit is set and every vCPU kicked (immediate_exit covers the race) */
    kick_all(m);
    for (int i = 0; i < m->nr_vcpus; i++) {
        g_thread_join(m->threads[i]);
    }
    g_free(m->threads);
    m->threads = NULL;
    return m->exit_code;
}

void vmm_machine_free(Machine *m)
{
    if (!m) {
        return;
    }
    if (m->sig_int) {
        g_source_remove(m->sig_int);
        g_source_remove(m->sig_term);
    }
    for (guint i = 0; i < m->drives->len; i++) {
        MachineDrive *d = g_ptr_array_index(m->drives, i);
        if (d->pci) {
            virtio_pci_free(d->pci);
        }
        virtio_blk_free(d->dev);
        if (d->blk) {
            blk_flush(d->blk);
            blk_unref(d->blk);
        }
        g_free(d);
    }
    g_ptr_array_free(m->drives, TRUE);
    if (m->rng_pci) {
        virtio_pci_free(m->rng_pci);
    }
    virtio_rng_free(m->rng);
    serial_free(m->serial);
    chardev_close(m->chr);
    pci_bus_free(m->pci);
    for (int i = 0; m->vcpus && i < m->nr_vcpus; i++) {
        if (m->vcpus[i]) {
            m->ops->vcpu_destroy(m->vcpus[i]);
        }
    }
    g_free(m->vcpus);
    if (m->accel) {
        m->ops->destroy(m->accel);
    }
    if (m->ram) {
        munmap(m->ram, m->ram_bytes);
    }
    if (m->memfd >= 0) {
        close(m->memfd);
    }
    dev_bus_destroy(&m->bus);
    g_main_loop_unref(m->loop);
    g_free(m->pending_msg);
    g_free(m->deferred_msg);
    g_mutex_clear(&m->lock);
    g_cond_clear(&m->cond);
    g_free(m);
}
