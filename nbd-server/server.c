/*
 * The NBD server's frame: exports, listening sockets, the accept loop with
 * its connection limit, and the life of a client (a thread that negotiates,
 * then serves with more worker threads as the client's queue deepens, and
 * finally cleans up once every worker has left).  The protocol itself is
 * in negotiate.c and request.c.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/error.h"
#include "common/log.h"
#include "nbd-server/internal.h"

#define THREAD_STACK_BYTES  (1u << 20)
/* Worker buffers of all clients together stay below this. */
#define BUF_BUDGET_BYTES    (INT64_C(2) << 30)

/* -- exports -------------------------------------------------------------- */

/*
 * Clients were told the export's size at GO: nobody may resize the node
 * while it is exported (qemu-nbd -r refuses images others may resize,
 * too), and the export itself never resizes, so several exports of one
 * node coexist, as in QEMU.  A read-only export reads consistently and
 * lets others write.
 */
static bool export_perm(BlockBackend *blk, bool readonly, GError **errp)
{
    uint32_t perm, shared;

    blk_perm_for_flags(readonly ? 0 : BLOCK_O_RDWR, &perm, &shared);
    perm &= ~BLOCK_PERM_RESIZE;
    if (readonly) {
        perm &= ~BLOCK_PERM_WRITE;
    }
    shared &= ~BLOCK_PERM_RESIZE;
    if (!blk_set_perm(blk, perm, shared, errp)) {
        g_prefix_error(errp, "cannot export '%s': ",
                       blk_node(blk)->filename ? blk_node(blk)->filename
                                               : blk_node(blk)->node_name);
        return false;
    }
    return true;
}

NbdExport *nbd_export_new(BlockBackend *blk, const NbdExportConfig *cfg,
                          GError **errp)
{
    BlockNode *bs = blk_node(blk);
    int64_t size = blk_getlength(blk);
    NbdExport *exp;
    unsigned nb = 0;

    if (size < 0) {
        ferry_error_setg_errno(errp, (int)-size, "cannot get the size of '%s'",
                               bs->filename ? bs->filename : bs->node_name);
        return NULL;
    }
    if (cfg->name && strlen(cfg->name) > NBD_MAX_STRING) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "export name is longer than %d bytes", NBD_MAX_STRING);
        return NULL;
    }
    if (cfg->description && strlen(cfg->description) > NBD_MAX_STRING) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "export description is longer than %d bytes",
                        NBD_MAX_STRING);
        return NULL;
    }
    for (const char *const *b = cfg->bitmaps; b && *b; b++) {
        nb++;
    }
    if (nb > 64) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "at most 64 bitmaps can be exported");
        return NULL;
    }
    exp = g_new0(NbdExport, 1);
    exp->refcnt = 1;
    exp->name = g_strdup(cfg->name ? cfg->name : "");
    exp->description = g_strdup(cfg->description);
    exp->node = bs;
    exp->size = size;
    exp->readonly = cfg->readonly || !(bs->open_flags & BLOCK_O_RDWR);
    exp->allocation_depth = cfg->allocation_depth;
    exp->detect_zeroes = cfg->detect_zeroes;
    exp->min_block = MAX(bs->request_alignment, 1);
    exp->bitmaps = g_new0(BlockDirtyBitmap *, MAX(nb, 1));
    for (unsigned i = 0; i < nb; i++) {
        BlockDirtyBitmap *bm = block_dirty_bitmap_find(bs, cfg->bitmaps[i]);
        if (!bm) {
            ferry_error_set(errp, FERRY_ERROR_NOT_FOUND,
                            "bitmap '%s' not found in '%s'", cfg->bitmaps[i],
                            bs->filename ? bs->filename : bs->node_name);
            goto fail;
        }
        if (bm->busy) {
            ferry_error_set(errp, FERRY_ERROR_LOCKED,
                            "bitmap '%s' is in use", cfg->bitmaps[i]);
            goto fail;
        }
        if (bm->inconsistent) {
            ferry_error_set(errp, FERRY_ERROR_CORRUPT,
                            "bitmap '%s' is inconsistent (the image was not "
                            "closed cleanly)", cfg->bitmaps[i]);
            goto fail;
        }
        bm->busy = true;
        exp->bitmaps[exp->nb_bitmaps++] = bm;
    }
    if (!export_perm(blk, exp->readonly, errp)) {
        goto fail;
    }
    exp->blk = blk;       /* ownership passes to the export */
    return exp;

