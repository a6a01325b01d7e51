/*
 * The nbd protocol driver: a remote NBD export as a node, through libnbd.
 * Accepts QEMU's spellings: nbd://host[:port]/export, nbd+unix:///export?
 * socket=PATH, nbds:// (TLS), the legacy nbd:host:port[:exportname=x] and
 * nbd:unix:PATH[:exportname=x], and the options driver=nbd,server.type=
 * inet|unix,server.host/port/path,export=...  TLS material comes from
 * tls-certificates=DIR or tls-psk-file=FILE (libnbd's names; QEMU's
 * tls-creds needs --object, which ferry does not have).
 *
 * Concurrency: requests come from any thread.  Each is queued with a libnbd
 * aio call (libnbd locks its handle briefly) and the caller sleeps until
 * its completion callback fires.  One I/O thread per node polls the socket
 * and drives libnbd's state machine, so many requests are in flight on one
 * connection and replies are matched whatever their order.
 */
#include "config.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <libnbd.h>

#include "blockdev/driver.h"
#include "common/error.h"
#include "common/log.h"
#include "common/opts.h"

#define NBD_DEFAULT_PORT "10809"
/* Largest request we send; libnbd and most servers take 32 MiB. */
#define NBD_CLIENT_MAX_REQUEST (32u << 20)
/* Block status asks about at most this much at a time (32-bit lengths). */
#define NBD_CLIENT_MAX_STATUS (INT64_C(1) << 30)

typedef struct NbdClientState {
    struct nbd_handle *h;
    int64_t size;               /* bytes, as the server said at GO */
    uint32_t max_request;       /* bytes per read or write */
    bool can_flush, can_fua, can_trim, can_zero, can_fast_zero;
    char *status_ctx;           /* context for block status, or NULL */
    bool dirty_bitmap_mode;     /* x-dirty-bitmap: status from a bitmap */
    int wake_fd;                /* eventfd: wake the I/O thread */
    GThread *io_thread;
    int quit;                   /* atomic: the I/O thread should leave */
} NbdClientState;

static const char *const nbd_open_opts[] = {
    "filename", "server", "export", "host", "port", "path",
    "tls-creds", "tls-hostname", "tls-certificates", "tls-psk-file",
    "tls-username", "tls-verify-peer", "x-dirty-bitmap", "reconnect-delay",
    "open-timeout", NULL,
};

/* -- waiting for libnbd ---------------------------------------------------- */

typedef struct Waiter {
    GMutex lock;
    GCond cond;
    bool done;
    int err;                    /* errno of the command */
    /* block status results (first extent of our context) */
    const char *ctx;
    uint32_t ext_len, ext_flags;
    bool have_ext;
} Waiter;

static void waiter_init(Waiter *w)
{
    memset(w, 0, sizeof(*w));
    g_mutex_init(&w->lock);
    g_cond_init(&w->cond);
}

static int waiter_wait(Waiter *w)
{
    g_mutex_lock(&w->lock);
    while (!w->done) {
        g_cond_wait(&w->cond, &w->lock);
    }
    g_mutex_unlock(&w->lock);
    g_mutex_clear(&w->lock);
    g_cond_clear(&w->cond);
    return w->err ? -w->err : 0;
}

static int on_complete(void *opaque, int *error)
{
    Waiter *w = opaque;

    g_mutex_lock(&w->lock);
    w->err = *error;
    w->done = true;
    g_cond_signal(&w->cond);
    g_mutex_unlock(&w->lock);
    return 1;   /* retire the command */
}

static int on_extent(void *opaque, const char *metacontext, uint64_t offset,
                     uint32_t *entries, size_t nr_entries, int *error)
{
    Waiter *w = opaque;

    if (!w->have_ext && nr_entries >= 2 && !strcmp(metacontext, w->ctx)) {
        w->ext_len = entries[0];
        w->ext_flags = entries[1];
        w->have_ext = true;
    }
    return 0;
}

#define COMPLETION(w) \
    ((nbd_completion_callback){ .callback = on_complete, .user_data = (w) })

/* After queuing: if libnbd still has bytes to send, let the thread poll. */
static void kick(NbdClientState *s)
{
    if (nbd_aio_get_direction(s->h) & LIBNBD_AIO_DIRECTION_WRITE) {
        uint64_t one = 1;
        ssize_t n G_GNUC_UNUSED = write(s->wake_fd, &one, sizeof(one));
    }
}

