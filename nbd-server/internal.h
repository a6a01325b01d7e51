/*
 * Private to nbd-server/: the protocol's numbers (NBD spec, "Values"),
 * the export, server and client records, and the functions the files of
 * this directory share.  Grouped by the file that defines them.
 */
#ifndef FERRY_NBD_SERVER_INTERNAL_H
#define FERRY_NBD_SERVER_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include <glib.h>

#include "blockdev/backend.h"
#include "blockdev/bitmap.h"
#include "common/bytes.h"
#include "nbd-server/nbd-server.h"

/* -- protocol numbers ----------------------------------------------------- */

#define NBD_MAGIC                   UINT64_C(0x4e42444d41474943) /* NBDMAGIC */
#define NBD_OPTS_MAGIC              UINT64_C(0x49484156454F5054) /* IHAVEOPT */
#define NBD_REP_MAGIC               UINT64_C(0x0003e889045565a9)
#define NBD_REQUEST_MAGIC           0x25609513u
#define NBD_EXTENDED_REQUEST_MAGIC  0x21e41c71u
#define NBD_SIMPLE_REPLY_MAGIC      0x67446698u
#define NBD_STRUCTURED_REPLY_MAGIC  0x668e33efu
#define NBD_EXTENDED_REPLY_MAGIC    0x6e8a278cu

/* Handshake flags (server) and client flags. */
#define NBD_FLAG_FIXED_NEWSTYLE     (1u << 0)
#define NBD_FLAG_NO_ZEROES          (1u << 1)
#define NBD_FLAG_C_FIXED_NEWSTYLE   (1u << 0)
#define NBD_FLAG_C_NO_ZEROES        (1u << 1)

/* Transmission flags. */
#define NBD_FLAG_HAS_FLAGS          (1u << 0)
#define NBD_FLAG_READ_ONLY          (1u << 1)
#define NBD_FLAG_SEND_FLUSH         (1u << 2)
#define NBD_FLAG_SEND_FUA           (1u << 3)
#define NBD_FLAG_ROTATIONAL         (1u << 4)
#define NBD_FLAG_SEND_TRIM          (1u << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES  (1u << 6)
#define NBD_FLAG_SEND_DF            (1u << 7)
#define NBD_FLAG_CAN_MULTI_CONN     (1u << 8)
#define NBD_FLAG_SEND_CACHE         (1u << 10)
#define NBD_FLAG_SEND_FAST_ZERO     (1u << 11)

/* Options. */
#define NBD_OPT_EXPORT_NAME         1
#define NBD_OPT_ABORT               2
#define NBD_OPT_LIST                3
#define NBD_OPT_STARTTLS            5
#define NBD_OPT_INFO                6
#define NBD_OPT_GO                  7
#define NBD_OPT_STRUCTURED_REPLY    8
#define NBD_OPT_LIST_META_CONTEXT   9
#define NBD_OPT_SET_META_CONTEXT    10
#define NBD_OPT_EXTENDED_HEADERS    11

/* Option replies. */
#define NBD_REP_ACK                 1u
#define NBD_REP_SERVER              2u
#define NBD_REP_INFO                3u
#define NBD_REP_META_CONTEXT        4u
#define NBD_REP_ERR(n)              ((1u << 31) | (n))
#define NBD_REP_ERR_UNSUP           NBD_REP_ERR(1)
#define NBD_REP_ERR_POLICY          NBD_REP_ERR(2)
#define NBD_REP_ERR_INVALID         NBD_REP_ERR(3)
#define NBD_REP_ERR_PLATFORM        NBD_REP_ERR(4)
#define NBD_REP_ERR_TLS_REQD        NBD_REP_ERR(5)
#define NBD_REP_ERR_UNKNOWN         NBD_REP_ERR(6)
#define NBD_REP_ERR_SHUTDOWN        NBD_REP_ERR(7)
#define NBD_REP_ERR_BLOCK_SIZE_REQD NBD_REP_ERR(8)
#define NBD_REP_ERR_TOO_BIG         NBD_REP_ERR(9)
#define NBD_REP_ERR_EXT_HEADER_REQD NBD_REP_ERR(10)

/* NBD_REP_INFO types. */
#define NBD_INFO_EXPORT             0
#define NBD_INFO_NAME               1
#define NBD_INFO_DESCRIPTION        2
#define NBD_INFO_BLOCK_SIZE         3