fail:
    for (unsigned i = 0; i < exp->nb_bitmaps; i++) {
        exp->bitmaps[i]->busy = false;
    }
    g_free(exp->bitmaps);
    g_free(exp->name);
    g_free(exp->description);
    g_free(exp);
    return NULL;
}

void nbd_export_unref(NbdExport *exp)
{
    if (!exp || !g_atomic_int_dec_and_test(&exp->refcnt)) {
        return;
    }
    for (unsigned i = 0; i < exp->nb_bitmaps; i++) {
        exp->bitmaps[i]->busy = false;
    }
    blk_flush(exp->blk);
    blk_unref(exp->blk);
    g_free(exp->bitmaps);
    g_free(exp->name);
    g_free(exp->description);
    g_free(exp);
}

const char *nbd_export_name(NbdExport *exp)
{
    return exp->name;
}

NbdExport *nbd_server_find_export(NbdServer *srv, const char *name,
                                  size_t len)
{
    NbdExport *found = NULL;

    g_mutex_lock(&srv->lock);
    for (guint i = 0; i < srv->exports->len; i++) {
        NbdExport *exp = srv->exports->pdata[i];
        if (strlen(exp->name) == len && !memcmp(exp->name, name, len)) {
            found = exp;
            break;
        }
    }
    g_mutex_unlock(&srv->lock);
    return found;
}

/* -- worker buffers ------------------------------------------------------- */

uint8_t *nbd_worker_buf(NbdWorker *w, size_t len)
{
    NbdServer *srv = w->client->server;
    size_t cap = 64 * 1024;
    void *mem = NULL;

    if (len <= w->cap) {
        return w->mem + NBD_BUF_HEADROOM;
    }
    while (cap < len) {
        cap *= 2;
    }
    nbd_worker_free(w);
    if (__atomic_add_fetch(&srv->buf_bytes, (int64_t)cap, __ATOMIC_RELAXED) >
        BUF_BUDGET_BYTES ||
        posix_memalign(&mem, 4096, NBD_BUF_HEADROOM + cap)) {
        __atomic_sub_fetch(&srv->buf_bytes, (int64_t)cap, __ATOMIC_RELAXED);
        return NULL;
    }
    w->mem = mem;
    w->cap = cap;
    return w->mem + NBD_BUF_HEADROOM;
}

void nbd_worker_trim(NbdWorker *w)
{
    if (w->cap > NBD_BUF_KEEP) {
        nbd_worker_free(w);
    }
}

void nbd_worker_free(NbdWorker *w)
{
    if (w->mem) {
        __atomic_sub_fetch(&w->client->server->buf_bytes, (int64_t)w->cap,
                           __ATOMIC_RELAXED);
        free(w->mem);
        w->mem = NULL;
        w->cap = 0;
    }
    g_free(w->ext_buf);
    w->ext_buf = NULL;
    w->ext_cap = 0;
}

/* -- clients -------------------------------------------------------------- */

static bool start_thread(void *(*fn)(void *), void *arg)
{
    pthread_attr_t attr;
    pthread_t tid;
    int ret;

    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, THREAD_STACK_BYTES);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    ret = pthread_create(&tid, &attr, fn, arg);
    pthread_attr_destroy(&attr);
    return ret == 0;
}

static void *worker_thread(void *opaque)
{
    NbdClient *c = opaque;

    nbd_client_work(c, true);
    g_mutex_lock(&c->state_lock);
    c->nb_workers--;
    g_cond_broadcast(&c->state_cond);
    g_mutex_unlock(&c->state_lock);
    return NULL;
}

bool nbd_client_spawn_worker_locked(NbdClient *c)
{
    c->nb_workers++;
    if (!start_thread(worker_thread, c)) {
        c->nb_workers--;
        return false;
    }
    return true;
}

