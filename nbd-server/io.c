/*
 * Bytes to and from one NBD client: blocking reads through a read-ahead
 * buffer (so a burst of small requests costs one recv), gathered writes
 * (a reply is one sendmsg), TLS through tls.c, and the negotiation
 * deadline that keeps a slow or silent client from holding a slot.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "nbd-server/internal.h"

/* Wait for fd to be ready for events, honouring the negotiation deadline. */
static int wait_fd(NbdClient *c, short events)
{
    struct pollfd pfd = { .fd = c->fd, .events = events };
    int timeout = -1;
    int ret;

    if (c->deadline_us) {
        int64_t left = c->deadline_us - g_get_monotonic_time();
        if (left <= 0) {
            return -ETIMEDOUT;
        }
        timeout = (int)MIN(left / 1000 + 1, INT32_MAX);
    }
    do {
        ret = poll(&pfd, 1, timeout);
    } while (ret < 0 && errno == EINTR);
    if (ret < 0) {
        return -errno;
    }
    return ret == 0 ? -ETIMEDOUT : 0;
}

/*
 * One read from the transport: > 0 bytes, 0 at EOF, or -errno.  With
 * waitall (a payload we know is coming whole) the kernel gathers it
 * before waking us, instead of once per arriving segment.
 */
static ssize_t recv_some(NbdClient *c, void *buf, size_t len, bool waitall)
{
    for (;;) {
        ssize_t n;
        int ret;

        if (c->ssl) {
            int want = POLLIN;
            n = nbd_tls_read(c, buf, len, &want);
            if (n != -EAGAIN) {
                return n;
            }
            ret = wait_fd(c, (short)want);
        } else {
            if (c->deadline_us && (ret = wait_fd(c, POLLIN)) < 0) {
                return ret;
            }
            n = recv(c->fd, buf, len,
                     waitall && !c->deadline_us ? MSG_WAITALL : 0);
            if (n >= 0) {
                return n;
            }
            if (errno == EINTR) {
                continue;
            }
            if (errno != EAGAIN) {
                return -errno;
            }
            ret = wait_fd(c, POLLIN);
        }
        if (ret < 0) {
            return ret;
        }
    }
}

/*
 * Read-ahead pays for a burst of headers and small writes (one recv for
 * many requests) but costs a second copy of large payloads; so after a
 * large payload the next refill reads ahead only a little.
 */
#define DIRECT_MIN      8192
#define SMALL_AHEAD     4096

int nbd_io_read(NbdClient *c, void *buf, size_t len)
{
    uint8_t *p = buf;

    if (len >= DIRECT_MIN) {
        c->small_ahead = true;
    } else if (len > 64) {
        c->small_ahead = false;     /* small payloads: read ahead fully */
    }
    while (len > 0) {
        ssize_t n;

        if (c->rpos < c->rlen) {
            n = MIN(len, c->rlen - c->rpos);
            memcpy(p, c->rbuf + c->rpos, n);
            c->rpos += n;
        } else if (len >= DIRECT_MIN) {
            /* A large payload goes straight to its buffer. */
            n = recv_some(c, p, len, true);
        } else {
            n = recv_some(c, c->rbuf, c->small_ahead ? SMALL_AHEAD
                                                     : NBD_RECV_BUF, false);
            if (n > 0) {
                c->rpos = 0;
                c->rlen = n;
                continue;
            }
        }
        if (n == 0) {
            return -ECONNRESET;
        }
        if (n < 0) {
            return (int)n;
        }
        p += n;
        len -= n;
    }
    return 0;
}

int nbd_io_skip(NbdClient *c, uint64_t len)
{
    uint8_t scratch[16384];

    while (len > 0) {
        size_t n = MIN(len, sizeof(scratch));
        int ret = nbd_io_read(c, scratch, n);
        if (ret < 0) {
            return ret;
        }
        len -= n;
    }
    return 0;
}

static int tls_write_all(NbdClient *c, const uint8_t *p, size_t len)
{
    while (len > 0) {
        int want = POLLOUT;
        ssize_t n = nbd_tls_write(c, p, len, &want);
        if (n == -EAGAIN) {
            int ret = wait_fd(c, (short)want);
            if (ret < 0) {
                return ret;
            }
            continue;
        }
        if (n < 0) {
            return (int)n;
        }
        p += n;
        len -= n;
    }
    return 0;
}

/* After a send that failed with errno: 0 to try again, or -errno. */
static int send_wait(NbdClient *c)
{
    if (errno == EINTR) {
        return 0;
    }
    if (errno != EAGAIN) {
        return -errno;
    }
    return wait_fd(c, POLLOUT);
}

int nbd_io_writev(NbdClient *c, struct iovec *iov, int iovcnt)
{
    if (c->ssl) {
        for (int i = 0; i < iovcnt; i++) {
            int ret = tls_write_all(c, iov[i].iov_base, iov[i].iov_len);
            if (ret < 0) {
                return ret;
            }
        }
        return 0;
    }
    while (iovcnt > 0) {
        struct msghdr msg = { .msg_iov = iov, .msg_iovlen = iovcnt };
        int flags = MSG_NOSIGNAL | (c->deadline_us ? MSG_DONTWAIT : 0);
        ssize_t n = sendmsg(c->fd, &msg, flags);

        if (n < 0) {
            int ret = send_wait(c);
            if (ret < 0) {
                return ret;
            }
            continue;
        }
        /* Step past what went out; a partial write resumes mid-iovec. */
        while (iovcnt > 0 && (size_t)n >= iov->iov_len) {
            n -= iov->iov_len;
            iov++;
            iovcnt--;
        }
        if (iovcnt > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + n;
            iov->iov_len -= n;
        }
    }
    return 0;
}

int nbd_io_write(NbdClient *c, const void *buf, size_t len)
{
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };

    return nbd_io_writev(c, &iov, 1);
}

int nbd_io_splice(NbdClient *c, int pipe_rd, size_t len)
{
    g_assert(!c->ssl);
    while (len > 0) {
        ssize_t n = splice(pipe_rd, NULL, c->fd, NULL, len,
                           SPLICE_F_MOVE | SPLICE_F_MORE);
        if (n < 0) {
            int ret = send_wait(c);
            if (ret < 0) {
                return ret;
            }
            continue;
        }
        if (n == 0) {
            return -EIO;
        }
        len -= (size_t)n;
    }
    return 0;
}
