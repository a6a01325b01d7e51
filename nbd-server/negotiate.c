/*
 * The NBD handshake, server side: fixed newstyle negotiation and option
 * haggling (NBD spec, "Newstyle negotiation", "Fixed newstyle negotiation",
 * "Option types"), TLS upgrade through tls.c, meta contexts through
 * meta-context.c.  Oldstyle and non-fixed newstyle beyond EXPORT_NAME are
 * not offered.  Everything here runs on the client's first thread.
 *
 * Invariants:
 *   1. Every option the client sends gets exactly one final reply (ACK or
 *      an error) unless we hang up; LIST and the meta-context options send
 *      their partial replies first.
 *   2. With TLS configured (FORCEDTLS), nothing about an export is told and
 *      no state changes before the TLS handshake succeeded.
 *   3. A successful STARTTLS forgets every earlier negotiated state
 *      (structured replies, extended headers, meta contexts).
 *   4. The option data we buffer is at most NBD_MAX_OPTION_BYTES; a client
 *      that announces more is cut off rather than served.
 *
 * States (nbd_negotiate() walks them in order; all but 5 end the
 * connection on an I/O error or the deadline):
 *   1. GREETING      we send NBDMAGIC, IHAVEOPT, handshake flags
 *                    (FIXED_NEWSTYLE | NO_ZEROES).                 -> 2
 *   2. CLIENT_FLAGS  we read 32 bits; unknown bits                 -> 6
 *                    otherwise                                     -> 3
 *   3. OPTIONS       we read an option header and its data:
 *                    EXPORT_NAME with a known export               -> 4
 *                    EXPORT_NAME otherwise (or after EXTENDED)     -> 6
 *                    GO answered with ACK                          -> 5
 *                    ABORT (we ACK)                                -> 6
 *                    STARTTLS answered with ACK                    -> 3a
 *                    any other option (replied)                    -> 3
 *                    bad magic, oversized data, too many options   -> 6
 *   3a. TLS          handshake_tls(): handshake OK, state reset    -> 3
 *                    handshake failed                              -> 6
 *   4. EXPORT_INFO   we send size, flags (and 124 zeroes unless
 *                    NO_ZEROES)                                    -> 5
 *   5. TRANSMISSION  request.c takes over (nbd_client_work()).
 *   6. CLOSED        the caller closes the socket.
 */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>

#include "common/log.h"
#include "nbd-server/internal.h"

/* -- replies -------------------------------------------------------------- */

static int send_rep(NbdClient *c, uint32_t opt, uint32_t type,
                    const void *data, uint32_t len)
{
    uint8_t hdr[20];
    struct iovec iov[2] = {
        { .iov_base = hdr, .iov_len = sizeof(hdr) },
        { .iov_base = (void *)data, .iov_len = len },
    };

    ferry_st_be64(hdr, NBD_REP_MAGIC);
    ferry_st_be32(hdr + 8, opt);
    ferry_st_be32(hdr + 12, type);
    ferry_st_be32(hdr + 16, len);
    return nbd_io_writev(c, iov, len ? 2 : 1);
}

static int send_ack(NbdClient *c, uint32_t opt)
{
    return send_rep(c, opt, NBD_REP_ACK, NULL, 0);
}

/* An error reply with a message for the human at the other end. */
static int G_GNUC_PRINTF(4, 5)
send_err(NbdClient *c, uint32_t opt, uint32_t type, const char *fmt, ...)
{
    g_autofree char *msg = NULL;
    va_list ap;

    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    FERRY_TRACE_POINT(NBD, "client=%s option=%u error=0x%x msg=\"%s\"",
                      c->peer, opt, type, msg);
    return send_rep(c, opt, type, msg, (uint32_t)MIN(strlen(msg),
                                                     NBD_MAX_STRING));
}

static int send_info(NbdClient *c, uint32_t opt, uint16_t info,
                     const void *data, uint32_t len)
{
    g_autofree uint8_t *buf = g_malloc(2 + len);

    ferry_st_be16(buf, info);
    memcpy(buf + 2, data, len);
    return send_rep(c, opt, NBD_REP_INFO, buf, 2 + len);
}

