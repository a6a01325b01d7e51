/*
 * Character backends for the serial port.  Output is written synchronously
 * from the vCPU thread that wrote THR (one byte per exit, so buffering
 * would only delay it); input is read on the main loop.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <glib-unix.h>

#include "common/error.h"
#include "common/log.h"
#include "vmm/chardev.h"

struct Chardev {
    int out_fd;          /* -1: discard */
    int in_fd;           /* -1: no input */
    bool own_out, own_in;
    guint watch;
    ChardevInput input;
    void *opaque;
};

Chardev *chardev_open(const char *spec, GError **errp)
{
    Chardev *c = g_new0(Chardev, 1);

    c->out_fd = c->in_fd = -1;
    if (!strcmp(spec, "stdio")) {
        c->out_fd = STDOUT_FILENO;
        c->in_fd = STDIN_FILENO;
    } else if (!strcmp(spec, "none")) {
        /* nothing */
    } else if (g_str_has_prefix(spec, "file:")) {
        c->out_fd = open(spec + 5, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
                         0644);
        if (c->out_fd < 0) {
            ferry_error_setg_errno(errp, errno, "serial: cannot open '%s'",
                                   spec + 5);
            g_free(c);
            return NULL;
        }
        c->own_out = true;
    } else if (g_str_has_prefix(spec, "unix:")) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd;
        if (strlen(spec + 5) >= sizeof(sa.sun_path)) {
            ferry_error_set(errp, FERRY_ERROR_INVALID,
                            "serial: socket path '%s' is too long", spec + 5);
            g_free(c);
            return NULL;
        }
        strcpy(sa.sun_path, spec + 5);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
            ferry_error_setg_errno(errp, errno,
                                   "serial: cannot connect to '%s'", spec + 5);
            if (fd >= 0) {
                close(fd);
            }
            g_free(c);
            return NULL;
        }
        c->out_fd = c->in_fd = fd;
        c->own_out = true;
    } else {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "serial: '%s' is not stdio, file:PATH, unix:PATH or "
                        "none", spec);
        g_free(c);
        return NULL;
    }
    return c;
}

void chardev_write(Chardev *c, const uint8_t *buf, size_t len)
{
    while (c->out_fd >= 0 && len > 0) {
        ssize_t n = write(c->out_fd, buf, len);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return;      /* a closed reader loses output, not the guest */
        }
        buf += n;
        len -= n;
    }
}

static gboolean chardev_readable(gint fd, GIOCondition cond, gpointer opaque)
{
    Chardev *c = opaque;
    uint8_t buf[256];
    ssize_t n = read(fd, buf, sizeof(buf));

    if (n <= 0) {
        c->watch = 0;
        return G_SOURCE_REMOVE;
    }
    if (c->input) {
        c->input(c->opaque, buf, n);
    }
    return G_SOURCE_CONTINUE;
}

void chardev_set_input(Chardev *c, ChardevInput fn, void *opaque)
{
    c->input = fn;
    c->opaque = opaque;
    if (c->in_fd >= 0 && !c->watch) {
        c->watch = g_unix_fd_add(c->in_fd, G_IO_IN | G_IO_HUP, chardev_readable, c);
    }
}

void chardev_close(Chardev *c)
{
    if (!c) {
        return;
    }
    if (c->watch) {
        g_source_remove(c->watch);
    }
    if (c->own_out && c->out_fd >= 0) {
        close(c->out_fd);
    }
    g_free(c);
}
