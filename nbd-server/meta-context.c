/*
 * Meta contexts (NBD spec, "Metadata querying"): parsing LIST and
 * SET_META_CONTEXT queries, and answering NBD_CMD_BLOCK_STATUS for
 * base:allocation (the graph's block status through the backing chain),
 * qemu:allocation-depth (which layer of the chain holds the data: 0 none,
 * 1 the top) and qemu:dirty-bitmap:NAME (bit 0 set where dirty), with
 * QEMU's names and meanings (qemu.org docs/interop/nbd.txt).
 */
#include "config.h"

#include <errno.h>
#include <string.h>

#include "common/log.h"
#include "nbd-server/internal.h"

#define BITMAP_PREFIX "qemu:dirty-bitmap:"

void nbd_meta_clear(NbdMetaSel *sel)
{
    g_free(sel->bitmaps);
    g_free(sel->export_name);
    memset(sel, 0, sizeof(*sel));
}

/* What one query matches, added into *m (LIST: wildcards expand). */
static void match_query(NbdExport *exp, const char *q, size_t qlen, bool list,
                        NbdMetaSel *m)
{
#define IS(s) (qlen == strlen(s) && !memcmp(q, s, qlen))
    if (IS("base:allocation")) {
        m->base_allocation = true;
    } else if (IS("base:")) {
        m->base_allocation |= list;
    } else if (IS("qemu:")) {
        if (list) {
            m->allocation_depth |= exp->allocation_depth;
            for (unsigned i = 0; i < exp->nb_bitmaps; i++) {
                m->bitmaps[i] = true;
            }
        }
    } else if (IS("qemu:allocation-depth")) {
        m->allocation_depth |= exp->allocation_depth;
    } else if (IS(BITMAP_PREFIX)) {
        for (unsigned i = 0; list && i < exp->nb_bitmaps; i++) {
            m->bitmaps[i] = true;
        }
    } else if (qlen > strlen(BITMAP_PREFIX) &&
               !memcmp(q, BITMAP_PREFIX, strlen(BITMAP_PREFIX))) {
        const char *name = q + strlen(BITMAP_PREFIX);
        size_t nlen = qlen - strlen(BITMAP_PREFIX);
        for (unsigned i = 0; i < exp->nb_bitmaps; i++) {
            const char *bn = exp->bitmaps[i]->name;
            if (strlen(bn) == nlen && !memcmp(bn, name, nlen)) {
                m->bitmaps[i] = true;
            }
        }
    }
    /* Anything else (another namespace, an unknown leaf) is ignored. */
#undef IS
}

uint32_t nbd_meta_parse(NbdServer *srv, const uint8_t *data, uint32_t len,
                        NbdMetaSel *sel, NbdMetaEmit emit, void *opaque)
{
    bool list = sel == NULL;
    NbdMetaSel m = { 0 };
    uint32_t name_len, nq, pos;
    NbdExport *exp;

    if (len < 8) {
        return NBD_REP_ERR_INVALID;
    }
    name_len = ferry_ld_be32(data);
    if (name_len > len - 8 || name_len > NBD_MAX_STRING) {
        return NBD_REP_ERR_INVALID;
    }
    pos = 4 + name_len;
    nq = ferry_ld_be32(data + pos);
    pos += 4;
    if (nq > NBD_MAX_META_QUERIES) {
        return NBD_REP_ERR_TOO_BIG;
    }
    /* Check the whole request's syntax before looking at any of it. */
    for (uint32_t i = 0, p = pos; i < nq; i++) {
        uint32_t ql;
        if (len - p < 4) {
            return NBD_REP_ERR_INVALID;
        }
        ql = ferry_ld_be32(data + p);
        p += 4;
        if (ql > len - p || ql > NBD_MAX_STRING) {
            return NBD_REP_ERR_INVALID;
        }
        p += ql;
        if (i == nq - 1 && p != len) {
            return NBD_REP_ERR_INVALID;
        }
    }
    if (nq == 0 && pos != len) {
        return NBD_REP_ERR_INVALID;
    }
    exp = nbd_server_find_export(srv, (const char *)data + 4, name_len);
    if (!exp) {
        return NBD_REP_ERR_UNKNOWN;
    }

    m.bitmaps = g_new0(bool, MAX(exp->nb_bitmaps, 1));
    if (nq == 0 && list) {
        match_query(exp, "base:", 5, true, &m);
        match_query(exp, "qemu:", 5, true, &m);
    }
    for (uint32_t i = 0; i < nq; i++) {
        uint32_t ql = ferry_ld_be32(data + pos);
        match_query(exp, (const char *)data + pos + 4, ql, list, &m);
        pos += 4 + ql;
    }

    if (m.base_allocation) {
        emit(opaque, NBD_META_ID_BASE, "base:allocation");
        m.count++;
    }
    if (m.allocation_depth) {
        emit(opaque, NBD_META_ID_DEPTH, "qemu:allocation-depth");
        m.count++;
    }
    for (unsigned i = 0; i < exp->nb_bitmaps; i++) {
        if (m.bitmaps[i]) {
            g_autofree char *n = g_strconcat(BITMAP_PREFIX,
                                             exp->bitmaps[i]->name, NULL);
            emit(opaque, NBD_META_ID_BITMAP0 + i, n);
            m.count++;
        }
    }
    if (list) {
        g_free(m.bitmaps);
    } else {
        m.export_name = g_strdup(exp->name);
        *sel = m;
    }
    return 0;
}