/* Commands and command flags. */
#define NBD_CMD_READ                0
#define NBD_CMD_WRITE               1
#define NBD_CMD_DISC                2
#define NBD_CMD_FLUSH               3
#define NBD_CMD_TRIM                4
#define NBD_CMD_CACHE               5
#define NBD_CMD_WRITE_ZEROES        6
#define NBD_CMD_BLOCK_STATUS        7

#define NBD_CMD_FLAG_FUA            (1u << 0)
#define NBD_CMD_FLAG_NO_HOLE        (1u << 1)
#define NBD_CMD_FLAG_DF             (1u << 2)
#define NBD_CMD_FLAG_REQ_ONE        (1u << 3)
#define NBD_CMD_FLAG_FAST_ZERO      (1u << 4)
#define NBD_CMD_FLAG_PAYLOAD_LEN    (1u << 5)

/* Structured reply flags and chunk types. */
#define NBD_REPLY_FLAG_DONE         (1u << 0)
#define NBD_REPLY_TYPE_NONE         0
#define NBD_REPLY_TYPE_OFFSET_DATA  1
#define NBD_REPLY_TYPE_OFFSET_HOLE  2
#define NBD_REPLY_TYPE_BLOCK_STATUS 5
#define NBD_REPLY_TYPE_BLOCK_STATUS_EXT 6
#define NBD_REPLY_TYPE_ERROR        ((1u << 15) | 1)
#define NBD_REPLY_TYPE_ERROR_OFFSET ((1u << 15) | 2)

/* Error values on the wire. */
#define NBD_EPERM                   1
#define NBD_EIO                     5
#define NBD_ENOMEM                  12
#define NBD_EINVAL                  22
#define NBD_ENOSPC                  28
#define NBD_EOVERFLOW               75
#define NBD_ENOTSUP                 95
#define NBD_ESHUTDOWN               108

/* base:allocation and qemu:dirty-bitmap flags. */
#define NBD_STATE_HOLE              (1u << 0)
#define NBD_STATE_ZERO              (1u << 1)
#define NBD_STATE_DIRTY             (1u << 0)

/* -- limits -------------------------------------------------------------- */

#define NBD_MAX_STRING              4096         /* names, queries */
#define NBD_MAX_OPTION_BYTES        (64 * 1024)  /* larger: hard disconnect */
#define NBD_MAX_PAYLOAD             (32u << 20)  /* advertised maximum */
#define NBD_PREFERRED_BLOCK         4096u
#define NBD_MAX_EXTENTS             (64 * 1024)  /* per status chunk */
#define NBD_MAX_OPTIONS             1024         /* per negotiation */
#define NBD_MAX_META_QUERIES        128
#define NBD_DEFAULT_WORKERS         16
#define NBD_SLOW_REQUEST_NS         30000  /* slower: run more in parallel */
#define NBD_SMALL_REQUEST           (64 * 1024)  /* one thread serves these */
#define NBD_BUF_HEADROOM            4096  /* room for a reply header */
#define NBD_BUF_KEEP                (8u << 20)   /* worker buffers kept */
#define NBD_RECV_BUF                (64 * 1024)
#define NBD_OUTQ_BYTES              (128 * 1024) /* queued small replies */
#define NBD_OUTQ_SMALL              (8 * 1024 + 64) /* largest one queued */

/* -- records -------------------------------------------------------------- */

struct NbdExport {
    int refcnt;                   /* atomic */
    char *name;
    char *description;
    BlockBackend *blk;            /* holds a reference */
    BlockNode *node;              /* blk's root, for status and bitmaps */
    int64_t size;                 /* bytes, fixed while exported */
    bool readonly;
    bool allocation_depth;
    NbdDetectZeroes detect_zeroes;
    uint32_t min_block;           /* bytes: the node's request alignment */
    BlockDirtyBitmap **bitmaps;   /* exported bitmaps; busy while here */
    unsigned nb_bitmaps;
};

/* What SET_META_CONTEXT selected; ids are what the client was told. */
#define NBD_META_ID_BASE            1
#define NBD_META_ID_DEPTH           2
#define NBD_META_ID_BITMAP0         3

typedef struct NbdMetaSel {
    bool base_allocation;
    bool allocation_depth;
    bool *bitmaps;                /* per export bitmap; NULL if none */
    unsigned count;               /* contexts selected in total */
    char *export_name;            /* the export SET referred to */
} NbdMetaSel;

