/*
 * The transmission phase (NBD spec, "Transmission", "Request types"):
 * parsing and checking requests, running them on the export's
 * BlockBackend, and sending simple, structured or extended replies.
 *
 * Threads: a connection has up to max_workers threads that take turns at
 * receiving (leader/followers).  The one holding recv_lock reads the next
 * header and payload, hands the socket on (starting another thread if
 * none is free), runs the request and sends its reply (see "Sending
 * replies" below).  So requests of one connection run in parallel and
 * replies leave in completion order, a reply in one write and often many
 * replies in one.  Meta-context status replies are built in
 * meta-context.c.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/log.h"
#include "nbd-server/internal.h"

/* Structured reads send zero runs of whole blocks this size as holes. */
#define SPARSE_HOLE_MIN   4096
#define SPARSE_MAX_SEGS   64

uint32_t nbd_errno_to_wire(int err)
{
    switch (err) {
    case 0:
        return 0;
    case EPERM:
    case EROFS:
    case EACCES:
        return NBD_EPERM;
    case ENOMEM:
        return NBD_ENOMEM;
    case EINVAL:
        return NBD_EINVAL;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
        return NBD_ENOSPC;
    case EOVERFLOW:
        return NBD_EOVERFLOW;
    case ENOTSUP:
        return NBD_ENOTSUP;
    case ESHUTDOWN:
        return NBD_ESHUTDOWN;
    default:
        return NBD_EIO;
    }
}

/* -- parsing and checking (pure: the fuzz harness calls these) ------------ */

bool nbd_request_parse(const uint8_t *hdr, bool extended, NbdRequest *req)
{
    uint32_t magic = ferry_ld_be32(hdr);

    req->flags = ferry_ld_be16(hdr + 4);
    req->type = ferry_ld_be16(hdr + 6);
    req->cookie = ferry_ld_be64(hdr + 8);
    req->offset = ferry_ld_be64(hdr + 16);
    if (extended) {
        req->len = ferry_ld_be64(hdr + 24);
        req->payload_len = (req->flags & NBD_CMD_FLAG_PAYLOAD_LEN) ? req->len
                                                                   : 0;
        return magic == NBD_EXTENDED_REQUEST_MAGIC;
    }
    req->len = ferry_ld_be32(hdr + 24);
    req->payload_len = req->type == NBD_CMD_WRITE ? req->len : 0;
    return magic == NBD_REQUEST_MAGIC;
}

static uint16_t allowed_flags(uint16_t type)
{
    switch (type) {
    case NBD_CMD_READ:
        return NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_DF;
    case NBD_CMD_WRITE:
        return NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_PAYLOAD_LEN;
    case NBD_CMD_WRITE_ZEROES:
        return NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE |
               NBD_CMD_FLAG_FAST_ZERO;
    case NBD_CMD_BLOCK_STATUS:
        return NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_REQ_ONE;
    default:
        return NBD_CMD_FLAG_FUA;    /* valid on every command */
    }
}

#define REJECT(code, msg) \
    do { *err = (code); *why = (msg); return NBD_REQ_ERROR; } while (0)