/* Finish a submission: -errno if it failed to queue, else wait for it. */
static int submitted(NbdClientState *s, int64_t cookie, Waiter *w)
{
    if (cookie < 0) {
        int err = nbd_get_errno();
        FERRY_TRACE_POINT(BLOCKDEV, "nbd submit failed: %s", nbd_get_error());
        g_mutex_clear(&w->lock);
        g_cond_clear(&w->cond);
        return -(err ? err : EIO);
    }
    kick(s);
    return waiter_wait(w);
}

static gpointer io_thread_fn(gpointer opaque)
{
    NbdClientState *s = opaque;
    int fd = nbd_aio_get_fd(s->h);

    while (!g_atomic_int_get(&s->quit)) {
        unsigned dir = nbd_aio_get_direction(s->h);
        bool alive = !nbd_aio_is_dead(s->h) && !nbd_aio_is_closed(s->h);
        struct pollfd pfd[2] = {
            { .fd = fd, .events = 0 },
            { .fd = s->wake_fd, .events = POLLIN },
        };
        int n;

        if (alive && (dir & LIBNBD_AIO_DIRECTION_READ)) {
            pfd[0].events |= POLLIN;
        }
        if (alive && (dir & LIBNBD_AIO_DIRECTION_WRITE)) {
            pfd[0].events |= POLLOUT;
        }
        /* A dead connection: only wait to be told to leave. */
        n = poll(alive ? pfd : pfd + 1, alive ? 2 : 1, -1);
        if (n < 0) {
            continue;
        }
        if (pfd[1].revents & POLLIN) {
            uint64_t v;
            ssize_t r G_GNUC_UNUSED = read(s->wake_fd, &v, sizeof(v));
        }
        if (!alive) {
            continue;
        }
        dir = nbd_aio_get_direction(s->h);
        if ((dir & LIBNBD_AIO_DIRECTION_READ) &&
            (pfd[0].revents & (POLLIN | POLLHUP | POLLERR))) {
            nbd_aio_notify_read(s->h);
        } else if ((dir & LIBNBD_AIO_DIRECTION_WRITE) &&
                   (pfd[0].revents & (POLLOUT | POLLHUP | POLLERR))) {
            nbd_aio_notify_write(s->h);
        }
    }
    return NULL;
}

/* -- opening ------------------------------------------------------------- */

static bool set_tls(struct nbd_handle *h, json_t *options, GError **errp)
{
    const char *certs = ferry_opt_str(options, "tls-certificates");
    const char *psk = ferry_opt_str(options, "tls-psk-file");
    const char *user = ferry_opt_str(options, "tls-username");
    const char *hostname = ferry_opt_str(options, "tls-hostname");
    bool verify = true;

    if (ferry_opt_str(options, "tls-creds")) {
        ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED,
                        "nbd: tls-creds names an --object, which ferry does "
                        "not have; give tls-certificates=DIR or "
                        "tls-psk-file=FILE instead");
        return false;
    }
    if (!ferry_opt_bool(options, "tls-verify-peer", true, &verify, errp)) {
        return false;
    }
    if (hostname) {
        ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED,
                        "nbd: tls-hostname is not supported (the host in "
                        "the address is checked)");
        return false;
    }
    if (!certs && !psk) {
        return true;        /* nbds:// URIs ask libnbd for TLS themselves */
    }
    if (nbd_set_tls(h, LIBNBD_TLS_REQUIRE) < 0 ||
        (certs && nbd_set_tls_certificates(h, certs) < 0) ||
        (psk && nbd_set_tls_psk_file(h, psk) < 0) ||
        (user && nbd_set_tls_username(h, user) < 0) ||
        nbd_set_tls_verify_peer(h, verify) < 0) {
        ferry_error_setg(errp, "nbd: cannot set up TLS: %s", nbd_get_error());
        return false;
    }
    return true;
}

/*
 * QEMU's legacy "nbd:HOST:PORT[:exportname=NAME]" and
 * "nbd:unix:PATH[:exportname=NAME]" into a URI libnbd understands.
 */