/* -- facts about an export as this client sees it ------------------------- */

uint16_t nbd_tx_flags(NbdClient *c, NbdExport *exp)
{
    uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH |
                 NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_CACHE;

    /*
     * Every connection reaches the same node through one BlockBackend,
     * and FLUSH flushes that node: the cache is shared, so multi-conn is
     * safe.  Not offered when we would not accept a second connection
     * (-e 1): a client acting on it would wait for ever.
     */
    if (c->server->cfg.max_connections != 1) {
        f |= NBD_FLAG_CAN_MULTI_CONN;
    }

    if (exp->readonly) {
        f |= NBD_FLAG_READ_ONLY;
    } else {
        f |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES |
             NBD_FLAG_SEND_FAST_ZERO;
    }
    if (c->structured) {
        f |= NBD_FLAG_SEND_DF;
    }
    return f;
}

static void enter_transmission(NbdClient *c, NbdExport *exp)
{
    g_atomic_int_inc(&exp->refcnt);
    c->exp = exp;
    c->tx.size = exp->size;
    c->tx.min_block = exp->min_block;
    c->tx.tx_flags = nbd_tx_flags(c, exp);
    c->tx.structured = c->structured;
    c->tx.extended = c->extended;
    if (c->meta.export_name && strcmp(c->meta.export_name, exp->name)) {
        /* Contexts were chosen for another export: none apply here. */
        nbd_meta_clear(&c->meta);
    }
    c->tx.meta_count = c->meta.count;
    FERRY_TRACE_POINT(NBD, "client=%s export=\"%s\" size=0x%" G_GINT64_MODIFIER
                      "x flags=0x%x structured=%d extended=%d meta=%u",
                      c->peer, exp->name, exp->size, c->tx.tx_flags,
                      c->structured, c->extended, c->meta.count);
}

/* -- options -------------------------------------------------------------- */

uint32_t nbd_parse_info_request(const uint8_t *data, uint32_t len,
                                NbdInfoRequest *out)
{
    uint32_t name_len;

    memset(out, 0, sizeof(*out));
    if (len < 6) {
        return NBD_REP_ERR_INVALID;
    }
    name_len = ferry_ld_be32(data);
    if (name_len > len - 6 || name_len > NBD_MAX_STRING) {
        return NBD_REP_ERR_INVALID;
    }
    out->name = (const char *)data + 4;
    out->name_len = name_len;
    out->nb_infos = ferry_ld_be16(data + 4 + name_len);
    if ((uint64_t)out->nb_infos * 2 != len - 6 - name_len) {
        return NBD_REP_ERR_INVALID;
    }
    for (uint32_t i = 0; i < out->nb_infos; i++) {
        switch (ferry_ld_be16(data + 6 + name_len + 2 * i)) {
        case NBD_INFO_NAME:
            out->want_name = true;
            break;
        case NBD_INFO_DESCRIPTION:
            out->want_description = true;
            break;
        case NBD_INFO_BLOCK_SIZE:
            out->want_block_size = true;
            break;
        default:
            break;      /* the spec: ignore what we do not know */
        }
    }
    return 0;
}