NbdReqVerdict nbd_request_check(const NbdTxInfo *tx, const NbdRequest *req,
                                uint32_t *err, const char **why)
{
    bool ro = tx->tx_flags & NBD_FLAG_READ_ONLY;
    bool beyond = req->offset > (uint64_t)tx->size ||
                  req->len > (uint64_t)tx->size - req->offset;
    bool writes = req->type == NBD_CMD_WRITE || req->type == NBD_CMD_TRIM ||
                  req->type == NBD_CMD_WRITE_ZEROES;

    *err = 0;
    *why = NULL;
    if (req->type == NBD_CMD_DISC) {
        return NBD_REQ_DISC;
    }
    if (req->payload_len > NBD_MAX_PAYLOAD) {
        *why = "payload larger than the advertised maximum";
        return NBD_REQ_HANGUP;
    }
    if ((req->flags & NBD_CMD_FLAG_PAYLOAD_LEN) && !tx->extended) {
        REJECT(NBD_EINVAL, "PAYLOAD_LEN flag without extended headers");
    }
    if (tx->extended && req->type == NBD_CMD_WRITE &&
        !(req->flags & NBD_CMD_FLAG_PAYLOAD_LEN)) {
        REJECT(NBD_EINVAL, "write without PAYLOAD_LEN flag");
    }
    if (req->payload_len && req->type != NBD_CMD_WRITE) {
        REJECT(NBD_EINVAL, "unexpected payload");
    }
    if (req->flags & ~allowed_flags(req->type)) {
        REJECT(NBD_EINVAL, "unknown or misplaced command flags");
    }
    if ((req->flags & NBD_CMD_FLAG_DF) && !tx->structured) {
        REJECT(NBD_EINVAL, "DF flag without structured replies");
    }
    if (writes && ro) {
        REJECT(NBD_EPERM, "export is read-only");
    }
    if (tx->min_block > 1 && req->type != NBD_CMD_FLUSH &&
        ((req->offset | req->len) & (tx->min_block - 1))) {
        REJECT(NBD_EINVAL, "request not aligned to the minimum block size");
    }
    switch (req->type) {
    case NBD_CMD_READ:
        if (req->len > NBD_MAX_PAYLOAD) {
            REJECT(NBD_EINVAL, "read larger than the maximum payload");
        }
        /* fall through */
    case NBD_CMD_TRIM:
    case NBD_CMD_CACHE:
        if (beyond) {
            REJECT(NBD_EINVAL, "request beyond the end of the export");
        }
        return NBD_REQ_OK;
    case NBD_CMD_WRITE:
    case NBD_CMD_WRITE_ZEROES:
        if (beyond) {
            REJECT(NBD_ENOSPC, "write beyond the end of the export");
        }
        return NBD_REQ_OK;
    case NBD_CMD_FLUSH:
        return NBD_REQ_OK;
    case NBD_CMD_BLOCK_STATUS:
        if (!tx->meta_count) {
            REJECT(NBD_EINVAL, "no meta context was negotiated");
        }
        if (beyond) {
            REJECT(NBD_EINVAL, "request beyond the end of the export");
        }
        return NBD_REQ_OK;
    default:
        REJECT(NBD_EINVAL, "unknown command");
    }
}

/* -- replies -------------------------------------------------------------- */

/* A chunk header (structured: 20 bytes, extended: 32); returns its size. */
static size_t chunk_hdr(NbdClient *c, uint8_t *p, const NbdRequest *req,
                        uint16_t flags, uint16_t type, uint64_t len)
{
    ferry_st_be16(p + 4, flags);
    ferry_st_be16(p + 6, type);
    ferry_st_be64(p + 8, req->cookie);
    if (c->extended) {
        ferry_st_be32(p, NBD_EXTENDED_REPLY_MAGIC);
        ferry_st_be64(p + 16, req->offset);
        ferry_st_be64(p + 24, len);
        return 32;
    }
    ferry_st_be32(p, NBD_STRUCTURED_REPLY_MAGIC);
    ferry_st_be32(p + 16, (uint32_t)len);
    return 20;
}

#define HANGUP(c) __atomic_load_n(&(c)->hangup, __ATOMIC_SEQ_CST)

static void mark_hangup(NbdClient *c)
{
    g_mutex_lock(&c->state_lock);
    __atomic_store_n(&c->dead, true, __ATOMIC_SEQ_CST);
    __atomic_store_n(&c->hangup, true, __ATOMIC_SEQ_CST);
    g_mutex_unlock(&c->state_lock);
    /* Wake whichever worker is blocked receiving or sending. */
    shutdown(c->fd, SHUT_RDWR);
}

/*
 * Sending replies.  The thread holding send_lock writes to the socket;
 * a small reply finished while another thread is writing is copied into
 * the connection's queue instead of waiting for the lock, and whoever
 * holds the lock sends the queue (one writev for many replies).  So no
 * worker ever sleeps on a mutex held across a system call just to send
 * 16 bytes, and the client gets several replies per wake-up.
 *
 * Invariants: (1) only the send_lock holder writes to the socket or
 * swaps the queue buffers; (2) a reply is queued whole, never split;
 * (3) the holder sends the queue before any reply of its own, and after
 * unlocking looks at the queue again, so nothing queued is stranded
 * (an appender whose trylock failed appended before the holder's
 * unlock, hence before that second look).
 */
static void send_failed(NbdClient *c, int ret)
{
    if (!HANGUP(c)) {
        ferry_debug("nbd client %s: sending a reply failed: %s", c->peer,
                    g_strerror(-ret));
        mark_hangup(c);
    }
}