static char *legacy_to_uri(const char *spec, GError **errp)
{
    const char *rest = spec + 4;
    const char *exp = strstr(rest, ":exportname=");
    g_autofree char *addr = exp ? g_strndup(rest, exp - rest)
                                : g_strdup(rest);
    g_autofree char *name = exp ? g_uri_escape_string(exp + 12, "/", FALSE)
                                : g_strdup("");

    if (g_str_has_prefix(addr, "unix:")) {
        g_autofree char *path = g_uri_escape_string(addr + 5, "/", FALSE);
        return g_strdup_printf("nbd+unix:///%s?socket=%s", name, path);
    }
    if (!*addr) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "nbd: '%s' names no server", spec);
        return NULL;
    }
    if (strchr(addr, ':') || addr[0] == '[') {
        return g_strdup_printf("nbd://%s/%s", addr, name);
    }
    return g_strdup_printf("nbd://%s:%s/%s", addr, NBD_DEFAULT_PORT, name);
}

/* Where to connect, from the options; fills *uri for messages. */
static bool connect_opts(NbdClientState *s, BlockNode *bs, json_t *options,
                         GError **errp)
{
    json_t *server = json_object_get(options, "server");
    const char *exp = ferry_opt_str(options, "export");
    const char *type = NULL, *host, *port, *path;
    g_autofree char *port_buf = NULL;

    if (server && !json_is_object(server)) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "nbd: option 'server' must be an object");
        return false;
    }
    if (server) {
        if (!ferry_opts_check_known(server, (const char *const[]){
                "type", "host", "port", "path", "numeric", "to", "ipv4",
                "ipv6", "keep-alive", NULL }, "nbd option 'server'", errp)) {
            return false;
        }
        type = ferry_opt_str(server, "type");
        host = ferry_opt_str(server, "host");
        path = ferry_opt_str(server, "path");
        port = ferry_opt_str(server, "port");
        if (!port && json_is_integer(json_object_get(server, "port"))) {
            port = port_buf = g_strdup_printf("%" JSON_INTEGER_FORMAT,
                json_integer_value(json_object_get(server, "port")));
        }
    } else {
        host = ferry_opt_str(options, "host");
        path = ferry_opt_str(options, "path");
        port = ferry_opt_str(options, "port");
        if (!port && json_is_integer(json_object_get(options, "port"))) {
            port = port_buf = g_strdup_printf("%" JSON_INTEGER_FORMAT,
                json_integer_value(json_object_get(options, "port")));
        }
        type = path ? "unix" : host ? "inet" : NULL;
    }
    if (!type) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "nbd: give a URI (nbd://host/export, nbd+unix:///"
                        "export?socket=PATH) or server.type=inet|unix");
        return false;
    }
    if (nbd_set_export_name(s->h, exp ? exp : "") < 0) {
        ferry_error_setg(errp, "nbd: %s", nbd_get_error());
        return false;
    }
    if (!strcmp(type, "unix")) {
        if (!path) {
            ferry_error_set(errp, FERRY_ERROR_INVALID,
                            "nbd: server.type=unix needs server.path");
            return false;
        }
        g_free(bs->filename);
        bs->filename = g_strdup_printf("nbd+unix:///%s?socket=%s",
                                       exp ? exp : "", path);
        if (nbd_connect_unix(s->h, path) < 0) {
            ferry_error_set(errp, FERRY_ERROR_IO,
                            "cannot connect to nbd server at '%s': %s", path,
                            nbd_get_error());
            return false;
        }
        return true;
    }
    if (!strcmp(type, "inet")) {
        if (!host) {
            ferry_error_set(errp, FERRY_ERROR_INVALID,
                            "nbd: server.type=inet needs server.host");
            return false;
        }
        port = port ? port : NBD_DEFAULT_PORT;
        g_free(bs->filename);
        bs->filename = g_strdup_printf(strchr(host, ':') ? "nbd://[%s]:%s/%s"
                                                         : "nbd://%s:%s/%s",
                                       host, port, exp ? exp : "");
        if (nbd_connect_tcp(s->h, host, port) < 0) {
            ferry_error_set(errp, FERRY_ERROR_IO,
                            "cannot connect to nbd server %s:%s: %s", host,
                            port, nbd_get_error());
            return false;
        }
        return true;
    }
    ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED,
                    "nbd: server.type '%s' is not supported (inet or unix)",
                    type);
    return false;
}

