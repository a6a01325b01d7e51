/*
 * 16550A UART: eight registers, a 16-byte receive FIFO, transmit that is
 * always instantly done (THR empty), interrupts for received data and THR
 * empty on one ISA line.  Follows the National Semiconductor PC16550D data
 * sheet (register map, IIR priorities); modem lines read as "connected".
 */
#include "config.h"

#include <string.h>

#include "devices/serial.h"

#define UART_FIFO 16

#define IER_RDI   0x01   /* received data available */
#define IER_THRI  0x02   /* THR empty */
#define LCR_DLAB  0x80
#define MCR_OUT2  0x08
#define MCR_LOOP  0x10
#define LSR_DR    0x01
#define LSR_OE    0x02
#define LSR_THRE  0x20
#define LSR_TEMT  0x40
#define IIR_NONE  0x01
#define IIR_THRI  0x02
#define IIR_RDI   0x04
#define FCR_ENABLE 0x01
#define FCR_CLR_RX 0x02

typedef struct SerialRegs {
    uint8_t ier, lcr, mcr, lsr, msr, scr, fcr, dll, dlm;
    uint8_t rx_fifo[UART_FIFO];
    uint8_t rx_head, rx_count;
    bool thr_pending;      /* THR-empty interrupt not yet acknowledged */
    bool irq_level;
} SerialRegs;

struct Serial {
    SerialRegs r;          /* guarded by lock */
    GMutex lock;
    DevBus *bus;
    int irq;
    IoRegion region;
    SerialOutput out;
    void *out_opaque;
};

const VmStateDesc serial_vmstate = {
    .name = "serial",
    .version = 1,
    .min_version = 1,
    .fields = (const VmStateField[]) {
        VMSTATE_U8_FIELD(SerialRegs, ier),
        VMSTATE_U8_FIELD(SerialRegs, lcr),
        VMSTATE_U8_FIELD(SerialRegs, mcr),
        VMSTATE_U8_FIELD(SerialRegs, lsr),
        VMSTATE_U8_FIELD(SerialRegs, msr),
        VMSTATE_U8_FIELD(SerialRegs, scr),
        VMSTATE_U8_FIELD(SerialRegs, fcr),
        VMSTATE_U8_FIELD(SerialRegs, dll),
        VMSTATE_U8_FIELD(SerialRegs, dlm),
        VMSTATE_BYTES_FIELD(SerialRegs, rx_fifo, UART_FIFO),
        VMSTATE_U8_FIELD(SerialRegs, rx_head),
        VMSTATE_U8_FIELD(SerialRegs, rx_count),
        VMSTATE_BOOL_FIELD(SerialRegs, thr_pending),
        VMSTATE_BOOL_FIELD(SerialRegs, irq_level),
        VMSTATE_END,
    },
};

static uint8_t serial_iir_locked(Serial *s)
{
    uint8_t fifo = (s->r.fcr & FCR_ENABLE) ? 0xc0 : 0;

    if ((s->r.ier & IER_RDI) && s->r.rx_count) {
        return IIR_RDI | fifo;
    }
    if ((s->r.ier & IER_THRI) && s->r.thr_pending) {
        return IIR_THRI | fifo;
    }
    return IIR_NONE | fifo;
}

/* Recompute the interrupt line; returns the level to drive, or -1. */
static int serial_update_locked(Serial *s)
{
    bool level = !(serial_iir_locked(s) & IIR_NONE);

    if (level == s->r.irq_level) {
        return -1;
    }
    s->r.irq_level = level;
    return level;
}

static void serial_drive(Serial *s, int level)
{
    if (level >= 0) {
        dev_bus_set_irq(s->bus, s->irq, level);
    }
}

static void rx_push_locked(Serial *s, uint8_t b)
{
    if (s->r.rx_count == UART_FIFO) {
        s->r.lsr |= LSR_OE;
        return;
    }
    s->r.rx_fifo[(s->r.rx_head + s->r.rx_count) % UART_FIFO] = b;
    s->r.rx_count++;
    s->r.lsr |= LSR_DR;
}