/* send_lock held: write out everything queued. */
static int flush_queue_locked(NbdClient *c)
{
    for (;;) {
        struct iovec iov;
        int ret;

        g_mutex_lock(&c->out_lock);
        iov.iov_base = c->outq[c->outq_cur];
        iov.iov_len = c->outq_len;
        c->outq_cur ^= 1;
        c->outq_len = 0;
        g_mutex_unlock(&c->out_lock);
        if (iov.iov_len == 0) {
            return 0;
        }
        ret = HANGUP(c) ? -EPIPE : nbd_io_writev(c, &iov, 1);
        if (ret < 0) {
            return ret;
        }
    }
}

/* Release send_lock, taking it back while replies wait in the queue. */
static void send_unlock(NbdClient *c)
{
    for (;;) {
        bool pending;
        int ret;

        g_mutex_unlock(&c->send_lock);
        g_mutex_lock(&c->out_lock);
        pending = c->outq_len > 0;
        g_mutex_unlock(&c->out_lock);
        if (!pending || !g_mutex_trylock(&c->send_lock)) {
            return;
        }
        ret = flush_queue_locked(c);
        if (ret < 0) {
            send_failed(c, ret);
        }
    }
}

/* Queue a small reply whole; false if it does not fit. */
static bool enqueue(NbdClient *c, const struct iovec *iov, int n,
                    size_t total)
{
    bool ok = false;

    g_mutex_lock(&c->out_lock);
    if (c->outq_len + total <= NBD_OUTQ_BYTES) {
        uint8_t *dst = c->outq[c->outq_cur] + c->outq_len;
        for (int i = 0; i < n; i++) {
            memcpy(dst, iov[i].iov_base, iov[i].iov_len);
            dst += iov[i].iov_len;
        }
        c->outq_len += total;
        ok = true;
    }
    g_mutex_unlock(&c->out_lock);
    return ok;
}

/* Send one complete reply (several iovecs); hang up if it fails. */
static int send_locked(NbdClient *c, struct iovec *iov, int n)
{
    size_t total = 0;
    int ret;

    for (int i = 0; i < n; i++) {
        total += iov[i].iov_len;
    }
    if (total <= NBD_OUTQ_SMALL && enqueue(c, iov, n, total)) {
        if (g_mutex_trylock(&c->send_lock)) {
            ret = flush_queue_locked(c);
            if (ret < 0) {
                send_failed(c, ret);
            }
            send_unlock(c);
        }
        return HANGUP(c) ? -EPIPE : 0;
    }
    g_mutex_lock(&c->send_lock);
    ret = flush_queue_locked(c);
    if (ret == 0) {
        ret = HANGUP(c) ? -EPIPE : nbd_io_writev(c, iov, n);
    }
    if (ret < 0) {
        send_failed(c, ret);
    }
    send_unlock(c);
    return ret;
}

int nbd_send_chunk(NbdClient *c, const NbdRequest *req, uint16_t flags,
                   uint16_t type, struct iovec *payload, int npayload,
                   size_t payload_len)
{
    uint8_t hdr[32];
    struct iovec iov[8];

    g_assert(npayload < 8);
    iov[0].iov_base = hdr;
    iov[0].iov_len = chunk_hdr(c, hdr, req, flags, type, payload_len);
    for (int i = 0; i < npayload; i++) {
        iov[1 + i] = payload[i];
    }
    return send_locked(c, iov, 1 + npayload);
}

static int send_simple(NbdClient *c, const NbdRequest *req, uint32_t err)
{
    uint8_t hdr[16];
    struct iovec iov = { .iov_base = hdr, .iov_len = sizeof(hdr) };

    ferry_st_be32(hdr, NBD_SIMPLE_REPLY_MAGIC);
    ferry_st_be32(hdr + 4, err);
    ferry_st_be64(hdr + 8, req->cookie);
    return send_locked(c, &iov, 1);
}

/* Success without data: simple where allowed, a NONE chunk with extended. */
static int send_ok(NbdClient *c, const NbdRequest *req)
{
    if (c->extended) {
        return nbd_send_chunk(c, req, NBD_REPLY_FLAG_DONE,
                              NBD_REPLY_TYPE_NONE, NULL, 0, 0);
    }
    return send_simple(c, req, 0);
}