static bool connect_uri(NbdClientState *s, BlockNode *bs, const char *uri,
                        GError **errp)
{
    g_autofree char *legacy = NULL;

    if (ferry_opt_str(bs->options, "server") ||
        json_object_get(bs->options, "server") ||
        ferry_opt_str(bs->options, "export")) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "nbd: give either a URI or server/export options, "
                        "not both");
        return false;
    }
    if (g_str_has_prefix(uri, "nbd:") && !strstr(uri, "://")) {
        legacy = legacy_to_uri(uri, errp);
        if (!legacy) {
            return false;
        }
        uri = legacy;
    }
    /* URIs may carry tls-certificates=/tls-psk-file= query parameters. */
    nbd_set_uri_allow_local_file(s->h, true);
    if (nbd_connect_uri(s->h, uri) < 0) {
        ferry_error_set(errp, FERRY_ERROR_IO,
                        "cannot connect to nbd server '%s': %s", uri,
                        nbd_get_error());
        return false;
    }
    if (legacy) {
        g_free(bs->filename);
        bs->filename = g_strdup(legacy);
    }
    return true;
}

static void nbd_client_close(BlockNode *bs);
static int nbd_client_flush(BlockNode *bs);

static bool nbd_client_open(BlockNode *bs, json_t *options, GError **errp)
{
    NbdClientState *s = bs->opaque;
    const char *filename = ferry_opt_str(options, "filename");
    const char *bitmap = ferry_opt_str(options, "x-dirty-bitmap");
    uint64_t delay = 0;
    bool tls_uri = filename && g_str_has_prefix(filename, "nbds");
    int64_t minb, maxb;

    s->wake_fd = -1;
    if (!ferry_opt_uint(options, "reconnect-delay", 0, &delay, errp)) {
        return false;
    }
    if (delay) {
        ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED,
                        "nbd: reconnect-delay is not supported yet");
        return false;
    }
    s->h = nbd_create();
    if (!s->h) {
        ferry_error_setg(errp, "nbd: %s", nbd_get_error());
        return false;
    }
    s->status_ctx = g_strdup(bitmap ? bitmap : "base:allocation");
    s->dirty_bitmap_mode = bitmap != NULL;
    if (nbd_add_meta_context(s->h, s->status_ctx) < 0 ||
        !set_tls(s->h, options, errp)) {
        if (errp && !*errp) {
            ferry_error_setg(errp, "nbd: %s", nbd_get_error());
        }
        goto fail;
    }
    if (filename ? !connect_uri(s, bs, filename, errp)
                 : !connect_opts(s, bs, options, errp)) {
        goto fail;
    }
    if (tls_uri && nbd_get_tls_negotiated(s->h) != 1) {
        ferry_error_set(errp, FERRY_ERROR_IO,
                        "nbd: '%s' asks for TLS but none was negotiated",
                        filename);
        goto fail;
    }
    s->size = nbd_get_size(s->h);
    if (s->size < 0) {
        ferry_error_setg(errp, "nbd: cannot get the export size: %s",
                         nbd_get_error());
        goto fail;
    }
    if ((bs->open_flags & BLOCK_O_RDWR) && nbd_is_read_only(s->h) == 1) {
        ferry_error_set(errp, FERRY_ERROR_PERMISSION,
                        "nbd export '%s' is read-only; open it read-only "
                        "(-r, or read-only=on)", bs->filename);
        goto fail;
    }
    s->can_flush = nbd_can_flush(s->h) == 1;
    s->can_fua = nbd_can_fua(s->h) == 1;
    s->can_trim = nbd_can_trim(s->h) == 1;
    s->can_zero = nbd_can_zero(s->h) == 1;
    s->can_fast_zero = nbd_can_fast_zero(s->h) == 1;
    if (nbd_can_meta_context(s->h, s->status_ctx) != 1) {
        if (s->dirty_bitmap_mode) {
            ferry_error_set(errp, FERRY_ERROR_NOT_FOUND,
                            "nbd: the server does not offer '%s'",
                            s->status_ctx);
            goto fail;
        }
        g_clear_pointer(&s->status_ctx, g_free);
    }
    minb = nbd_get_block_size(s->h, LIBNBD_SIZE_MINIMUM);
    maxb = nbd_get_block_size(s->h, LIBNBD_SIZE_MAXIMUM);
    if (minb > 1 && minb <= 65536) {
        bs->request_alignment = (uint32_t)minb;
    }
    s->max_request = NBD_CLIENT_MAX_REQUEST;
    if (maxb > 0 && maxb < s->max_request) {
        s->max_request = MAX((uint32_t)maxb & ~(bs->request_alignment - 1),
                             bs->request_alignment);
    }
    s->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (s->wake_fd < 0) {
        ferry_error_setg_errno(errp, errno, "nbd: cannot create an eventfd");
        goto fail;
    }
    s->io_thread = g_thread_new("nbd-io", io_thread_fn, s);
    FERRY_TRACE_POINT(BLOCKDEV, "nbd node=%s open uri=%s size=0x%"
                      G_GINT64_MODIFIER "x ctx=%s", bs->node_name,
                      bs->filename, s->size,
                      s->status_ctx ? s->status_ctx : "none");
    return true;