/* -- NBD_CMD_BLOCK_STATUS ------------------------------------------------- */

/* Collects extents, merging neighbours with equal flags. */
typedef struct Extents {
    uint8_t *p;           /* descriptors start here */
    bool wide;            /* extended: 16-byte descriptors */
    unsigned n, max;
    uint64_t last_flags;
    uint64_t last_len;
} Extents;

static void ext_flush_last(Extents *e)
{
    if (e->last_len == 0) {
        return;
    }
    if (e->wide) {
        ferry_st_be64(e->p + 16 * e->n, e->last_len);
        ferry_st_be64(e->p + 16 * e->n + 8, e->last_flags);
    } else {
        ferry_st_be32(e->p + 8 * e->n, (uint32_t)e->last_len);
        ferry_st_be32(e->p + 8 * e->n + 4, (uint32_t)e->last_flags);
    }
    e->n++;
    e->last_len = 0;
}

/* Add an extent; false once the chunk is full (the extent was not added). */
static bool ext_add(Extents *e, uint64_t len, uint64_t flags)
{
    if (e->last_len && e->last_flags == flags &&
        (e->wide || e->last_len + len <= UINT32_MAX)) {
        e->last_len += len;
        return true;
    }
    if (e->last_len) {
        if (e->n + 1 >= e->max) {
            return false;
        }
        ext_flush_last(e);
    }
    e->last_len = len;
    e->last_flags = flags;
    return true;
}

typedef enum { CTX_BASE, CTX_DEPTH, CTX_BITMAP } CtxKind;

/* Status of [off, end) for one context into e; 0 or -errno. */
static int collect(NbdExport *exp, CtxKind kind, BlockDirtyBitmap *bm,
                   uint64_t off, uint64_t end, bool one, Extents *e)
{
    while (off < end) {
        uint64_t flags;
        int64_t pnum;

        if (kind == CTX_BITMAP) {
            bool dirty = block_dirty_bitmap_get(bm, off);
            int64_t l;
            int64_t next = block_dirty_bitmap_next_extent(bm, off, end,
                                                          !dirty, &l);
            pnum = next < 0 ? (int64_t)(end - off) : next - (int64_t)off;
            flags = dirty ? NBD_STATE_DIRTY : 0;
        } else {
            int depth = 0;
            int ret = block_node_block_status_above(exp->node, NULL, off,
                                                    end - off, &pnum, NULL,
                                                    NULL, &depth);
            if (ret < 0) {
                return ret;
            }
            if (pnum <= 0) {
                pnum = end - off;
                ret = BLOCK_STATUS_ZERO;
            }
            if (kind == CTX_BASE) {
                flags = ((ret & BLOCK_STATUS_DATA) ? 0 : NBD_STATE_HOLE) |
                        ((ret & BLOCK_STATUS_ZERO) ? NBD_STATE_ZERO : 0);
            } else {
                flags = (ret & BLOCK_STATUS_ALLOCATED) ? depth + 1 : 0;
            }
        }
        if (pnum <= 0) {
            return -EIO;
        }
        if (!e->wide && pnum > UINT32_MAX) {
            pnum = UINT32_MAX & ~(uint64_t)(exp->min_block - 1);
        }
        if (!ext_add(e, pnum, flags)) {
            break;
        }
        off += pnum;
        if (one) {
            break;
        }
    }
    ext_flush_last(e);
    return 0;
}