/* A request header as parsed, whichever header style carried it. */
typedef struct NbdRequest {
    uint16_t flags;
    uint16_t type;
    uint64_t cookie;
    uint64_t offset;
    uint64_t len;                 /* effect length (or payload for WRITE) */
    uint64_t payload_len;         /* bytes that follow the header */
} NbdRequest;

/* What the validation of a request decided. */
typedef enum {
    NBD_REQ_OK,                   /* execute it */
    NBD_REQ_ERROR,                /* reply with *err, do not execute */
    NBD_REQ_DISC,                 /* NBD_CMD_DISC: soft disconnect */
    NBD_REQ_HANGUP,               /* protocol violation: hard disconnect */
} NbdReqVerdict;

/* The negotiated facts request validation needs (a pure input). */
typedef struct NbdTxInfo {
    int64_t size;
    uint32_t min_block;
    uint16_t tx_flags;            /* as advertised */
    bool structured;
    bool extended;
    unsigned meta_count;          /* contexts selected */
} NbdTxInfo;

typedef struct NbdWorker NbdWorker;
typedef struct NbdClient NbdClient;

struct NbdServer {
    NbdServerConfig cfg;
    GMutex lock;                  /* guards the fields below */
    GCond cond;                   /* clients leaving, slots freeing */
    GPtrArray *exports;           /* NbdExport*, owned */
    GPtrArray *listeners;         /* int fds (GINT_TO_POINTER) */
    GPtrArray *unix_paths;        /* char*, unlinked at free */
    GList *clients;               /* NbdClient* connected now */
    unsigned nb_clients;
    uint64_t served;              /* clients accepted so far */
    int wake_fd;                  /* eventfd: shutdown, slot free */
    volatile int shutting_down;   /* atomic */
    int64_t buf_bytes;            /* atomic: worker buffer bytes held */
    uint64_t failed_requests;     /* atomic: requests answered with errors */
};

struct NbdWorker {
    NbdClient *client;
    uint8_t *mem;                 /* posix_memalign'd; data at +HEADROOM */
    size_t cap;                   /* bytes usable after the headroom */
    uint8_t *ext_buf;             /* block status descriptors */
    size_t ext_cap;               /* bytes */
    int pipe[2];                  /* zero-copy reads (request.c); -1: none */
    size_t pipe_cap;              /* bytes the pipe holds; 0: not tried */
};

struct NbdClient {
    NbdServer *server;
    int fd;
    char *peer;                   /* "unix" or "host:port", for logs */
    void *ssl;                    /* SSL*, NULL without TLS */
    GMutex ssl_lock;              /* SSL is not thread-safe */
    int64_t deadline_us;          /* negotiation: g_get_monotonic_time */

    /* receive side: guarded by recv_lock (held by the receiving worker) */
    GMutex recv_lock;
    uint8_t *rbuf;                /* NBD_RECV_BUF bytes of read-ahead */
    size_t rpos, rlen;            /* unread bytes are rbuf[rpos..rlen) */
    bool small_ahead;             /* large payloads lately: read ahead less */

    /* send side: see "Sending replies" in request.c */
    GMutex send_lock;             /* held by the thread writing the socket */
    GMutex out_lock;              /* guards the queue below (briefly) */
    uint8_t *outq[2];             /* NBD_OUTQ_BYTES each; double buffer */
    int outq_cur;                 /* the buffer being appended to */
    size_t outq_len;              /* bytes queued in outq[outq_cur] */

    /* negotiated: written during negotiation only, then read-only */
    NbdExport *exp;               /* holds a reference in transmission */
    bool fixed;                   /* client set C_FIXED_NEWSTYLE */
    bool no_zeroes;
    bool structured;
    bool extended;
    bool tls_done;
    NbdMetaSel meta;
    NbdTxInfo tx;

    /* workers: spawning is guarded by state_lock */
    GMutex state_lock;
    GCond state_cond;
    int nb_workers;               /* threads alive; atomic reads */
    int nb_busy;                  /* atomic: executing a request */
    int max_workers;
    int64_t exec_ns;              /* atomic: moving average per request */
    int64_t avg_len;              /* atomic: moving average of lengths */
    bool dead;                    /* atomic: stop receiving, drain out */
    bool hangup;                  /* atomic: hard disconnect, no replies */
};

/* -- server.c ------------------------------------------------------------- */

