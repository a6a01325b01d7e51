/*
 * The QMP server: listening sockets (unix, TCP) on glib's default main
 * context, and per-client state: the greeting, an incremental parser of
 * the input stream with a size limit, in-order dispatch, and an output
 * queue shared by responses and events.  qmp-spec: "Server greeting",
 * "Capabilities negotiation".  Everything here runs on the main thread.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <glib-unix.h>

#include "common/error.h"
#include "common/log.h"
#include "qmp/qmp.h"

/* A client that does not read its events is dropped past this. */
#define QMP_MAX_OUTPUT_BYTES (64u << 20)

typedef struct QmpClient QmpClient;

typedef struct QmpListener {
    QmpServer *srv;
    int fd;
    guint watch;
    char *unix_path;           /* unlinked at free; NULL for TCP */
} QmpListener;

struct QmpServer {
    GList *listeners;          /* QmpListener* */
    GList *clients;            /* QmpClient* */
};

struct QmpClient {
    QmpServer *srv;
    int fd;
    guint in_watch;
    guint out_watch;           /* 0 unless output is pending */
    GString *out;              /* bytes not yet written */
    QmpStream stream;
    QmpSession session;
    bool dead;                 /* closed; freed when its callbacks unwind */
    int busy;                  /* nesting of callbacks using this client */
};

static void client_close(QmpClient *c);

static void client_free(QmpClient *c)
{
    qmp_stream_destroy(&c->stream);
    g_string_free(c->out, TRUE);
    g_free(c);
}

static gboolean client_writable(gint fd, GIOCondition cond, gpointer opaque);

static void client_flush(QmpClient *c)
{
    while (c->out->len && !c->dead) {
        ssize_t n = send(c->fd, c->out->str, c->out->len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!c->out_watch) {
                c->out_watch = g_unix_fd_add(c->fd, G_IO_OUT, client_writable,
                                             c);
            }
            return;
        }
        if (n <= 0) {
            client_close(c);
            return;
        }
        g_string_erase(c->out, 0, n);
    }
    if (c->out_watch) {
        g_source_remove(c->out_watch);
        c->out_watch = 0;
    }
}

static gboolean client_writable(gint fd, GIOCondition cond, gpointer opaque)
{
    QmpClient *c = opaque;

    c->out_watch = 0;
    client_flush(c);
    return G_SOURCE_REMOVE;
}

static void client_send_text(QmpClient *c, const char *text)
{
    if (c->dead) {
        return;
    }
    if (c->out->len > QMP_MAX_OUTPUT_BYTES) {
        ferry_warn("qmp: dropping a client that does not read its output");
        client_close(c);
        return;
    }
    g_string_append(c->out, text);
    g_string_append(c->out, "\r\n");
    client_flush(c);
}

static void client_send(QmpClient *c, json_t *msg)
{
    char *text = json_dumps(msg, JSON_COMPACT);

    client_send_text(c, text);
    free(text);
}

static void client_event(const char *line, void *opaque)
{
    QmpClient *c = opaque;

    if (c->session.negotiated) {
        client_send_text(c, line);
    }
}

static void client_input(void *opaque, json_t *value, const char *error)
{
    QmpClient *c = opaque;
    json_t *resp;

    if (c->dead) {
        json_decref(value);
        return;
    }
    if (!value) {
        resp = qmp_error_response(QMP_ERROR_GENERIC, error);
    } else {
        FERRY_TRACE_POINT(QMP, "qmp client fd=%d request", c->fd);
        resp = qmp_dispatch(&c->session, value);
        json_decref(value);
    }
    client_send(c, resp);
    json_decref(resp);
}

static gboolean client_readable(gint fd, GIOCondition cond, gpointer opaque)
{
    QmpClient *c = opaque;
    char buf[65536];
    ssize_t n;

    n = recv(fd, buf, sizeof(buf), 0);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
        return G_SOURCE_CONTINUE;
    }
    if (n <= 0) {
        c->in_watch = 0;
        client_close(c);
        return G_SOURCE_REMOVE;
    }
    c->busy++;
    qmp_stream_feed(&c->stream, buf, n);
    c->busy--;
    if (c->dead) {
        if (!c->busy) {
            c->in_watch = 0;
            client_free(c);
        }
        return G_SOURCE_REMOVE;
    }
    return G_SOURCE_CONTINUE;
}

static void client_close(QmpClient *c)
{
    if (c->dead) {
        return;
    }
    c->dead = true;
    qmp_event_unsubscribe(client_event, c);
    c->srv->clients = g_list_remove(c->srv->clients, c);
    if (c->out_watch) {
        g_source_remove(c->out_watch);
        c->out_watch = 0;
    }
    if (c->in_watch) {
        g_source_remove(c->in_watch);
        c->in_watch = 0;
    }
    close(c->fd);
    if (!c->busy) {
        client_free(c);
    }
}

