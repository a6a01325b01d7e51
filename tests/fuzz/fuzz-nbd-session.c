/*
 * libFuzzer harness: a whole NBD session.  The input is what a client
 * sends, byte for byte (handshake, options, requests with payloads); the
 * real server negotiates and serves it on one end of a socketpair against
 * a 1 MiB null-co export offering every meta context, while a thread
 * drains the replies.  Catches what the pure parsers cannot: state kept
 * between options, payload accounting, reply building.
 */
#include "config.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <glib.h>

#include "blockdev/backend.h"
#include "blockdev/bitmap.h"
#include "nbd-server/nbd-server.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static NbdServer *server;

static void add_export(const char *name, bool ro)
{
    const char *bitmaps[] = { "b0", NULL };
    NbdExportConfig ecfg = { .name = name, .description = "fuzz",
                             .readonly = ro, .allocation_depth = true,
                             .bitmaps = bitmaps };
    BlockBackend *blk = blk_open("driver=null-co,size=1M", NULL, NULL,
                                 ro ? 0 : BLOCK_O_RDWR, NULL);
    NbdExport *exp;

    g_assert(blk);
    g_assert(block_dirty_bitmap_create(blk_node(blk), "b0", 65536, NULL));
    exp = nbd_export_new(blk, &ecfg, NULL);
    g_assert(exp);
    g_assert(nbd_server_add_export(server, exp, NULL));
}

static void setup(void)
{
    NbdServerConfig scfg = { .max_connections = 0, .max_workers = 2 };

    server = nbd_server_new(&scfg);
    add_export("", false);
    add_export("ro", true);
}

typedef struct Feed {
    int fd;
    const uint8_t *data;
    size_t size;
} Feed;

/* Write the client's bytes, then read replies until the server closes. */
static void *client_side(void *opaque)
{
    Feed *f = opaque;
    size_t off = 0;
    uint8_t sink[65536];

    while (off < f->size) {
        struct pollfd pfd = { .fd = f->fd, .events = POLLIN | POLLOUT };
        ssize_t n;

        if (poll(&pfd, 1, -1) < 0) {
            continue;
        }
        if (pfd.revents & POLLIN) {
            /* Replies: read them so the server is never stuck sending. */
            if (recv(f->fd, sink, sizeof(sink), MSG_DONTWAIT) == 0) {
                break;
            }
        }
        if (pfd.revents & (POLLERR | POLLHUP)) {
            break;
        }
        if (pfd.revents & POLLOUT) {
            n = send(f->fd, f->data + off, f->size - off,
                     MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n > 0) {
                off += n;
            } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
                break;
            }
        }
    }
    shutdown(f->fd, SHUT_WR);
    while (recv(f->fd, sink, sizeof(sink), 0) > 0) {
    }
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int sv[2];
    pthread_t tid;
    Feed feed;

    if (!server) {
        setup();
    }
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        return 0;
    }
    feed = (Feed){ .fd = sv[1], .data = data, .size = size };
    pthread_create(&tid, NULL, client_side, &feed);
    nbd_server_serve_fd(server, sv[0]);     /* closes sv[0] */
    pthread_join(tid, NULL);
    close(sv[1]);
    return 0;
}