static uint8_t *ext_buffer(NbdWorker *w)
{
    size_t need = 8 + 16 * (size_t)NBD_MAX_EXTENTS;

    if (!w->ext_buf) {
        w->ext_buf = g_try_malloc(need);
        w->ext_cap = w->ext_buf ? need : 0;
    }
    return w->ext_buf;
}

static int send_status_chunk(NbdClient *c, const NbdRequest *req,
                             uint8_t *buf, uint32_t id, const Extents *e,
                             bool last)
{
    size_t head = e->wide ? 8 : 4;
    size_t len = head + (size_t)e->n * (e->wide ? 16 : 8);
    struct iovec iov = { .iov_base = buf, .iov_len = len };

    ferry_st_be32(buf, id);
    if (e->wide) {
        ferry_st_be32(buf + 4, e->n);
    }
    return nbd_send_chunk(c, req, last ? NBD_REPLY_FLAG_DONE : 0,
                          e->wide ? NBD_REPLY_TYPE_BLOCK_STATUS_EXT
                                  : NBD_REPLY_TYPE_BLOCK_STATUS,
                          &iov, 1, len);
}

int nbd_meta_block_status(NbdClient *c, NbdWorker *w, const NbdRequest *req)
{
    NbdExport *exp = c->exp;
    uint8_t *buf = ext_buffer(w);
    bool one = req->flags & NBD_CMD_FLAG_REQ_ONE;
    uint64_t end = req->offset + MAX(req->len, 1);
    struct {
        CtxKind kind;
        uint32_t id;
        BlockDirtyBitmap *bm;
    } ctx[2 + 64];
    unsigned n = 0, sent = 0;
    int ret = 0;

    if (!buf) {
        uint8_t e[6];
        struct iovec iov = { .iov_base = e, .iov_len = 6 };
        ferry_st_be32(e, NBD_ENOMEM);
        ferry_st_be16(e + 4, 0);
        return nbd_send_chunk(c, req, NBD_REPLY_FLAG_DONE,
                              NBD_REPLY_TYPE_ERROR, &iov, 1, 6);
    }
    if (end > (uint64_t)exp->size) {
        end = exp->size;
    }
    if (c->meta.base_allocation) {
        ctx[n++] = (typeof(ctx[0])){ CTX_BASE, NBD_META_ID_BASE, NULL };
    }
    if (c->meta.allocation_depth) {
        ctx[n++] = (typeof(ctx[0])){ CTX_DEPTH, NBD_META_ID_DEPTH, NULL };
    }
    for (unsigned i = 0; i < exp->nb_bitmaps && n < G_N_ELEMENTS(ctx); i++) {
        if (c->meta.bitmaps[i]) {
            ctx[n++] = (typeof(ctx[0])){ CTX_BITMAP, NBD_META_ID_BITMAP0 + i,
                                         exp->bitmaps[i] };
        }
    }
    for (unsigned i = 0; i < n; i++) {
        Extents e = {
            .wide = c->extended,
            .max = NBD_MAX_EXTENTS,
        };
        e.p = buf + (e.wide ? 8 : 4);
        if (req->offset >= end) {
            /* A zero-length query at the end: describe nothing more. */
            ret = -EINVAL;
            break;
        }
        ret = collect(exp, ctx[i].kind, ctx[i].bm, req->offset, end, one, &e);
        if (ret < 0) {
            break;
        }
        ret = send_status_chunk(c, req, buf, ctx[i].id, &e, i == n - 1);
        if (ret < 0) {
            return ret;
        }
        sent++;
    }
    if (ret < 0) {
        g_autofree char *msg = g_strdup_printf("block status failed: %s",
                                               g_strerror(-ret));
        uint8_t head[6];
        struct iovec iov[2] = {
            { .iov_base = head, .iov_len = 6 },
            { .iov_base = msg, .iov_len = strlen(msg) },
        };
        ferry_st_be32(head, nbd_errno_to_wire(-ret));
        ferry_st_be16(head + 4, (uint16_t)strlen(msg));
        return nbd_send_chunk(c, req, NBD_REPLY_FLAG_DONE,
                              NBD_REPLY_TYPE_ERROR, iov, 2, 6 + strlen(msg));
    }
    return 0;
}
