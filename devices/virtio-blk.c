/*
 * virtio-blk: requests from the queues go to a BlockBackend with the block
 * layer's flat-buffer API, one call per guest buffer (no bounce).  Each
 * queue has an iothread that sleeps on an eventfd (the doorbell, wired by
 * KVM's ioeventfd when available) and serves the queue under vq->lock, so a
 * device reset waits for the request in flight (Virtual I/O Device 1.2, 5.2).
 */
#include "config.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "common/error.h"
#include "common/log.h"
#include "devices/virtio-blk.h"

typedef struct BlkQueue {
    struct VirtioBlk *b;
    int n;
    int efd;                    /* doorbell */
    GThread *thread;
    VirtQueueElement elem;
} BlkQueue;

struct VirtioBlk {
    VirtioDevice vdev;          /* first: the core's callbacks cast back */
    BlockBackend *blk;
    bool read_only;
    char serial[21];
    uint64_t capacity_sectors;
    int stop_fd;                /* wakes every iothread to exit */
    BlkQueue q[VIRTIO_MAX_QUEUES];
};

struct BlkHeader {
    uint32_t type;
    uint32_t reserved;
    uint64_t sector;
};

struct BlkDwzSeg {
    uint64_t sector;
    uint32_t num_sectors;
    uint32_t flags;             /* bit 0: unmap (write zeroes) */
};

static bool range_ok(VirtioBlk *b, uint64_t sector, uint64_t bytes)
{
    uint64_t cap = b->capacity_sectors;

    return sector <= cap && bytes / 512 <= cap - sector &&
           (bytes % 512 == 0);
}

/*
 * Read or write the data buffers of a request: iov[0..n) with skip bytes
 * at the start (the header) and trim at the end (the status byte).
 */
static int blk_rw_iov(VirtioBlk *b, bool write, uint64_t offset,
                      const struct iovec *iov, unsigned n, size_t skip,
                      size_t trim, uint64_t total)
{
    uint64_t left = total;

    for (unsigned i = 0; i < n && left > 0; i++) {
        uint8_t *p = iov[i].iov_base;
        size_t len = iov[i].iov_len;
        int r;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        p += skip;
        len -= skip;
        skip = 0;
        len = MIN(len, left);
        r = write ? blk_pwrite(b->blk, offset, len, p, 0)
                  : blk_pread(b->blk, offset, len, p, 0);
        if (r < 0) {
            return r;
        }
        offset += len;
        left -= len;
    }
    (void)trim;
    return 0;
}

static uint8_t blk_discard_zeroes(VirtioBlk *b, VirtQueueElement *e,
                                  uint32_t type)
{
    uint64_t bytes = e->out_bytes - sizeof(struct BlkHeader);
    unsigned nsegs;

    if (bytes == 0 || bytes % sizeof(struct BlkDwzSeg) ||
        bytes / sizeof(struct BlkDwzSeg) > VIRTIO_BLK_MAX_DWZ_SEGS) {
        return VIRTIO_BLK_S_UNSUPP;
    }
    if (b->read_only) {
        return VIRTIO_BLK_S_IOERR;
    }
    nsegs = bytes / sizeof(struct BlkDwzSeg);
    for (unsigned i = 0; i < nsegs; i++) {
        struct BlkDwzSeg s;
        int r;
        iov_to_buf(e->out, e->out_num,
                   sizeof(struct BlkHeader) + i * sizeof(s), &s, sizeof(s));
        if ((s.flags & ~1u) || (type == VIRTIO_BLK_T_DISCARD && s.flags)) {
            return VIRTIO_BLK_S_UNSUPP;
        }
        if (!range_ok(b, s.sector, (uint64_t)s.num_sectors * 512)) {
            return VIRTIO_BLK_S_IOERR;
        }
        if (type == VIRTIO_BLK_T_DISCARD) {
            r = blk_pdiscard(b->blk, s.sector * 512,
                             (int64_t)s.num_sectors * 512);
            if (r == -ENOTSUP) {
                r = 0;            /* discard is a hint */
            }
        } else {
            r = blk_pwrite_zeroes(b->blk, s.sector * 512,
                                  (int64_t)s.num_sectors * 512,
                                  (s.flags & 1) ? BLOCK_REQ_MAY_UNMAP : 0);
        }
        if (r < 0) {
            return VIRTIO_BLK_S_IOERR;
        }
    }
    return VIRTIO_BLK_S_OK;
}