NbdExport *nbd_server_find_export(NbdServer *srv, const char *name,
                                  size_t len);
void nbd_client_unref(NbdClient *c);
/* Start another worker thread for c (state_lock held). */
bool nbd_client_spawn_worker_locked(NbdClient *c);
/* Worker buffer of at least len bytes after the headroom; NULL: ENOMEM. */
uint8_t *nbd_worker_buf(NbdWorker *w, size_t len);
void nbd_worker_trim(NbdWorker *w);
void nbd_worker_free(NbdWorker *w);
void nbd_worker_close_pipe(NbdWorker *w);   /* request.c */

/* -- io.c ------------------------------------------------------------------ */

/* Read exactly len bytes: 0, -ECONNRESET at EOF, -ETIMEDOUT, -errno. */
int nbd_io_read(NbdClient *c, void *buf, size_t len);
/* Discard len bytes of input. */
int nbd_io_skip(NbdClient *c, uint64_t len);
/* Write all of iov (the caller holds send_lock or is negotiating). */
int nbd_io_writev(NbdClient *c, struct iovec *iov, int iovcnt);
int nbd_io_write(NbdClient *c, const void *buf, size_t len);
/* Move len bytes from the pipe pipe_rd to the client (send_lock held). */
int nbd_io_splice(NbdClient *c, int pipe_rd, size_t len);

/* -- negotiate.c ----------------------------------------------------------- */

/* Run the handshake; true when transmission may start (c->exp set). */
bool nbd_negotiate(NbdClient *c);
uint16_t nbd_tx_flags(NbdClient *c, NbdExport *exp);

/*
 * Parse the data of NBD_OPT_INFO/GO: name (pointer into data, not
 * terminated) and the information requests.  Returns 0 or an NBD_REP_ERR.
 */
typedef struct NbdInfoRequest {
    const char *name;
    uint32_t name_len;
    uint16_t nb_infos;
    bool want_name, want_description, want_block_size;
} NbdInfoRequest;
uint32_t nbd_parse_info_request(const uint8_t *data, uint32_t len,
                                NbdInfoRequest *out);

/* -- meta-context.c ------------------------------------------------------- */

/*
 * Parse LIST/SET_META_CONTEXT data and fill replies: calls emit(id, name)
 * for each context matched.  Returns 0 or an NBD_REP_ERR (nothing of sel
 * changed then).  sel is NULL for LIST.
 */
typedef void (*NbdMetaEmit)(void *opaque, uint32_t id, const char *name);
uint32_t nbd_meta_parse(NbdServer *srv, const uint8_t *data, uint32_t len,
                        NbdMetaSel *sel, NbdMetaEmit emit, void *opaque);
void nbd_meta_clear(NbdMetaSel *sel);
/* Answer NBD_CMD_BLOCK_STATUS: send one chunk per selected context. */
int nbd_meta_block_status(NbdClient *c, NbdWorker *w, const NbdRequest *req);

/* -- request.c ------------------------------------------------------------ */

/* Parse a request header (28 or 32 bytes); false: bad magic. */
bool nbd_request_parse(const uint8_t *hdr, bool extended, NbdRequest *req);
/* Check a request against what was negotiated (a pure function). */
NbdReqVerdict nbd_request_check(const NbdTxInfo *tx, const NbdRequest *req,
                                uint32_t *err, const char **why);
/* The transmission phase: the body of every worker thread of c; the
 * connection's first thread passes may_retire = false. */
void nbd_client_work(NbdClient *c, bool may_retire);
/* Send one chunk (structured/extended) or a simple reply with payload. */
int nbd_send_chunk(NbdClient *c, const NbdRequest *req, uint16_t flags,
                   uint16_t type, struct iovec *payload, int npayload,
                   size_t payload_len);
uint32_t nbd_errno_to_wire(int err);

/* -- tls.c ---------------------------------------------------------------- */

/* Run the TLS handshake on c->fd; false on failure (log line given). */
bool nbd_tls_accept(NbdClient *c, NbdTls *tls);
void nbd_tls_close(NbdClient *c);
/* Data through c->ssl: >0 bytes, 0 at EOF, -errno (-EAGAIN: poll). */
ssize_t nbd_tls_read(NbdClient *c, void *buf, size_t len, int *want);
ssize_t nbd_tls_write(NbdClient *c, const void *buf, size_t len, int *want);

#endif