fail:
    nbd_client_close(bs);
    return false;
}

static void nbd_client_close(BlockNode *bs)
{
    NbdClientState *s = bs->opaque;

    if (s->io_thread) {
        uint64_t one = 1;
        ssize_t n G_GNUC_UNUSED;
        g_atomic_int_set(&s->quit, 1);
        n = write(s->wake_fd, &one, sizeof(one));
        g_thread_join(s->io_thread);
        s->io_thread = NULL;
    }
    if (s->h) {
        if (nbd_aio_is_ready(s->h) == 1) {
            nbd_shutdown(s->h, 0);      /* NBD_CMD_DISC: a clean goodbye */
        }
        nbd_close(s->h);
        s->h = NULL;
    }
    if (s->wake_fd >= 0) {
        close(s->wake_fd);
        s->wake_fd = -1;
    }
    g_clear_pointer(&s->status_ctx, g_free);
}

/* -- data path ------------------------------------------------------------ */

static int nbd_client_pread(BlockNode *bs, int64_t offset, int64_t bytes,
                            void *buf, uint32_t flags)
{
    NbdClientState *s = bs->opaque;
    uint8_t *p = buf;

    /* Past the end of the export reads as zeroes (protocol node). */
    if (offset >= s->size) {
        memset(buf, 0, bytes);
        return 0;
    }
    if (bytes > s->size - offset) {
        memset(p + (s->size - offset), 0, bytes - (s->size - offset));
        bytes = s->size - offset;
    }
    while (bytes > 0) {
        size_t n = MIN(bytes, s->max_request);
        Waiter w;
        int ret;
        waiter_init(&w);
        ret = submitted(s, nbd_aio_pread(s->h, p, n, offset, COMPLETION(&w),
                                         0), &w);
        if (ret < 0) {
            return ret;
        }
        p += n;
        offset += n;
        bytes -= n;
    }
    return 0;
}

static int nbd_client_pwrite(BlockNode *bs, int64_t offset, int64_t bytes,
                             const void *buf, uint32_t flags)
{
    NbdClientState *s = bs->opaque;
    const uint8_t *p = buf;
    uint32_t nflags = (flags & BLOCK_REQ_FUA) && s->can_fua
                      ? LIBNBD_CMD_FLAG_FUA : 0;
    int ret = 0;

    if (bytes > s->size - offset || offset > s->size) {
        return -ENOSPC;     /* exports cannot grow */
    }
    while (bytes > 0) {
        size_t n = MIN(bytes, s->max_request);
        Waiter w;
        waiter_init(&w);
        ret = submitted(s, nbd_aio_pwrite(s->h, p, n, offset, COMPLETION(&w),
                                          nflags), &w);
        if (ret < 0) {
            return ret;
        }
        p += n;
        offset += n;
        bytes -= n;
    }
    /* BLOCK_CAP_FUA is ours to honour: without server FUA, flush. */
    if ((flags & BLOCK_REQ_FUA) && !s->can_fua) {
        ret = nbd_client_flush(bs);
    }
    return ret;
}