/* NBD_OPT_INFO and NBD_OPT_GO; returns 1 when GO entered transmission. */
static int opt_info_go(NbdClient *c, uint32_t opt, const uint8_t *data,
                       uint32_t len)
{
    NbdInfoRequest req;
    uint32_t err = nbd_parse_info_request(data, len, &req);
    NbdExport *exp;
    uint8_t buf[12];
    int ret;

    if (err) {
        return send_err(c, opt, err, "malformed %s request",
                        opt == NBD_OPT_GO ? "NBD_OPT_GO" : "NBD_OPT_INFO");
    }
    exp = nbd_server_find_export(c->server, req.name, req.name_len);
    if (!exp) {
        return send_err(c, opt, NBD_REP_ERR_UNKNOWN,
                        "export '%.*s' not present", (int)req.name_len,
                        req.name);
    }
    ferry_st_be64(buf, exp->size);
    ferry_st_be16(buf + 8, nbd_tx_flags(c, exp));
    ret = send_info(c, opt, NBD_INFO_EXPORT, buf, 10);
    if (ret == 0 && req.want_name) {
        ret = send_info(c, opt, NBD_INFO_NAME, exp->name, strlen(exp->name));
    }
    if (ret == 0 && req.want_description && exp->description) {
        ret = send_info(c, opt, NBD_INFO_DESCRIPTION, exp->description,
                        strlen(exp->description));
    }
    if (ret == 0) {
        /* Always sent: clients that ignore it still get our limits. */
        ferry_st_be32(buf, exp->min_block);
        ferry_st_be32(buf + 4, MAX(exp->min_block, NBD_PREFERRED_BLOCK));
        ferry_st_be32(buf + 8, NBD_MAX_PAYLOAD);
        ret = send_info(c, opt, NBD_INFO_BLOCK_SIZE, buf, 12);
    }
    if (ret == 0) {
        ret = send_ack(c, opt);
    }
    if (ret == 0 && opt == NBD_OPT_GO) {
        enter_transmission(c, exp);
        return 1;
    }
    return ret;
}

static int opt_list(NbdClient *c, uint32_t len)
{
    NbdServer *srv = c->server;
    g_autoptr(GPtrArray) reps =
        g_ptr_array_new_with_free_func((GDestroyNotify)g_bytes_unref);
    int ret = 0;

    if (len) {
        return send_err(c, NBD_OPT_LIST, NBD_REP_ERR_INVALID,
                        "NBD_OPT_LIST must not carry data");
    }
    g_mutex_lock(&srv->lock);
    for (guint i = 0; i < srv->exports->len; i++) {
        NbdExport *exp = srv->exports->pdata[i];
        size_t nlen = strlen(exp->name);
        size_t dlen = exp->description ? strlen(exp->description) : 0;
        GByteArray *b = g_byte_array_sized_new(4 + nlen + dlen);
        uint8_t l[4];
        ferry_st_be32(l, (uint32_t)nlen);
        g_byte_array_append(b, l, 4);
        g_byte_array_append(b, (const uint8_t *)exp->name, nlen);
        g_byte_array_append(b, (const uint8_t *)exp->description, dlen);
        g_ptr_array_add(reps, g_byte_array_free_to_bytes(b));
    }
    g_mutex_unlock(&srv->lock);
    for (guint i = 0; i < reps->len && ret == 0; i++) {
        gsize n;
        const void *d = g_bytes_get_data(reps->pdata[i], &n);
        ret = send_rep(c, NBD_OPT_LIST, NBD_REP_SERVER, d, (uint32_t)n);
    }
    return ret ? ret : send_ack(c, NBD_OPT_LIST);
}

typedef struct MetaReply {
    uint32_t id;
    char *name;
} MetaReply;

static void collect_meta(void *opaque, uint32_t id, const char *name)
{
    GArray *arr = opaque;
    MetaReply r = { id, g_strdup(name) };

    g_array_append_val(arr, r);
}

static int opt_meta_context(NbdClient *c, uint32_t opt, const uint8_t *data,
                            uint32_t len)
{
    bool set = opt == NBD_OPT_SET_META_CONTEXT;
    g_autoptr(GArray) found = g_array_new(FALSE, FALSE, sizeof(MetaReply));
    NbdMetaSel sel = { 0 };
    uint32_t err;
    int ret = 0;

    if (set) {
        /* The spec: SET replaces the selection even when it fails. */
        nbd_meta_clear(&c->meta);
    }
    if (!c->structured) {
        return send_err(c, opt, NBD_REP_ERR_INVALID,
                        "meta contexts need structured replies (negotiate "
                        "NBD_OPT_STRUCTURED_REPLY first)");
    }
    err = nbd_meta_parse(c->server, data, len, set ? &sel : NULL,
                         collect_meta, found);
    if (!err) {
        for (guint i = 0; i < found->len && ret == 0; i++) {
            MetaReply *r = &g_array_index(found, MetaReply, i);
            size_t nlen = strlen(r->name);
            g_autofree uint8_t *buf = g_malloc(4 + nlen);
            ferry_st_be32(buf, set ? r->id : 0);
            memcpy(buf + 4, r->name, nlen);
            ret = send_rep(c, opt, NBD_REP_META_CONTEXT, buf, 4 + nlen);
        }
    }
    for (guint i = 0; i < found->len; i++) {
        g_free(g_array_index(found, MetaReply, i).name);
    }
    if (err) {
        nbd_meta_clear(&sel);
        return send_err(c, opt, err, "malformed or unknown meta context "
                        "request");
    }
    if (set) {
        c->meta = sel;
    }
    return ret ? ret : send_ack(c, opt);
}