static int send_error(NbdClient *c, const NbdRequest *req, uint32_t err,
                      const char *msg)
{
    uint8_t head[6];
    size_t mlen = msg ? MIN(strlen(msg), 4096) : 0;
    struct iovec payload[2] = {
        { .iov_base = head, .iov_len = sizeof(head) },
        { .iov_base = (void *)msg, .iov_len = mlen },
    };

    FERRY_TRACE_POINT(NBD, "client=%s cookie=0x%" G_GINT64_MODIFIER "x type=%u "
                      "off=0x%" G_GINT64_MODIFIER "x len=0x%" G_GINT64_MODIFIER
                      "x error=%u msg=\"%s\"", c->peer, req->cookie, req->type,
                      req->offset, req->len, err, msg ? msg : "");
    __atomic_add_fetch(&c->server->failed_requests, 1, __ATOMIC_RELAXED);
    if (!c->structured) {
        return send_simple(c, req, err);
    }
    ferry_st_be32(head, err);
    ferry_st_be16(head + 4, (uint16_t)mlen);
    return nbd_send_chunk(c, req, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR,
                          payload, mlen ? 2 : 1, sizeof(head) + mlen);
}

static int send_errno(NbdClient *c, const NbdRequest *req, const char *what,
                      int ret)
{
    g_autofree char *msg = g_strdup_printf("%s failed: %s", what,
                                           g_strerror(-ret));

    return send_error(c, req, nbd_errno_to_wire(-ret), msg);
}

/* -- commands ------------------------------------------------------------- */

static bool buffer_is_zero(const uint8_t *p, size_t len)
{
    if (len == 0) {
        return true;
    }
    /* Cheap rejections first: real data almost never starts with zeroes. */
    if (p[0] || p[len - 1] || p[len / 2]) {
        return false;
    }
    return !memcmp(p, p + 1, len - 1);
}

/*
 * A read answered with one content chunk placed right before the data in
 * the worker buffer, so header and data leave in one write.
 */
static int send_read_data(NbdClient *c, const NbdRequest *req, uint8_t *data,
                          uint64_t len)
{
    size_t hlen = c->extended ? 40 : 28;
    uint8_t *h = data - hlen;
    struct iovec iov;

    chunk_hdr(c, h, req, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA,
              len + 8);
    ferry_st_be64(h + hlen - 8, req->offset);
    iov.iov_base = h;
    iov.iov_len = hlen + len;
    return send_locked(c, &iov, 1);
}

typedef struct ReadSeg {
    uint64_t off;       /* relative to the request */
    uint64_t len;
    bool hole;
} ReadSeg;

/*
 * Split what was read into data and zero runs, SPARSE_HOLE_MIN blocks at
 * a time.  Finding holes in the bytes rather than asking block status
 * first costs one compare per block of real data (it stops at the first
 * non-zero byte) and no system calls; it also finds zeroes that were
 * written as data.  Clients that want to skip holes unread ask
 * NBD_CMD_BLOCK_STATUS anyway.
 */
static int plan_sparse(const uint8_t *buf, uint64_t len, ReadSeg *segs)
{
    int n = 0;

    for (uint64_t off = 0; off < len; off += SPARSE_HOLE_MIN) {
        uint64_t l = MIN(SPARSE_HOLE_MIN, len - off);
        bool hole = l == SPARSE_HOLE_MIN && buffer_is_zero(buf + off, l);

        if (n > 0 && segs[n - 1].hole == hole) {
            segs[n - 1].len += l;
        } else if (n == SPARSE_MAX_SEGS) {
            /* Too fragmented: the rest goes as data. */
            segs[n - 1].len = len - segs[n - 1].off;
            segs[n - 1].hole = false;
            break;
        } else {
            segs[n++] = (ReadSeg){ .off = off, .len = l, .hole = hole };
        }
    }
    return n;
}

static int send_read_sparse(NbdClient *c, const NbdRequest *req,
                            uint8_t *buf)
{
    ReadSeg segs[SPARSE_MAX_SEGS];
    uint8_t hdrs[SPARSE_MAX_SEGS][52];
    struct iovec iov[2 * SPARSE_MAX_SEGS];
    int nsegs = plan_sparse(buf, req->len, segs), niov = 0;

    if (nsegs == 1 && !segs[0].hole) {
        return send_read_data(c, req, buf, req->len);
    }
    for (int i = 0; i < nsegs; i++) {
        uint16_t flags = i == nsegs - 1 ? NBD_REPLY_FLAG_DONE : 0;
        uint8_t *h = hdrs[i];
        size_t hl;
        if (segs[i].hole) {
            hl = chunk_hdr(c, h, req, flags, NBD_REPLY_TYPE_OFFSET_HOLE, 12);
            ferry_st_be64(h + hl, req->offset + segs[i].off);
            ferry_st_be32(h + hl + 8, (uint32_t)segs[i].len);
            iov[niov++] = (struct iovec){ h, hl + 12 };
        } else {
            hl = chunk_hdr(c, h, req, flags, NBD_REPLY_TYPE_OFFSET_DATA,
                           segs[i].len + 8);
            ferry_st_be64(h + hl, req->offset + segs[i].off);
            iov[niov++] = (struct iovec){ h, hl + 8 };
            iov[niov++] = (struct iovec){ buf + segs[i].off, segs[i].len };
        }
    }
    return send_locked(c, iov, niov);
}