static int nbd_client_pwrite_zeroes(BlockNode *bs, int64_t offset,
                                    int64_t bytes, uint32_t flags)
{
    NbdClientState *s = bs->opaque;
    uint32_t nflags = 0;

    if (!s->can_zero) {
        return -ENOTSUP;
    }
    if ((flags & BLOCK_REQ_NO_FALLBACK) && !s->can_fast_zero) {
        return -ENOTSUP;
    }
    if (bytes > s->size - offset || offset > s->size) {
        return -ENOSPC;
    }
    if ((flags & BLOCK_REQ_FUA) && s->can_fua) {
        nflags |= LIBNBD_CMD_FLAG_FUA;
    }
    if ((flags & BLOCK_REQ_FUA) && !s->can_fua) {
        int ret = nbd_client_pwrite_zeroes(bs, offset, bytes,
                                           flags & ~BLOCK_REQ_FUA);
        return ret < 0 ? ret : nbd_client_flush(bs);
    }
    if (!(flags & BLOCK_REQ_MAY_UNMAP)) {
        nflags |= LIBNBD_CMD_FLAG_NO_HOLE;
    }
    if (flags & BLOCK_REQ_NO_FALLBACK) {
        nflags |= LIBNBD_CMD_FLAG_FAST_ZERO;
    }
    while (bytes > 0) {
        /* Effect lengths are 32-bit without extended headers. */
        int64_t n = MIN(bytes, (int64_t)1 << 30);
        Waiter w;
        int ret;
        waiter_init(&w);
        ret = submitted(s, nbd_aio_zero(s->h, n, offset, COMPLETION(&w),
                                        nflags), &w);
        if (ret < 0) {
            return ret;
        }
        offset += n;
        bytes -= n;
    }
    return 0;
}

static int nbd_client_pdiscard(BlockNode *bs, int64_t offset, int64_t bytes)
{
    NbdClientState *s = bs->opaque;

    if (!s->can_trim) {
        return -ENOTSUP;
    }
    if (offset >= s->size) {
        return 0;
    }
    bytes = MIN(bytes, s->size - offset);
    while (bytes > 0) {
        int64_t n = MIN(bytes, (int64_t)1 << 30);
        Waiter w;
        int ret;
        waiter_init(&w);
        ret = submitted(s, nbd_aio_trim(s->h, n, offset, COMPLETION(&w), 0),
                        &w);
        if (ret < 0) {
            return ret;
        }
        offset += n;
        bytes -= n;
    }
    return 0;
}

static int nbd_client_flush(BlockNode *bs)
{
    NbdClientState *s = bs->opaque;
    Waiter w;

    if (!s->can_flush || (bs->open_flags & BLOCK_O_NO_FLUSH)) {
        return 0;
    }
    waiter_init(&w);
    return submitted(s, nbd_aio_flush(s->h, COMPLETION(&w), 0), &w);
}

/*
 * base:allocation as the graph's flags: NBD_STATE_HOLE clear means data,
 * NBD_STATE_ZERO means it reads as zeroes.  With x-dirty-bitmap the
 * bitmap's bit takes the hole bit's place, as QEMU does: dirty areas show
 * as "data": false.
 */
static int nbd_client_block_status(BlockNode *bs, int64_t offset,
                                   int64_t bytes, int64_t *pnum, int64_t *map,
                                   BlockNode **file)
{
    NbdClientState *s = bs->opaque;
    const int base = BLOCK_STATUS_ALLOCATED | BLOCK_STATUS_OFFSET_VALID;
    int64_t ask = MIN(bytes, NBD_CLIENT_MAX_STATUS);
    Waiter w;
    int ret;

    *map = offset;
    *file = bs;
    if (!s->status_ctx || offset >= s->size) {
        *pnum = bytes;
        return base | BLOCK_STATUS_DATA;
    }
    ask = MIN(ask, s->size - offset);
    if (bs->request_alignment > 1) {
        ask = MAX(ask & ~(int64_t)(bs->request_alignment - 1),
                  (int64_t)bs->request_alignment);
    }
    waiter_init(&w);
    w.ctx = s->status_ctx;
    ret = submitted(s, nbd_aio_block_status(s->h, ask, offset,
                        (nbd_extent_callback){ .callback = on_extent,
                                               .user_data = &w },
                        COMPLETION(&w), LIBNBD_CMD_FLAG_REQ_ONE), &w);
    if (ret < 0 || !w.have_ext || w.ext_len == 0) {
        /* Status is advisory: call it data rather than fail a copy. */
        *pnum = MIN(bytes, ask);
        return base | BLOCK_STATUS_DATA;
    }
    *pnum = MIN((int64_t)w.ext_len, bytes);
    if (s->dirty_bitmap_mode) {
        return base | ((w.ext_flags & 1) ? 0 : BLOCK_STATUS_DATA);
    }
    return base | ((w.ext_flags & 1) ? 0 : BLOCK_STATUS_DATA) |
           ((w.ext_flags & 2) ? BLOCK_STATUS_ZERO : 0);
}