/* 3a: the TLS upgrade after our ACK to STARTTLS. */
static bool handshake_tls(NbdClient *c)
{
    if (c->rpos < c->rlen) {
        /* Plain bytes after STARTTLS: the client did not wait for us. */
        ferry_debug("nbd client %s sent data before the TLS handshake",
                    c->peer);
        return false;
    }
    if (!nbd_tls_accept(c, c->server->cfg.tls)) {
        return false;
    }
    c->tls_done = true;
    c->structured = c->extended = false;
    nbd_meta_clear(&c->meta);
    return true;
}

/* 4: the reply to NBD_OPT_EXPORT_NAME (no way to report an error). */
static bool opt_export_name(NbdClient *c, const uint8_t *data, uint32_t len)
{
    static const uint8_t zeroes[124];
    NbdExport *exp;
    uint8_t buf[10];
    struct iovec iov[2] = {
        { .iov_base = buf, .iov_len = sizeof(buf) },
        { .iov_base = (void *)zeroes, .iov_len = sizeof(zeroes) },
    };

    if (c->extended) {
        ferry_debug("nbd client %s used NBD_OPT_EXPORT_NAME after extended "
                    "headers", c->peer);
        return false;
    }
    exp = nbd_server_find_export(c->server, (const char *)data, len);
    if (!exp) {
        ferry_debug("nbd client %s asked for unknown export '%.*s'", c->peer,
                    (int)MIN(len, 256), data);
        return false;
    }
    ferry_st_be64(buf, exp->size);
    ferry_st_be16(buf + 8, nbd_tx_flags(c, exp));
    if (nbd_io_writev(c, iov, c->no_zeroes ? 1 : 2) < 0) {
        return false;
    }
    enter_transmission(c, exp);
    return true;
}

/*
 * One option of state 3: returns 1 to enter transmission, 0 to stay in
 * OPTIONS, -1 to close.
 */