/*
 * Zero-copy reads.  Where the export is plain data in a host file (raw over
 * file, see block_node_splice_read), a read moves page references from the
 * page cache into the worker's pipe and from there into the socket: the
 * kernel copies the data once, into the socket buffer, instead of into our
 * buffer and then out of it.  The pipe fills before send_lock is taken, so
 * a read the block layer cannot splice still falls back to pread with
 * nothing sent.  A spliced read is one data chunk (so DF holds): holes in
 * the file are never spliced (block status says so first), but zeroes
 * written as data go as data, as with qemu-nbd.  Not with TLS (the bytes
 * must pass through OpenSSL), nor below SPLICE_READ_MIN, where the copy
 * costs less than the extra system calls.
 */
#define SPLICE_READ_MIN   (64 * 1024)
#define SPLICE_PIPE_BYTES (1024 * 1024)
/* Pipe room a read needs beyond its data: the header's page, and one
 * more page when the data does not start on a page boundary. */
#define SPLICE_HDR_SLOT   (2 * 4096)

static void worker_pipe_close(NbdWorker *w)
{
    if (w->pipe_cap && w->pipe[0] >= 0) {
        close(w->pipe[0]);
        close(w->pipe[1]);
    }
    w->pipe[0] = w->pipe[1] = -1;
}