/* Serve one request; returns the bytes written into its in-buffers. */
static uint32_t blk_handle(VirtioBlk *b, VirtQueue *vq, VirtQueueElement *e)
{
    struct BlkHeader h;
    uint8_t status = VIRTIO_BLK_S_OK;
    uint64_t data_in = e->in_bytes - 1;   /* without the status byte */
    uint32_t written = 1;
    int r;

    if (e->out_bytes < sizeof(h) || e->in_bytes < 1) {
        virtio_error(&b->vdev, "queue %d: request %u has no header or no "
                     "status byte", vq->index, e->head);
        return 0;
    }
    iov_to_buf(e->out, e->out_num, 0, &h, sizeof(h));
    switch (h.type) {
    case VIRTIO_BLK_T_IN:
        if (!range_ok(b, h.sector, data_in)) {
            status = VIRTIO_BLK_S_IOERR;
            break;
        }
        r = blk_rw_iov(b, false, h.sector * 512, e->in, e->in_num, 0, 1,
                       data_in);
        status = r < 0 ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK;
        written += data_in;
        break;
    case VIRTIO_BLK_T_OUT: {
        uint64_t data_out = e->out_bytes - sizeof(h);
        if (b->read_only || !range_ok(b, h.sector, data_out)) {
            status = VIRTIO_BLK_S_IOERR;
            break;
        }
        r = blk_rw_iov(b, true, h.sector * 512, e->out, e->out_num,
                       sizeof(h), 0, data_out);
        status = r < 0 ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK;
        break;
    }
    case VIRTIO_BLK_T_FLUSH:
        status = blk_flush(b->blk) < 0 ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK;
        break;
    case VIRTIO_BLK_T_GET_ID: {
        char id[20] = { 0 };
        size_t n = MIN(data_in, sizeof(id));
        memcpy(id, b->serial, strnlen(b->serial, sizeof(id)));
        iov_from_buf(e->in, e->in_num, 0, id, n);
        written += n;
        break;
    }
    case VIRTIO_BLK_T_DISCARD:
    case VIRTIO_BLK_T_WRITE_ZEROES:
        status = blk_discard_zeroes(b, e, h.type);
        break;
    default:
        status = VIRTIO_BLK_S_UNSUPP;
        break;
    }
    FERRY_TRACE_POINT(DEVICES, "virtio-blk q=%d type=%u sector=0x%"
                      G_GINT64_MODIFIER "x status=%u", vq->index, h.type,
                      h.sector, status);
    /* the status byte is the last byte of the last writable buffer */
    iov_from_buf(e->in, e->in_num, e->in_bytes - 1, &status, 1);
    return written;
}

/*
 * After serving a batch, keep doorbells off and watch the ring a little
 * before sleeping: a driver at queue depth 1 submits its next request
 * within microseconds, while a doorbell costs a VM exit (about 100 us on a
 * paravirtual KVM, a few us on hardware) plus a thread wake-up.  Drivers
 * that honour notification suppression (event idx or NO_NOTIFY) then run
 * without exits while the device is busy.
 */
#define BLK_POLL_US 200

static bool blk_poll_ring(VirtQueue *vq)
{
    gint64 end = g_get_monotonic_time() + BLK_POLL_US;

    do {
        if (!virtqueue_ready(vq)) {
            return false;
        }
        if (__atomic_load_n(&vq->avail[1], __ATOMIC_ACQUIRE) !=
            vq->last_avail_idx) {
            return true;
        }
        __builtin_ia32_pause();
    } while (g_get_monotonic_time() < end);
    return false;
}

static void blk_process_queue(BlkQueue *q)
{
    VirtQueue *vq = &q->b->vdev.vq[q->n];
    int r = 0;

    g_mutex_lock(&vq->lock);
    for (;;) {
        bool done_any = false;
        virtqueue_set_notification(vq, false);
        while ((r = virtqueue_pop(vq, &q->elem)) == 1) {
            uint32_t len = blk_handle(q->b, vq, &q->elem);
            if (virtio_broken(&q->b->vdev)) {
                break;
            }
            virtqueue_push(vq, &q->elem, len);
            done_any = true;
        }
        if (done_any) {
            virtqueue_notify(vq);
        }
        if (r < 0 || virtio_broken(&q->b->vdev)) {
            break;
        }
        if (blk_poll_ring(vq)) {
            continue;
        }
        if (!virtqueue_set_notification(vq, true)) {
            break;
        }
    }
    g_mutex_unlock(&vq->lock);
}

static gpointer blk_iothread(gpointer opaque)
{
    BlkQueue *q = opaque;
    struct pollfd fds[2] = {
        { .fd = q->efd, .events = POLLIN },
        { .fd = q->b->stop_fd, .events = POLLIN },
    };

    for (;;) {
        uint64_t cnt;
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            break;
        }
        if (fds[1].revents) {
            break;
        }
        if (fds[0].revents && read(q->efd, &cnt, sizeof(cnt)) > 0) {
            blk_process_queue(q);
        }
    }
    return NULL;
}

static void blk_notify(VirtioDevice *vdev, VirtQueue *vq)
{
    VirtioBlk *b = (VirtioBlk *)vdev;
    uint64_t one = 1;

    if (write(b->q[vq->index].efd, &one, sizeof(one)) < 0) {
        FERRY_TRACE_POINT(DEVICES, "virtio-blk kick failed q=%d", vq->index);
    }
}