static char *peer_name(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    char host[NI_MAXHOST], port[NI_MAXSERV];

    if (getpeername(fd, (struct sockaddr *)&ss, &len) < 0) {
        return g_strdup_printf("fd%d", fd);
    }
    if (ss.ss_family == AF_UNIX) {
        return g_strdup_printf("unix:fd%d", fd);
    }
    if (getnameinfo((struct sockaddr *)&ss, len, host, sizeof(host), port,
                    sizeof(port), NI_NUMERICHOST | NI_NUMERICSERV)) {
        return g_strdup_printf("fd%d", fd);
    }
    return g_strdup_printf("%s:%s", host, port);
}

static NbdClient *client_new(NbdServer *srv, int fd)
{
    NbdClient *c = g_new0(NbdClient, 1);
    int one = 1;

    c->server = srv;
    c->fd = fd;
    c->peer = peer_name(fd);
    c->rbuf = g_malloc(NBD_RECV_BUF);
    c->max_workers = srv->cfg.max_workers ? (int)srv->cfg.max_workers
                                          : NBD_DEFAULT_WORKERS;
    g_mutex_init(&c->ssl_lock);
    g_mutex_init(&c->recv_lock);
    g_mutex_init(&c->send_lock);
    g_mutex_init(&c->out_lock);
    c->outq[0] = g_malloc(NBD_OUTQ_BYTES);
    c->outq[1] = g_malloc(NBD_OUTQ_BYTES);
    g_mutex_init(&c->state_lock);
    g_cond_init(&c->state_cond);
    /* Replies go out whole: Nagle would only delay them. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

    g_mutex_lock(&srv->lock);
    srv->clients = g_list_prepend(srv->clients, c);
    srv->nb_clients++;
    srv->served++;
    if (g_atomic_int_get(&srv->shutting_down)) {
        shutdown(fd, SHUT_RDWR);
    }
    g_mutex_unlock(&srv->lock);
    return c;
}

static void wake_server(NbdServer *srv)
{
    uint64_t one = 1;
    ssize_t n G_GNUC_UNUSED = write(srv->wake_fd, &one, sizeof(one));
}

static void client_free(NbdClient *c)
{
    NbdServer *srv = c->server;

    nbd_tls_close(c);
    close(c->fd);
    nbd_export_unref(c->exp);
    nbd_meta_clear(&c->meta);
    g_mutex_clear(&c->ssl_lock);
    g_mutex_clear(&c->recv_lock);
    g_mutex_clear(&c->send_lock);
    g_mutex_clear(&c->out_lock);
    g_free(c->outq[0]);
    g_free(c->outq[1]);
    g_mutex_clear(&c->state_lock);
    g_cond_clear(&c->state_cond);
    g_free(c->rbuf);

    g_mutex_lock(&srv->lock);
    srv->clients = g_list_remove(srv->clients, c);
    srv->nb_clients--;
    g_cond_broadcast(&srv->cond);
    g_mutex_unlock(&srv->lock);
    ferry_debug("nbd client %s left", c->peer);
    g_free(c->peer);
    g_free(c);
    wake_server(srv);
}

/* The first thread of a client: negotiate, serve, wait for the others. */
static void serve_client(NbdClient *c)
{
    int limit = c->server->cfg.handshake_limit_ms;

    c->deadline_us = limit > 0 ? g_get_monotonic_time() + limit * INT64_C(1000)
                               : 0;
    c->nb_workers = 1;
    if (nbd_negotiate(c)) {
        c->deadline_us = 0;
        nbd_client_work(c, false);
    }
    g_mutex_lock(&c->state_lock);
    __atomic_store_n(&c->dead, true, __ATOMIC_SEQ_CST);
    while (c->nb_workers > 1) {
        g_cond_wait(&c->state_cond, &c->state_lock);
    }
    g_mutex_unlock(&c->state_lock);
    client_free(c);
}

static void *client_thread(void *opaque)
{
    serve_client(opaque);
    return NULL;
}

void nbd_server_serve_fd(NbdServer *srv, int fd)
{
    serve_client(client_new(srv, fd));
}

/* -- the server ----------------------------------------------------------- */

NbdServer *nbd_server_new(const NbdServerConfig *cfg)
{
    NbdServer *srv = g_new0(NbdServer, 1);
    struct sigaction sa;

    /*
     * splice() into a socket the client closed raises SIGPIPE (it takes no
     * MSG_NOSIGNAL); a program that left SIGPIPE at its default would die
     * of a client hanging up, so it is ignored, as in QEMU.
     */
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) {
        signal(SIGPIPE, SIG_IGN);
    }

    srv->cfg = *cfg;
    g_mutex_init(&srv->lock);
    g_cond_init(&srv->cond);
    srv->exports = g_ptr_array_new_with_free_func(
        (GDestroyNotify)nbd_export_unref);
    srv->listeners = g_ptr_array_new();
    srv->unix_paths = g_ptr_array_new_with_free_func(g_free);
    srv->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    return srv;
}