static int64_t nbd_client_getlength(BlockNode *bs)
{
    return ((NbdClientState *)bs->opaque)->size;
}

/* Nothing to say about the server's disk use: "disk size: unavailable". */
static int64_t nbd_client_allocated_size(BlockNode *bs)
{
    return -ENOTSUP;
}

static bool nbd_client_truncate(BlockNode *bs, int64_t size, bool exact,
                                BlockPrealloc prealloc, GError **errp)
{
    NbdClientState *s = bs->opaque;

    if (size > s->size || (exact && size != s->size)) {
        ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED,
                        "cannot resize nbd export '%s' (%" G_GINT64_FORMAT
                        " bytes) to %" G_GINT64_FORMAT " bytes", bs->filename,
                        s->size, size);
        return false;
    }
    return true;
}

/*
 * "Creating" an image on an export, as qemu-img does: the export must be
 * large enough; its first sector is zeroed so an old header cannot be
 * probed as the new image's format.
 */
static bool nbd_client_create(const char *filename, json_t *opts,
                              GError **errp)
{
    g_autoptr(json_t) o = json_object();
    uint64_t size;
    BlockNode *bs;
    int ret;

    if (!ferry_opt_size(opts, "size", 0, &size, errp)) {
        return false;
    }
    json_object_set_new(o, "driver", json_string("nbd"));
    json_object_set_new(o, "filename", json_string(filename));
    bs = block_node_open_opts(o, BLOCK_O_RDWR, BLOCK_PERM_WRITE,
                              BLOCK_PERM_ALL, errp);
    if (!bs) {
        return false;
    }
    if ((int64_t)size > block_node_getlength(bs)) {
        ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED,
                        "nbd export '%s' is %" G_GINT64_FORMAT " bytes, "
                        "smaller than the %" G_GUINT64_FORMAT " asked for "
                        "(exports cannot grow)", filename,
                        block_node_getlength(bs), size);
        block_node_unref(bs);
        return false;
    }
    ret = block_node_pwrite_zeroes(bs, 0, MIN((int64_t)size, 512), 0);
    if (ret == 0) {
        ret = block_node_flush(bs);
    }
    block_node_unref(bs);
    if (ret < 0) {
        ferry_error_setg_errno(errp, -ret, "cannot prepare nbd export '%s'",
                               filename);
        return false;
    }
    return true;
}

static const BlockCreateOpt nbd_create_opts[] = {
    { "size", BLOCK_OPT_SIZE, "Virtual disk size (the export's, or less)" },
    { NULL },
};

const BlockDriver nbd_driver = {
    .name          = "nbd",
    .kind          = BLOCK_DRIVER_PROTOCOL,
    .caps          = BLOCK_CAP_FUA,
    .state_size    = sizeof(NbdClientState),
    .open_opts     = nbd_open_opts,
    .create_opts   = nbd_create_opts,
    .protocols     = (const char *const[]){
        "nbd://", "nbds://", "nbd+unix://", "nbds+unix://", "nbd+vsock://",
        "nbds+vsock://", "nbd:", NULL,
    },
    .open          = nbd_client_open,
    .close         = nbd_client_close,
    .create        = nbd_client_create,
    .pread         = nbd_client_pread,
    .pwrite        = nbd_client_pwrite,
    .pwrite_zeroes = nbd_client_pwrite_zeroes,
    .pdiscard      = nbd_client_pdiscard,
    .flush         = nbd_client_flush,
    .block_status  = nbd_client_block_status,
    .getlength     = nbd_client_getlength,
    .allocated_size = nbd_client_allocated_size,
    .truncate      = nbd_client_truncate,
};