static int handle_option(NbdClient *c, uint32_t opt, const uint8_t *data,
                         uint32_t len)
{
    bool tls_needed = c->server->cfg.tls && !c->tls_done;
    int ret;

    FERRY_TRACE_POINT(NBD, "client=%s option=%u len=%u", c->peer, opt, len);
    if (!c->fixed && opt != NBD_OPT_EXPORT_NAME) {
        /* Non-fixed newstyle knows only EXPORT_NAME. */
        return -1;
    }
    if (tls_needed && opt != NBD_OPT_STARTTLS && opt != NBD_OPT_ABORT) {
        if (opt == NBD_OPT_EXPORT_NAME) {
            return -1;      /* cannot carry an error: hang up */
        }
        ret = send_err(c, opt, NBD_REP_ERR_TLS_REQD,
                       "TLS is required on this server (NBD_OPT_STARTTLS)");
        return ret < 0 ? -1 : 0;
    }
    switch (opt) {
    case NBD_OPT_EXPORT_NAME:
        return opt_export_name(c, data, len) ? 1 : -1;
    case NBD_OPT_ABORT:
        send_ack(c, opt);       /* the client may already be gone */
        return -1;
    case NBD_OPT_LIST:
        ret = opt_list(c, len);
        break;
    case NBD_OPT_STARTTLS:
        if (len) {
            ret = send_err(c, opt, NBD_REP_ERR_INVALID,
                           "NBD_OPT_STARTTLS must not carry data");
        } else if (!c->server->cfg.tls) {
            ret = send_err(c, opt, NBD_REP_ERR_POLICY,
                           "TLS is not configured on this server");
        } else if (c->tls_done) {
            ret = send_err(c, opt, NBD_REP_ERR_INVALID,
                           "TLS is already running");
        } else {
            ret = send_ack(c, opt);
            if (ret == 0 && !handshake_tls(c)) {
                return -1;
            }
        }
        break;
    case NBD_OPT_INFO:
    case NBD_OPT_GO:
        ret = opt_info_go(c, opt, data, len);
        if (ret == 1) {
            return 1;
        }
        break;
    case NBD_OPT_STRUCTURED_REPLY:
        if (len) {
            ret = send_err(c, opt, NBD_REP_ERR_INVALID,
                           "NBD_OPT_STRUCTURED_REPLY must not carry data");
        } else if (c->extended) {
            ret = send_err(c, opt, NBD_REP_ERR_EXT_HEADER_REQD,
                           "extended headers are already negotiated");
        } else {
            c->structured = true;
            ret = send_ack(c, opt);
        }
        break;
    case NBD_OPT_EXTENDED_HEADERS:
        if (len) {
            ret = send_err(c, opt, NBD_REP_ERR_INVALID,
                           "NBD_OPT_EXTENDED_HEADERS must not carry data");
        } else {
            c->extended = c->structured = true;
            ret = send_ack(c, opt);
        }
        break;
    case NBD_OPT_LIST_META_CONTEXT:
    case NBD_OPT_SET_META_CONTEXT:
        ret = opt_meta_context(c, opt, data, len);
        break;
    default:
        ret = send_err(c, opt, NBD_REP_ERR_UNSUP, "option %u is not "
                       "supported", opt);
        break;
    }
    return ret < 0 ? -1 : 0;
}

bool nbd_negotiate(NbdClient *c)
{
    uint8_t greet[18], cflags[4], ohdr[16];
    g_autofree uint8_t *data = NULL;
    uint32_t flags;

    /* 1. GREETING */
    ferry_st_be64(greet, NBD_MAGIC);
    ferry_st_be64(greet + 8, NBD_OPTS_MAGIC);
    ferry_st_be16(greet + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    if (nbd_io_write(c, greet, sizeof(greet)) < 0) {
        return false;
    }
    /* 2. CLIENT_FLAGS */
    if (nbd_io_read(c, cflags, 4) < 0) {
        return false;
    }
    flags = ferry_ld_be32(cflags);
    if (flags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
        ferry_debug("nbd client %s sent unknown client flags 0x%x", c->peer,
                    flags);
        return false;
    }
    c->fixed = flags & NBD_FLAG_C_FIXED_NEWSTYLE;
    c->no_zeroes = flags & NBD_FLAG_C_NO_ZEROES;

    /* 3. OPTIONS */
    data = g_malloc(NBD_MAX_OPTION_BYTES + 1);
    for (int n = 0; n < NBD_MAX_OPTIONS; n++) {
        uint32_t opt, len;
        int ret;

        if (nbd_io_read(c, ohdr, sizeof(ohdr)) < 0) {
            return false;
        }
        if (ferry_ld_be64(ohdr) != NBD_OPTS_MAGIC) {
            ferry_debug("nbd client %s: bad option magic", c->peer);
            return false;
        }
        opt = ferry_ld_be32(ohdr + 8);
        len = ferry_ld_be32(ohdr + 12);
        if (len > NBD_MAX_OPTION_BYTES) {
            ferry_debug("nbd client %s: option %u with %u bytes of data is "
                        "too large", c->peer, opt, len);
            return false;
        }
        if (nbd_io_read(c, data, len) < 0) {
            return false;
        }
        data[len] = 0;
        ret = handle_option(c, opt, data, len);
        if (ret != 0) {
            return ret > 0;
        }
    }
    ferry_debug("nbd client %s: too many options", c->peer);
    return false;
}