static void client_new(QmpServer *srv, int fd)
{
    QmpClient *c = g_new0(QmpClient, 1);
    g_autoptr(json_t) greeting = NULL;

    c->srv = srv;
    c->fd = fd;
    c->out = g_string_new(NULL);
    qmp_stream_init(&c->stream, QMP_STREAM_MAX_BYTES, client_input, c);
    srv->clients = g_list_append(srv->clients, c);
    qmp_event_subscribe(client_event, c);
    c->in_watch = g_unix_fd_add(fd, G_IO_IN | G_IO_HUP | G_IO_ERR,
                                client_readable, c);
    greeting = json_pack("{s:{s:{s:{s:i,s:i,s:i},s:s},s:[]}}", "QMP",
                         "version", "qemu", "micro", 0, "minor",
                         QMP_QEMU_COMPAT_MINOR, "major", QMP_QEMU_COMPAT_MAJOR,
                         "package", "ferry-" PACKAGE_VERSION, "capabilities");
    client_send(c, greeting);
}

static gboolean listener_ready(gint fd, GIOCondition cond, gpointer opaque)
{
    QmpListener *l = opaque;
    int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

    if (cfd < 0) {
        if (errno != EAGAIN && errno != EINTR) {
            ferry_warn("qmp: accept failed: %s", g_strerror(errno));
        }
        return G_SOURCE_CONTINUE;
    }
    client_new(l->srv, cfd);
    return G_SOURCE_CONTINUE;
}

QmpServer *qmp_server_new(void)
{
    return g_new0(QmpServer, 1);
}

static int listen_unix(const char *path, GError **errp)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd;

    if (strlen(path) >= sizeof(sa.sun_path)) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "unix socket path '%s' is too long", path);
        return -1;
    }
    strcpy(sa.sun_path, path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        ferry_error_setg_errno(errp, errno, "cannot create a unix socket");
        return -1;
    }
    unlink(path);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        listen(fd, 16) < 0) {
        ferry_error_setg_errno(errp, errno, "cannot listen on '%s'", path);
        close(fd);
        return -1;
    }
    return fd;
}

static int listen_tcp(const char *host, const char *port, GError **errp)
{
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_PASSIVE };
    struct addrinfo *res = NULL;
    int fd = -1, rc, one = 1;

    rc = getaddrinfo(*host ? host : NULL, port, &hints, &res);
    if (rc) {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "cannot resolve '%s:%s': %s",
                        host, port, gai_strerror(rc));
        return -1;
    }
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK |
                    SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            continue;
        }
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 16) == 0) {
            break;
        }
        close(fd);
        fd = -1;
    }
    if (fd < 0) {
        ferry_error_setg_errno(errp, errno, "cannot listen on '%s:%s'", host,
                               port);
    }
    freeaddrinfo(res);
    return fd;
}

bool qmp_server_listen(QmpServer *srv, const char *spec, GError **errp)
{
    g_auto(GStrv) parts = g_strsplit(spec, ",", -1);
    const char *addr = parts[0];
    QmpListener *l;
    int fd;

    for (char **p = parts + 1; *p; p++) {
        if (strcmp(*p, "server") && strcmp(*p, "server=on") &&
            strcmp(*p, "wait=off") && strcmp(*p, "nowait")) {
            ferry_error_set(errp, FERRY_ERROR_INVALID,
                            "qmp address '%s': unknown option '%s' (server, "
                            "wait=off)", spec, *p);
            return false;
        }
    }
    l = g_new0(QmpListener, 1);
    l->srv = srv;
    if (g_str_has_prefix(addr, "unix:") || addr[0] == '/') {
        const char *path = addr[0] == '/' ? addr : addr + 5;
        fd = listen_unix(path, errp);
        l->unix_path = g_strdup(path);
    } else if (g_str_has_prefix(addr, "tcp:")) {
        const char *hp = addr + 4;
        const char *colon = strrchr(hp, ':');
        g_autofree char *host = NULL;
        if (!colon) {
            ferry_error_set(errp, FERRY_ERROR_INVALID,
                            "qmp address '%s' needs tcp:HOST:PORT", spec);
            g_free(l);
            return false;
        }
        host = g_strndup(hp, colon - hp);
        if (host[0] == '[') {
            memmove(host, host + 1, strlen(host));
            host[strcspn(host, "]")] = '\0';
        }
        fd = listen_tcp(host, colon + 1, errp);
    } else {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "qmp address '%s' must be unix:PATH or tcp:HOST:PORT",
                        spec);
        g_free(l);
        return false;
    }
    if (fd < 0) {
        g_free(l->unix_path);
        g_free(l);
        return false;
    }
    l->fd = fd;
    l->watch = g_unix_fd_add(fd, G_IO_IN, listener_ready, l);
    srv->listeners = g_list_append(srv->listeners, l);
    return true;
}

void qmp_server_free(QmpServer *srv)
{
    if (!srv) {
        return;
    }
    while (srv->clients) {
        QmpClient *c = srv->clients->data;
        client_flush(c);
        client_close(c);
    }
    for (GList *i = srv->listeners; i; i = i->next) {
        QmpListener *l = i->data;
        g_source_remove(l->watch);
        close(l->fd);
        if (l->unix_path) {
            unlink(l->unix_path);
        }
        g_free(l->unix_path);
        g_free(l);
    }
    g_list_free(srv->listeners);
    g_free(srv);
}