static uint64_t serial_read(void *opaque, uint64_t off, unsigned size)
{
    Serial *s = opaque;
    uint8_t v = 0xff;
    int level;

    g_mutex_lock(&s->lock);
    switch (off) {
    case 0:
        if (s->r.lcr & LCR_DLAB) {
            v = s->r.dll;
        } else if (s->r.rx_count) {
            v = s->r.rx_fifo[s->r.rx_head];
            s->r.rx_head = (s->r.rx_head + 1) % UART_FIFO;
            if (--s->r.rx_count == 0) {
                s->r.lsr &= ~LSR_DR;
            }
        } else {
            v = 0;
        }
        break;
    case 1:
        v = (s->r.lcr & LCR_DLAB) ? s->r.dlm : s->r.ier;
        break;
    case 2:
        v = serial_iir_locked(s);
        if ((v & 0x0f) == IIR_THRI) {
            s->r.thr_pending = false;   /* reading IIR acknowledges it */
        }
        break;
    case 3:
        v = s->r.lcr;
        break;
    case 4:
        v = s->r.mcr;
        break;
    case 5:
        v = s->r.lsr;
        s->r.lsr &= ~LSR_OE;
        break;
    case 6:
        /* CTS, DSR, DCD; in loopback the outputs come back */
        v = (s->r.mcr & MCR_LOOP) ? (uint8_t)((s->r.mcr & 0x0f) << 4) : 0xb0;
        break;
    case 7:
        v = s->r.scr;
        break;
    }
    level = serial_update_locked(s);
    g_mutex_unlock(&s->lock);
    serial_drive(s, level);
    return v;
}

static void serial_write(void *opaque, uint64_t off, uint64_t val,
                         unsigned size)
{
    Serial *s = opaque;
    uint8_t b = (uint8_t)val;
    bool emit = false;
    int level;

    g_mutex_lock(&s->lock);
    switch (off) {
    case 0:
        if (s->r.lcr & LCR_DLAB) {
            s->r.dll = b;
        } else {
            if (s->r.mcr & MCR_LOOP) {
                rx_push_locked(s, b);
            } else {
                emit = true;
            }
            s->r.thr_pending = true;
        }
        break;
    case 1:
        if (s->r.lcr & LCR_DLAB) {
            s->r.dlm = b;
        } else {
            /* enabling THRI with THR empty raises it at once */
            if ((b & IER_THRI) && !(s->r.ier & IER_THRI)) {
                s->r.thr_pending = true;
            }
            s->r.ier = b & 0x0f;
        }
        break;
    case 2:
        s->r.fcr = b & 0xc9;
        if (b & FCR_CLR_RX) {
            s->r.rx_count = 0;
            s->r.lsr &= ~LSR_DR;
        }
        break;
    case 3:
        s->r.lcr = b;
        break;
    case 4:
        s->r.mcr = b & 0x1f;
        break;
    case 7:
        s->r.scr = b;
        break;
    default:
        break;    /* LSR, MSR: read only */
    }
    level = serial_update_locked(s);
    g_mutex_unlock(&s->lock);
    if (emit && s->out) {
        s->out(s->out_opaque, &b, 1);
    }
    serial_drive(s, level);
}

static const IoOps serial_ops = {
    .read = serial_read,
    .write = serial_write,
};

void serial_reset(Serial *s)
{
    int level;

    g_mutex_lock(&s->lock);
    memset(&s->r, 0, sizeof(s->r));
    s->r.lsr = LSR_THRE | LSR_TEMT;
    s->r.dll = 0x0c;          /* 9600 baud */
    s->r.irq_level = true;    /* force the line low below */
    level = serial_update_locked(s);
    g_mutex_unlock(&s->lock);
    serial_drive(s, level);
}

Serial *serial_new(DevBus *bus, uint16_t port, int irq, SerialOutput out,
                   void *opaque)
{
    Serial *s = g_new0(Serial, 1);

    g_mutex_init(&s->lock);
    s->bus = bus;
    s->irq = irq;
    s->out = out;
    s->out_opaque = opaque;
    s->region = (IoRegion){ .name = "serial", .size = 8, .ops = &serial_ops,
                            .opaque = s, .pio = true };
    serial_reset(s);
    dev_bus_map(bus, &s->region, port);
    return s;
}

void serial_free(Serial *s)
{
    if (s) {
        dev_bus_unmap(s->bus, &s->region);
        g_mutex_clear(&s->lock);
        g_free(s);
    }
}

void serial_receive(Serial *s, const uint8_t *buf, size_t len)
{
    int level;

    g_mutex_lock(&s->lock);
    for (size_t i = 0; i < len; i++) {
        rx_push_locked(s, buf[i]);
    }
    level = serial_update_locked(s);
    g_mutex_unlock(&s->lock);
    serial_drive(s, level);
}

void *serial_state(Serial *s)
{
    return &s->r;
}