static int blk_queue_fd(VirtioDevice *vdev, int n)
{
    return ((VirtioBlk *)vdev)->q[n].efd;
}

static void put_le(uint8_t *p, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static void blk_get_config(VirtioDevice *vdev, uint8_t *c)
{
    VirtioBlk *b = (VirtioBlk *)vdev;

    memset(c, 0, VIRTIO_BLK_CONFIG_BYTES);
    put_le(c + 0, b->capacity_sectors, 8);
    put_le(c + 12, VIRTQUEUE_MAX_SIZE - 2, 4);        /* seg_max */
    put_le(c + 20, 512, 4);                           /* blk_size */
    c[32] = 1;                                        /* writeback */
    put_le(c + 34, vdev->nr_queues, 2);
    put_le(c + 36, 0x3fffff, 4);                      /* max_discard_sectors */
    put_le(c + 40, VIRTIO_BLK_MAX_DWZ_SEGS, 4);
    put_le(c + 44, 1, 4);                             /* discard alignment */
    put_le(c + 48, 0x3fffff, 4);                      /* max_write_zeroes */
    put_le(c + 52, VIRTIO_BLK_MAX_DWZ_SEGS, 4);
    c[56] = 1;                                        /* may unmap */
}

static const VirtioDeviceOps virtio_blk_ops = {
    .name       = "virtio-blk",
    .device_id  = 2,
    .notify     = blk_notify,
    .get_config = blk_get_config,
    .queue_fd   = blk_queue_fd,
};

VirtioBlk *virtio_blk_new(DevBus *bus, const VirtioBlkConf *conf,
                          GError **errp)
{
    VirtioBlk *b = g_new0(VirtioBlk, 1);
    int64_t len = blk_getlength(conf->blk);
    int nq = conf->num_queues ? conf->num_queues : 1;
    uint16_t qs = conf->queue_size ? conf->queue_size : 256;
    uint64_t features = (1ull << VIRTIO_BLK_F_SEG_MAX) |
                        (1ull << VIRTIO_BLK_F_BLK_SIZE) |
                        (1ull << VIRTIO_BLK_F_FLUSH) |
                        (1ull << VIRTIO_BLK_F_DISCARD) |
                        (1ull << VIRTIO_BLK_F_WRITE_ZEROES);

    if (len < 0) {
        ferry_error_setg_errno(errp, (int)-len, "virtio-blk: disk length");
        g_free(b);
        return NULL;
    }
    if (nq < 1 || nq > VIRTIO_MAX_QUEUES || qs > VIRTQUEUE_MAX_SIZE ||
        (qs & (qs - 1))) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "virtio-blk: num-queues %d (1..%d) or queue-size %u "
                        "(power of two up to %d) out of range", nq,
                        VIRTIO_MAX_QUEUES, qs, VIRTQUEUE_MAX_SIZE);
        g_free(b);
        return NULL;
    }
    if (nq > 1) {
        features |= 1ull << VIRTIO_BLK_F_MQ;
    }
    if (conf->read_only) {
        features |= 1ull << VIRTIO_BLK_F_RO;
    }
    virtio_device_init(&b->vdev, &virtio_blk_ops, bus, features, nq, qs,
                       VIRTIO_BLK_CONFIG_BYTES);
    b->blk = conf->blk;
    b->read_only = conf->read_only;
    b->capacity_sectors = (uint64_t)len / 512;
    g_strlcpy(b->serial, conf->serial ? conf->serial : "", sizeof(b->serial));
    b->stop_fd = eventfd(0, EFD_CLOEXEC);
    for (int i = 0; i < nq; i++) {
        BlkQueue *q = &b->q[i];
        q->b = b;
        q->n = i;
        q->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        virtqueue_element_init(&q->elem);
        g_autofree char *name = g_strdup_printf("iothread-blk%d", i);
        q->thread = g_thread_new(name, blk_iothread, q);
    }
    return b;
}

VirtioDevice *virtio_blk_vdev(VirtioBlk *b)
{
    return &b->vdev;
}

BlockBackend *virtio_blk_backend(VirtioBlk *b)
{
    return b->blk;
}

void virtio_blk_free(VirtioBlk *b)
{
    uint64_t one = 1;

    if (!b) {
        return;
    }
    if (write(b->stop_fd, &one, sizeof(one)) < 0) {
        ferry_warn("virtio-blk: cannot stop iothreads: %s", g_strerror(errno));
    }
    for (int i = 0; i < b->vdev.nr_queues; i++) {
        g_thread_join(b->q[i].thread);
        close(b->q[i].efd);
        virtqueue_element_free(&b->q[i].elem);
    }
    close(b->stop_fd);
    virtio_device_cleanup(&b->vdev);
    g_free(b);
}