bool nbd_server_add_export(NbdServer *srv, NbdExport *exp, GError **errp)
{
    if (nbd_server_find_export(srv, exp->name, strlen(exp->name))) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "an export named '%s' already exists", exp->name);
        return false;
    }
    g_mutex_lock(&srv->lock);
    g_ptr_array_add(srv->exports, exp);
    g_mutex_unlock(&srv->lock);
    return true;
}

bool nbd_server_remove_export(NbdServer *srv, const char *name, bool hard,
                              GError **errp)
{
    NbdExport *exp = NULL;
    unsigned users = 0;

    g_mutex_lock(&srv->lock);
    for (guint i = 0; i < srv->exports->len && !exp; i++) {
        NbdExport *e = srv->exports->pdata[i];
        if (!strcmp(e->name, name)) {
            exp = e;
        }
    }
    for (GList *l = srv->clients; l && exp; l = l->next) {
        NbdClient *c = l->data;
        if (c->exp == exp) {
            users++;
            if (hard) {
                shutdown(c->fd, SHUT_RDWR);
            }
        }
    }
    if (exp && (hard || !users)) {
        g_ptr_array_remove(srv->exports, exp);   /* drops our reference */
    }
    g_mutex_unlock(&srv->lock);
    if (!exp) {
        ferry_error_set(errp, FERRY_ERROR_NOT_FOUND,
                        "export '%s' not found", name);
        return false;
    }
    if (users && !hard) {
        ferry_error_set(errp, FERRY_ERROR_LOCKED,
                        "export '%s' has %u client%s connected", name, users,
                        users == 1 ? "" : "s");
        return false;
    }
    return true;
}

bool nbd_server_listen_fd(NbdServer *srv, int fd, GError **errp)
{
    int flags = fcntl(fd, F_GETFL);

    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
        ferry_error_setg_errno(errp, errno, "cannot use listening socket %d",
                               fd);
        return false;
    }
    g_ptr_array_add(srv->listeners, GINT_TO_POINTER(fd));
    return true;
}

bool nbd_server_listen_tcp(NbdServer *srv, const char *host, const char *port,
                           GError **errp)
{
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC,
        .ai_socktype = SOCK_STREAM,
        .ai_flags = AI_PASSIVE | AI_ADDRCONFIG,
    };
    struct addrinfo *res, *ai;
    int ret, bound = 0, last_err = 0;

    ret = getaddrinfo(host, port, &hints, &res);
    if (ret) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "cannot resolve '%s' port '%s': %s",
                        host ? host : "*", port, gai_strerror(ret));
        return false;
    }
    for (ai = res; ai; ai = ai->ai_next) {
        int one = 1;
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC,
                        ai->ai_protocol);
        if (fd < 0) {
            last_err = errno;
            continue;
        }
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (ai->ai_family == AF_INET6) {
            /* One socket per family, as the wildcard lists both. */
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        }
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 ||
            listen(fd, 256) < 0) {
            last_err = errno;
            close(fd);
            continue;
        }
        nbd_server_listen_fd(srv, fd, NULL);
        bound++;
    }
    freeaddrinfo(res);
    if (!bound) {
        ferry_error_setg_errno(errp, last_err, "cannot listen on %s:%s",
                               host ? host : "*", port);
        return false;
    }
    return true;
}

bool nbd_server_listen_unix(NbdServer *srv, const char *path, GError **errp)
{
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    struct stat st;
    int fd;

    if (strlen(path) >= sizeof(sun.sun_path)) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "unix socket path '%s' is too long (at most %zu "
                        "bytes)", path, sizeof(sun.sun_path) - 1);
        return false;
    }
    strcpy(sun.sun_path, path);
    /* A stale socket from an earlier run is replaced, nothing else is. */
    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode)) {
        unlink(path);
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 ||
        listen(fd, 256) < 0) {
        ferry_error_setg_errno(errp, errno, "cannot listen on unix socket "
                               "'%s'", path);
        if (fd >= 0) {
            close(fd);
        }
        return false;
    }
    g_ptr_array_add(srv->unix_paths, g_strdup(path));
    return nbd_server_listen_fd(srv, fd, errp);
}