/* The worker's pipe, made on first use; false if there is none. */
static bool worker_pipe(NbdWorker *w)
{
    int sz;

    if (w->pipe_cap) {
        return w->pipe[0] >= 0;
    }
    w->pipe_cap = 1;     /* tried */
    if (pipe2(w->pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
        w->pipe[0] = w->pipe[1] = -1;
        return false;
    }
    /*
     * 1 MiB is the unprivileged limit (fs.pipe-max-size) by default; with
     * CAP_SYS_RESOURCE twice that, so 1 MiB reads (QEMU's) splice too.
     */
    if (fcntl(w->pipe[1], F_SETPIPE_SZ, 2 * SPLICE_PIPE_BYTES) < 0) {
        fcntl(w->pipe[1], F_SETPIPE_SZ, SPLICE_PIPE_BYTES);
    }
    sz = fcntl(w->pipe[1], F_GETPIPE_SZ);
    if (sz < SPLICE_READ_MIN) {
        worker_pipe_close(w);         /* pipe_cap stays 1: tried */
        return false;
    }
    w->pipe_cap = (size_t)sz;
    return true;
}

void nbd_worker_close_pipe(NbdWorker *w)
{
    worker_pipe_close(w);
    w->pipe_cap = 0;
}

/*
 * 1 if the read is not for splicing (use pread), else the send's result.
 * The reply's header goes into the pipe ahead of the data, so header and
 * data leave in one splice: the client wakes once for the whole reply.
 */
static int read_splice(NbdClient *c, NbdWorker *w, const NbdRequest *req)
{
    uint8_t h[40];
    size_t hlen;
    int ret;

    /* The header takes a pipe buffer (a page) of its own. */
    if (c->ssl || !c->structured || req->len < SPLICE_READ_MIN ||
        !worker_pipe(w) || req->len + SPLICE_HDR_SLOT > w->pipe_cap) {
        return 1;
    }
    hlen = chunk_hdr(c, h, req, NBD_REPLY_FLAG_DONE,
                     NBD_REPLY_TYPE_OFFSET_DATA, req->len + 8);
    ferry_st_be64(h + hlen, req->offset);
    hlen += 8;
    ret = blk_splice_read(c->exp->blk, req->offset, req->len, w->pipe[1],
                          h, hlen);
    if (ret < 0) {
        if (ret != -ENOTSUP) {
            /* part of it may sit in the pipe: start over with a new one */
            nbd_worker_close_pipe(w);
        }
        return 1;
    }
    g_mutex_lock(&c->send_lock);
    ret = flush_queue_locked(c);
    if (ret == 0) {
        ret = HANGUP(c) ? -EPIPE : nbd_io_splice(c, w->pipe[0],
                                                 hlen + req->len);
    }
    if (ret < 0) {
        send_failed(c, ret);
        nbd_worker_close_pipe(w);     /* may hold the unsent rest */
    }
    send_unlock(c);
    return ret;
}

static int do_read(NbdClient *c, NbdWorker *w, const NbdRequest *req)
{
    NbdExport *exp = c->exp;
    uint8_t *buf;
    int ret;

    if (req->len == 0) {
        if (!c->structured) {
            return send_simple(c, req, 0);
        }
        return nbd_send_chunk(c, req, NBD_REPLY_FLAG_DONE,
                              NBD_REPLY_TYPE_NONE, NULL, 0, 0);
    }
    ret = read_splice(c, w, req);
    if (ret <= 0) {
        return ret;
    }
    buf = nbd_worker_buf(w, req->len);
    if (!buf) {
        return send_error(c, req, NBD_ENOMEM, "out of memory for the read");
    }
    ret = blk_pread(exp->blk, req->offset, req->len, buf, 0);
    if (ret < 0) {
        return send_errno(c, req, "read", ret);
    }
    if (!c->structured) {
        uint8_t *h = buf - 16;
        struct iovec iov = { .iov_base = h, .iov_len = 16 + req->len };
        ferry_st_be32(h, NBD_SIMPLE_REPLY_MAGIC);
        ferry_st_be32(h + 4, 0);
        ferry_st_be64(h + 8, req->cookie);
        return send_locked(c, &iov, 1);
    }
    if (req->flags & NBD_CMD_FLAG_DF) {
        return send_read_data(c, req, buf, req->len);
    }
    return send_read_sparse(c, req, buf);
}

static int do_write(NbdClient *c, const NbdRequest *req, const uint8_t *buf)
{
    NbdExport *exp = c->exp;
    uint32_t flags = (req->flags & NBD_CMD_FLAG_FUA) ? BLOCK_REQ_FUA : 0;
    int ret;

    if (req->len == 0) {
        return send_ok(c, req);
    }
    if (exp->detect_zeroes != NBD_DETECT_ZEROES_OFF &&
        buffer_is_zero(buf, req->len)) {
        if (exp->detect_zeroes == NBD_DETECT_ZEROES_UNMAP) {
            flags |= BLOCK_REQ_MAY_UNMAP;
        }
        ret = blk_pwrite_zeroes(exp->blk, req->offset, req->len, flags);
    } else {
        ret = blk_pwrite(exp->blk, req->offset, req->len, buf, flags);
    }
    return ret < 0 ? send_errno(c, req, "write", ret) : send_ok(c, req);
}

static int do_write_zeroes(NbdClient *c, const NbdRequest *req)
{
    uint32_t flags = 0;
    int ret;

    if (req->flags & NBD_CMD_FLAG_FUA) {
        flags |= BLOCK_REQ_FUA;
    }
    if (!(req->flags & NBD_CMD_FLAG_NO_HOLE)) {
        flags |= BLOCK_REQ_MAY_UNMAP;
    }
    if (req->flags & NBD_CMD_FLAG_FAST_ZERO) {
        flags |= BLOCK_REQ_NO_FALLBACK;
    }
    if (req->len == 0) {
        return send_ok(c, req);
    }
    ret = blk_pwrite_zeroes(c->exp->blk, req->offset, req->len, flags);
    if (ret == -ENOTSUP && (req->flags & NBD_CMD_FLAG_FAST_ZERO)) {
        return send_error(c, req, NBD_ENOTSUP, "fast zeroing is not "
                          "possible here");
    }
    return ret < 0 ? send_errno(c, req, "write zeroes", ret)
                   : send_ok(c, req);
}

static int do_trim(NbdClient *c, const NbdRequest *req)
{
    int ret = req->len ? blk_pdiscard(c->exp->blk, req->offset, req->len) : 0;

    if (ret == 0 && (req->flags & NBD_CMD_FLAG_FUA)) {
        ret = blk_flush(c->exp->blk);
    }
    return ret < 0 ? send_errno(c, req, "trim", ret) : send_ok(c, req);
}

/* CACHE: read the range through the graph so the layers below warm up. */
static int do_cache(NbdClient *c, NbdWorker *w, const NbdRequest *req)
{
    const uint64_t chunk = 1 << 20;
    uint64_t done = 0;
    uint8_t *buf = nbd_worker_buf(w, MIN(chunk, MAX(req->len, 1)));

    if (!buf) {
        return send_error(c, req, NBD_ENOMEM, "out of memory for cache");
    }
    while (done < req->len) {
        uint64_t n = MIN(chunk, req->len - done);
        int ret = blk_pread(c->exp->blk, req->offset + done, n, buf, 0);
        if (ret < 0) {
            return send_errno(c, req, "cache", ret);
        }
        done += n;
    }
    return send_ok(c, req);
}

static void execute(NbdClient *c, NbdWorker *w, const NbdRequest *req,
                    uint8_t *payload)
{
    int ret;

    switch (req->type) {
    case NBD_CMD_READ:
        do_read(c, w, req);
        break;
    case NBD_CMD_WRITE:
        do_write(c, req, payload);
        break;
    case NBD_CMD_FLUSH:
        ret = blk_flush(c->exp->blk);
        if (ret < 0) {
            send_errno(c, req, "flush", ret);
        } else {
            send_ok(c, req);
        }
        break;
    case NBD_CMD_TRIM:
        do_trim(c, req);
        break;
    case NBD_CMD_CACHE:
        do_cache(c, w, req);
        break;
    case NBD_CMD_WRITE_ZEROES:
        do_write_zeroes(c, req);
        break;
    case NBD_CMD_BLOCK_STATUS:
        nbd_meta_block_status(c, w, req);
        break;
    default:
        g_assert_not_reached();     /* nbd_request_check() let it through */
    }
}

/* -- the worker loop ------------------------------------------------------ */

/*
 * Receive one request (recv_lock held).  Returns the verdict; on OK or
 * ERROR *payload is the request's payload (or NULL), already read.
 */
static NbdReqVerdict receive(NbdClient *c, NbdWorker *w, NbdRequest *req,
                             uint32_t *err, const char **why,
                             uint8_t **payload)
{
    uint8_t hdr[32];
    NbdReqVerdict v;
    int ret;

    *payload = NULL;
    ret = nbd_io_read(c, hdr, c->extended ? 32 : 28);
    if (ret < 0) {
        if (ret != -ECONNRESET) {
            ferry_debug("nbd client %s: receive failed: %s", c->peer,
                        g_strerror(-ret));
        }
        return NBD_REQ_HANGUP;
    }
    if (!nbd_request_parse(hdr, c->extended, req)) {
        ferry_debug("nbd client %s: bad request magic 0x%08x", c->peer,
                    ferry_ld_be32(hdr));
        return NBD_REQ_HANGUP;
    }
    v = nbd_request_check(&c->tx, req, err, why);
    if (v == NBD_REQ_HANGUP) {
        ferry_debug("nbd client %s: %s", c->peer, *why);
        return v;
    }
    if (req->payload_len && v != NBD_REQ_DISC) {
        uint8_t *buf = v == NBD_REQ_OK ? nbd_worker_buf(w, req->payload_len)
                                       : NULL;
        if (!buf) {
            if (v == NBD_REQ_OK) {
                v = NBD_REQ_ERROR;
                *err = NBD_ENOMEM;
                *why = "out of memory for the write payload";
            }
            ret = nbd_io_skip(c, req->payload_len);
        } else {
            ret = nbd_io_read(c, buf, req->payload_len);
            *payload = buf;
        }
        if (ret < 0) {
            return NBD_REQ_HANGUP;
        }
    }
    return v;
}

/*
 * How many threads a connection uses adapts to its requests.  Small
 * reads and writes served from the page cache take a few microseconds:
 * one thread that receives, runs and replies in turn serves them best,
 * since every hand-off between threads costs a sleep and a wake-up, more
 * than the request itself, and the client needs a core too (4 KiB random
 * writes at queue depth 16: 131k IOPS with one thread, 122k with two).
 * Large requests are mostly copying: two threads (one receiving the next
 * payload while the other writes or sends one) overlap the copies.
 * Requests that wait for a disk or a remote server need many in flight.
 * So a second thread starts for a request that is not a small read or
 * write, or once requests are large on average; more start only when all
 * are busy and requests have lately taken longer than
 * NBD_SLOW_REQUEST_NS; and a surplus thread retires once they are fast
 * (and small) again.  A flush or a FUA write never leaves the socket
 * without a receiver.
 */
static bool small_request(const NbdRequest *req)
{
    return (req->type == NBD_CMD_READ ||
            (req->type == NBD_CMD_WRITE && !(req->flags & NBD_CMD_FLAG_FUA))) &&
           req->len < NBD_SMALL_REQUEST;
}

static bool requests_slow(NbdClient *c)
{
    return __atomic_load_n(&c->exec_ns, __ATOMIC_RELAXED) > NBD_SLOW_REQUEST_NS;
}

static bool requests_small(NbdClient *c)
{
    return __atomic_load_n(&c->avg_len, __ATOMIC_RELAXED) < NBD_SMALL_REQUEST;
}

static bool want_more_workers(NbdClient *c, const NbdRequest *req)
{
    if (requests_slow(c)) {
        return true;
    }
    return g_atomic_int_get(&c->nb_workers) < 2 &&
           !(small_request(req) && requests_small(c));
}

static bool surplus_worker(NbdClient *c)
{
    int workers = g_atomic_int_get(&c->nb_workers);
    int floor = requests_small(c) ? 1 : 2;

    return workers > floor && workers - g_atomic_int_get(&c->nb_busy) > 1 &&
           !requests_slow(c);
}

static void account(NbdClient *c, const NbdRequest *req, int64_t ns)
{
    int64_t avg = __atomic_load_n(&c->exec_ns, __ATOMIC_RELAXED);
    int64_t len = __atomic_load_n(&c->avg_len, __ATOMIC_RELAXED);

    /* Moving averages; racing updates lose a sample, nothing more. */
    __atomic_store_n(&c->exec_ns, avg + (ns - avg) / 8, __ATOMIC_RELAXED);
    if (req->type == NBD_CMD_READ || req->type == NBD_CMD_WRITE) {
        /* the bytes copied; a status or zeroing length copies nothing */
        __atomic_store_n(&c->avg_len, len + ((int64_t)req->len - len) / 8,
                         __ATOMIC_RELAXED);
    }
}

void nbd_client_work(NbdClient *c, bool may_retire)
{
    NbdWorker w = { .client = c, .pipe = { -1, -1 } };

    for (;;) {
        NbdRequest req;
        uint32_t err = 0;
        const char *why = NULL;
        uint8_t *payload;
        NbdReqVerdict v;
        int busy;
        int64_t t0;

        if (may_retire && surplus_worker(c)) {
            break;
        }
        g_mutex_lock(&c->recv_lock);
        if (__atomic_load_n(&c->dead, __ATOMIC_SEQ_CST)) {
            g_mutex_unlock(&c->recv_lock);
            break;
        }
        v = receive(c, &w, &req, &err, &why, &payload);
        if (v == NBD_REQ_HANGUP || v == NBD_REQ_DISC) {
            FERRY_TRACE_POINT(NBD, "client=%s %s", c->peer,
                              v == NBD_REQ_DISC ? "disconnect" : "hangup");
            g_mutex_lock(&c->state_lock);
            __atomic_store_n(&c->dead, true, __ATOMIC_SEQ_CST);
            if (v == NBD_REQ_HANGUP) {
                __atomic_store_n(&c->hangup, true, __ATOMIC_SEQ_CST);
            }
            g_mutex_unlock(&c->state_lock);
            g_mutex_unlock(&c->recv_lock);
            if (v == NBD_REQ_HANGUP) {
                shutdown(c->fd, SHUT_RDWR);
            }
            break;
        }
        /* Hand the socket on: another thread must be free to receive. */
        busy = g_atomic_int_add(&c->nb_busy, 1) + 1;
        if (busy >= g_atomic_int_get(&c->nb_workers) &&
            g_atomic_int_get(&c->nb_workers) < c->max_workers &&
            want_more_workers(c, &req)) {
            g_mutex_lock(&c->state_lock);
            if (!__atomic_load_n(&c->dead, __ATOMIC_SEQ_CST) &&
                c->nb_busy >= c->nb_workers &&
                c->nb_workers < c->max_workers) {
                nbd_client_spawn_worker_locked(c);
            }
            g_mutex_unlock(&c->state_lock);
        }
        g_mutex_unlock(&c->recv_lock);

        FERRY_TRACE_POINT(NBD, "client=%s cookie=0x%" G_GINT64_MODIFIER "x "
                          "type=%u flags=0x%x off=0x%" G_GINT64_MODIFIER
                          "x len=0x%" G_GINT64_MODIFIER "x", c->peer,
                          req.cookie, req.type, req.flags, req.offset,
                          req.len);
        t0 = g_get_monotonic_time();
        if (v == NBD_REQ_ERROR) {
            send_error(c, &req, err, why);
        } else {
            execute(c, &w, &req, payload);
        }
        account(c, &req, (g_get_monotonic_time() - t0) * 1000);
        nbd_worker_trim(&w);
        g_atomic_int_add(&c->nb_busy, -1);
    }
    nbd_worker_free(&w);
    nbd_worker_close_pipe(&w);
}
