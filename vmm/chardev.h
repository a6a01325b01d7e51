/*
 * Where a serial port's bytes go: stdio, a file, or a unix socket that
 * ferry connects to (the test or user listens, as with --qtest).
 */
#ifndef FERRY_VMM_CHARDEV_H
#define FERRY_VMM_CHARDEV_H

#include <glib.h>

typedef struct Chardev Chardev;
typedef void (*ChardevInput)(void *opaque, const uint8_t *buf, size_t len);

/* "stdio", "file:PATH", "unix:PATH", "none" */
Chardev *chardev_open(const char *spec, GError **errp);
void chardev_write(Chardev *c, const uint8_t *buf, size_t len);
/* Deliver input from the main loop to fn (stdio and unix only). */
void chardev_set_input(Chardev *c, ChardevInput fn, void *opaque);
void chardev_close(Chardev *c);

#endif