static bool should_stop(NbdServer *srv)
{
    bool stop;

    g_mutex_lock(&srv->lock);
    stop = g_atomic_int_get(&srv->shutting_down) ||
           (!srv->cfg.persistent && srv->served > 0 && srv->nb_clients == 0);
    g_mutex_unlock(&srv->lock);
    return stop;
}

static void accept_one(NbdServer *srv, int lfd)
{
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    NbdClient *c;

    if (fd < 0) {
        if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
            ferry_warn("nbd: accept failed: %s", g_strerror(errno));
            if (errno == EMFILE || errno == ENFILE) {
                g_usleep(100000);   /* let a client leave first */
            }
        }
        return;
    }
    c = client_new(srv, fd);
    ferry_debug("nbd client %s connected", c->peer);
    if (!start_thread(client_thread, c)) {
        ferry_warn("nbd: cannot start a thread for client %s", c->peer);
        client_free(c);
    }
}

void nbd_server_run(NbdServer *srv)
{
    guint n = srv->listeners->len;
    g_autofree struct pollfd *pfd = g_new0(struct pollfd, n + 1);

    for (guint i = 0; i < n; i++) {
        pfd[i].fd = GPOINTER_TO_INT(srv->listeners->pdata[i]);
    }
    pfd[n].fd = srv->wake_fd;
    pfd[n].events = POLLIN;
    while (!should_stop(srv)) {
        bool full;
        uint64_t v;

        g_mutex_lock(&srv->lock);
        full = srv->cfg.max_connections > 0 &&
               srv->nb_clients >= (unsigned)srv->cfg.max_connections;
        g_mutex_unlock(&srv->lock);
        /* At the limit, new connections wait in the listen backlog. */
        for (guint i = 0; i < n; i++) {
            pfd[i].events = full ? 0 : POLLIN;
        }
        if (poll(pfd, n + 1, -1) < 0) {
            if (errno != EINTR) {
                ferry_warn("nbd: poll failed: %s", g_strerror(errno));
            }
            continue;
        }
        if (pfd[n].revents) {
            ssize_t r G_GNUC_UNUSED = read(srv->wake_fd, &v, sizeof(v));
        }
        for (guint i = 0; i < n; i++) {
            if (pfd[i].revents & POLLIN) {
                accept_one(srv, pfd[i].fd);
            }
        }
    }
}

void nbd_server_shutdown(NbdServer *srv)
{
    g_atomic_int_set(&srv->shutting_down, 1);
    wake_server(srv);
}

void nbd_server_stats(NbdServer *srv, uint64_t *served, unsigned *connected)
{
    g_mutex_lock(&srv->lock);
    *served = srv->served;
    *connected = srv->nb_clients;
    g_mutex_unlock(&srv->lock);
}

void nbd_server_free(NbdServer *srv)
{
    if (!srv) {
        return;
    }
    g_atomic_int_set(&srv->shutting_down, 1);
    for (guint i = 0; i < srv->listeners->len; i++) {
        close(GPOINTER_TO_INT(srv->listeners->pdata[i]));
    }
    g_mutex_lock(&srv->lock);
    for (GList *l = srv->clients; l; l = l->next) {
        shutdown(((NbdClient *)l->data)->fd, SHUT_RDWR);
    }
    while (srv->nb_clients > 0) {
        g_cond_wait(&srv->cond, &srv->lock);
    }
    g_mutex_unlock(&srv->lock);
    for (guint i = 0; i < srv->unix_paths->len; i++) {
        unlink(srv->unix_paths->pdata[i]);
    }
    g_ptr_array_free(srv->exports, TRUE);
    g_ptr_array_free(srv->listeners, TRUE);
    g_ptr_array_free(srv->unix_paths, TRUE);
    nbd_tls_free(srv->cfg.tls);
    close(srv->wake_fd);
    g_mutex_clear(&srv->lock);
    g_cond_clear(&srv->cond);
    g_free(srv);
}
