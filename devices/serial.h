/*
 * A 16550A UART (the PC's COM1 at 0x3f8, IRQ 4).
 */
#ifndef FERRY_DEVICES_SERIAL_H
#define FERRY_DEVICES_SERIAL_H

#include "devices/bus.h"
#include "devices/vmstate.h"

typedef struct Serial Serial;

/* Where transmitted bytes go (the machine's chardev); any thread. */
typedef void (*SerialOutput)(void *opaque, const uint8_t *buf, size_t len);

Serial *serial_new(DevBus *bus, uint16_t port, int irq, SerialOutput out,
                   void *opaque);
void serial_free(Serial *s);
void serial_reset(Serial *s);
/* Bytes from the outside world; dropped when the receive FIFO is full. */
void serial_receive(Serial *s, const uint8_t *buf, size_t len);

extern const VmStateDesc serial_vmstate;
/* The register block serial_vmstate describes (for tests). */
void *serial_state(Serial *s);

#endif
