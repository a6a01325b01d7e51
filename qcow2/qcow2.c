/*
 * The qcow2 format driver: open (header and extensions, validated field by
 * field), close, flush, truncate, info, and the driver table.  Mapping and
 * data live in cluster.c, refcounts in refcount.c, creation in create.c,
 * check and repair in check.c.  Spec: /work/shared/specs/qcow2.txt,
 * "Header" and "Header extensions".
 */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "blockdev/bitmap.h"
#include "common/bytes.h"
#include "common/error.h"
#include "common/log.h"
#include "common/opts.h"
#include "qcow2/internal.h"

static const char *const qcow2_open_opts[] = {
    "file", "filename", "backing", "data-file", "l2-cache-size",
    "l2-cache-entry-size", "refcount-cache-size", "cache-size",
    "cache-clean-interval", "overlap-check", "lazy-refcounts",
    "pass-discard-request", "pass-discard-snapshot", "pass-discard-other",
    "discard-no-unref", "encrypt", NULL,
};

const char *qcow2_fname(Qcow2State *s)
{
    BlockNode *bs = s->bs;

    if (bs->filename) {
        return bs->filename;
    }
    return bs->file && bs->file->node->filename ? bs->file->node->filename
                                                : bs->node_name;
}

#define fname qcow2_fname

/* -- small helpers shared by the other files ----------------------------- */

int qcow2_barrier(Qcow2State *s)
{
    return block_node_flush(s->bs->file->node);
}

int qcow2_write_header_field(Qcow2State *s, uint64_t off, const void *buf,
                             size_t len)
{
    return block_node_pwrite(s->bs->file->node, off, len, buf, 0);
}

static int write_incompat(Qcow2State *s)
{
    uint8_t b[8];

    ferry_st_be64(b, s->incompat);
    return qcow2_write_header_field(s, QCOW2_HDR_INCOMPAT_OFF, b, 8);
}

int qcow2_mark_dirty_locked(Qcow2State *s)
{
    int ret;

    if (!s->lazy_refcounts || (s->incompat & QCOW2_INCOMPAT_DIRTY)) {
        return 0;
    }
    /* Invariant 6: the dirty bit is durable before refcounts go stale. */
    ret = qcow2_barrier(s);
    if (ret < 0) {
        return ret;
    }
    s->incompat |= QCOW2_INCOMPAT_DIRTY;
    ret = write_incompat(s);
    if (ret == 0) {
        ret = qcow2_barrier(s);
    }
    return ret;
}

int qcow2_mark_corrupt_locked(Qcow2State *s, const char *fmt, ...)
{
    g_autofree char *msg = NULL;
    va_list ap;

    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    if (s->bs->open_flags & BLOCK_O_CHECK) {
        return -EIO;        /* check reports it; do not touch the image */
    }
    if (!(s->incompat & QCOW2_INCOMPAT_CORRUPT)) {
        ferry_error_report("qcow2 '%s': %s; marking the image as corrupt%s",
                           fname(s), msg, s->writable ? "" :
                           " (read-only: not recorded in the file)");
        if (s->writable && s->version >= 3) {
            s->incompat |= QCOW2_INCOMPAT_CORRUPT;
            if (write_incompat(s) == 0) {
                qcow2_barrier(s);
            }
        } else {
            s->incompat |= QCOW2_INCOMPAT_CORRUPT;
        }
    }
    return -EIO;
}

/* -- the header ---------------------------------------------------------- */

static const struct {
    uint8_t type, bit;
    const char *name;
} feature_table[] = {
    { 0, 0, "dirty bit" },
    { 0, 1, "corrupt bit" },
    { 0, 2, "external data file" },
    { 0, 3, "compression type" },
    { 0, 4, "extended L2 entries" },
    { 1, 0, "lazy refcounts" },
    { 2, 0, "bitmaps" },
    { 2, 1, "raw external data" },
};

static size_t add_ext(uint8_t *buf, size_t pos, size_t cap, uint32_t type,
                      const void *data, uint32_t len)
{
    size_t need = 8 + qcow2_align_up(len, 8);

    if (pos + need > cap) {
        return 0;
    }
    ferry_st_be32(buf + pos, type);
    ferry_st_be32(buf + pos + 4, len);
    memcpy(buf + pos + 8, data, len);
    memset(buf + pos + 8 + len, 0, need - 8 - len);
    return pos + need;
}

static bool serialize_header(Qcow2State *s, uint8_t *buf, size_t cap,
                             bool feature_names);

/*
 * Serialise the first cluster: header fields, extensions (backing format,
 * data file, feature names, bitmaps, then the ones we keep verbatim), end
 * marker, backing file name.  The feature names are only a courtesy to
 * readers: with small clusters they give way, as in QEMU.  Returns false
 * if the rest does not fit in one cluster.
 */
bool qcow2_serialize_header(Qcow2State *s, uint8_t *buf, size_t cap)
{
    return serialize_header(s, buf, cap, true) ||
           serialize_header(s, buf, cap, false);
}

static bool serialize_header(Qcow2State *s, uint8_t *buf, size_t cap,
                             bool feature_names)
{
    uint32_t hlen = s->version >= 3 ? MAX(s->header_length,
                                          (uint32_t)QCOW2_HDR_V3_CREATE_LEN)
                                    : QCOW2_HDR_V2_LEN;
    size_t pos = hlen;
    size_t blen = s->backing_name ? strlen(s->backing_name) : 0;

    memset(buf, 0, cap);
    ferry_st_be32(buf, QCOW2_MAGIC);
    ferry_st_be32(buf + 4, s->version);
    ferry_st_be32(buf + 20, s->cluster_bits);
    ferry_st_be64(buf + 24, s->size);
    ferry_st_be32(buf + 32, s->crypt_method);
    ferry_st_be32(buf + 36, s->l1_size);
    ferry_st_be64(buf + 40, s->l1_offset);
    ferry_st_be64(buf + 48, s->reftable_offset);
    ferry_st_be32(buf + 56, s->reftable_clusters);
    ferry_st_be32(buf + 60, s->nb_snapshots);
    ferry_st_be64(buf + 64, s->snapshots_offset);
    if (s->version >= 3) {
        ferry_st_be64(buf + 72, s->incompat);
        ferry_st_be64(buf + 80, s->compat);
        ferry_st_be64(buf + 88, s->autoclear);
        ferry_st_be32(buf + 96, s->refcount_order);
        ferry_st_be32(buf + 100, hlen);
        buf[104] = (uint8_t)s->compression_type;
    }
    if (s->backing_fmt && pos) {
        pos = add_ext(buf, pos, cap, QCOW2_EXT_BACKING_FORMAT, s->backing_fmt,
                      strlen(s->backing_fmt));
    }
    if (s->data_file_name && pos) {
        pos = add_ext(buf, pos, cap, QCOW2_EXT_DATA_FILE, s->data_file_name,
                      strlen(s->data_file_name));
    }
    if (s->version >= 3 && pos && feature_names) {
        uint8_t ft[G_N_ELEMENTS(feature_table) * 48] = { 0 };
        for (size_t i = 0; i < G_N_ELEMENTS(feature_table); i++) {
            ft[i * 48] = feature_table[i].type;
            ft[i * 48 + 1] = feature_table[i].bit;
            memcpy(ft + i * 48 + 2, feature_table[i].name,
                   strlen(feature_table[i].name));
        }
        pos = add_ext(buf, pos, cap, QCOW2_EXT_FEATURE_TABLE, ft, sizeof(ft));
    }
    if (s->has_bitmaps_ext && s->nb_bitmaps && pos) {
        uint8_t bx[24] = { 0 };
        ferry_st_be32(bx, s->nb_bitmaps);
        ferry_st_be64(bx + 8, s->bitmap_dir_size);
        ferry_st_be64(bx + 16, s->bitmap_dir_offset);
        pos = add_ext(buf, pos, cap, QCOW2_EXT_BITMAPS, bx, sizeof(bx));
    }
    for (guint i = 0; s->unknown_exts && i < s->unknown_exts->len && pos; i++) {
        Qcow2UnknownExt *e = s->unknown_exts->pdata[i];
        pos = add_ext(buf, pos, cap, e->type, e->data, e->len);
    }
    if (!pos || pos + 8 + blen > cap) {
        return false;
    }
    pos += 8;   /* end of extensions: eight zero bytes */
    if (blen) {
        memcpy(buf + pos, s->backing_name, blen);
        ferry_st_be64(buf + 8, pos);
        ferry_st_be32(buf + 16, (uint32_t)blen);
    }
    return true;
}

bool qcow2_update_header(Qcow2State *s, GError **errp)
{
    size_t cap = MIN(s->cluster_size, (uint64_t)65536);
    g_autofree uint8_t *buf = g_malloc(cap);
    int ret;

    if (!qcow2_serialize_header(s, buf, cap)) {
        ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED,
                        "qcow2 '%s': the header and its extensions do not fit "
                        "in %zu bytes", fname(s), cap);
        return false;
    }
    ret = block_node_pwrite(s->bs->file->node, 0, cap, buf, 0);
    if (ret == 0) {
        ret = qcow2_barrier(s);
    }
    if (ret < 0) {
        ferry_error_setg_errno(errp, -ret, "qcow2 '%s': cannot write the header",
                               fname(s));
        return false;
    }
    return true;
}

static void unknown_ext_free(gpointer p)
{
    Qcow2UnknownExt *e = p;

    g_free(e->data);
    g_free(e);
}

/* Names of unknown incompatible bits: "bit 7 ('foo'), bit 9". */
static char *feature_list(Qcow2State *s, int type, uint64_t bits)
{
    GString *out = g_string_new(NULL);

    for (int b = 0; b < 64; b++) {
        if (!(bits & (1ull << b))) {
            continue;
        }
        if (out->len) {
            g_string_append(out, ", ");
        }
        if (s->feature_names[type][b]) {
            g_string_append_printf(out, "'%s' (bit %d)",
                                   s->feature_names[type][b], b);
        } else {
            g_string_append_printf(out, "bit %d", b);
        }
    }
    return g_string_free(out, FALSE);
}

static bool read_extensions(Qcow2State *s, const uint8_t *buf, size_t len,
                            uint64_t start, uint64_t end, GError **errp)
{
    uint64_t pos = start;

    while (pos < end) {
        uint32_t type, elen;
        if (end - pos < 8) {
            ferry_error_set(errp, FERRY_ERROR_CORRUPT,
                            "qcow2 '%s': header extension at offset %"
                            G_GUINT64_FORMAT " is truncated", fname(s), pos);
            return false;
        }
        type = ferry_ld_be32(buf + pos);
        elen = ferry_ld_be32(buf + pos + 4);
        pos += 8;
        if (type == QCOW2_EXT_END) {
            return true;
        }
        if (elen > end - pos) {
            ferry_error_set(errp, FERRY_ERROR_CORRUPT,
                            "qcow2 '%s': header extension 0x%08x of %u bytes "
                            "runs past the end of the header cluster",
                            fname(s), type, elen);
            return false;
        }
        switch (type) {
        case QCOW2_EXT_BACKING_FORMAT:
            g_free(s->backing_fmt);
            s->backing_fmt = g_strndup((const char *)buf + pos, elen);
            break;
        case QCOW2_EXT_DATA_FILE:
            g_free(s->data_file_name);
            s->data_file_name = g_strndup((const char *)buf + pos, elen);
            break;
        case QCOW2_EXT_FEATURE_TABLE:
            for (uint32_t i = 0; i + 48 <= elen; i += 48) {
                uint8_t t = buf[pos + i], b = buf[pos + i + 1];
                if (t < 3 && b < 64) {
                    g_free(s->feature_names[t][b]);
                    s->feature_names[t][b] =
                        g_strndup((const char *)buf + pos + i + 2, 46);
                }
            }
            break;
        case QCOW2_EXT_CRYPTO:
            break;
        case QCOW2_EXT_BITMAPS:
            if (!qcow2_parse_bitmaps_ext(s, buf + pos, elen, errp)) {
                return false;
            }
            break;
        default: {
            Qcow2UnknownExt *e = g_new0(Qcow2UnknownExt, 1);
            e->type = type;
            e->len = elen;
            e->data = g_memdup2(buf + pos, elen);
            g_ptr_array_add(s->unknown_exts, e);
            break;
        }
        }
        pos += qcow2_align_up(elen, 8);
    }
    return true;
}

#define CORRUPT(...) \
    ferry_error_set(errp, FERRY_ERROR_CORRUPT, __VA_ARGS__)

static bool parse_header(Qcow2State *s, const uint8_t *buf, size_t len,
                         int64_t file_len, GError **errp)
{
    const char *f = fname(s);
    uint64_t backing_off, l2_cover;
    uint32_t backing_len;

    if (ferry_ld_be32(buf) != QCOW2_MAGIC) {
        CORRUPT("qcow2 '%s': not a qcow2 image (bad magic)", f);
        return false;
    }
    s->version = ferry_ld_be32(buf + 4);
    if (s->version != 2 && s->version != 3) {
        ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED, "qcow2 '%s': version %u "
                        "is not supported (only 2 and 3)", f, s->version);
        return false;
    }
    s->cluster_bits = ferry_ld_be32(buf + 20);
    if (s->cluster_bits < QCOW2_MIN_CLUSTER_BITS ||
        s->cluster_bits > QCOW2_MAX_CLUSTER_BITS) {
        CORRUPT("qcow2 '%s': cluster_bits %u is out of range (9 to 21)", f,
                s->cluster_bits);
        return false;
    }
    s->cluster_size = 1ull << s->cluster_bits;
    s->size = ferry_ld_be64(buf + 24);
    s->crypt_method = ferry_ld_be32(buf + 32);
    s->l1_size = ferry_ld_be32(buf + 36);
    s->l1_offset = ferry_ld_be64(buf + 40);
    s->reftable_offset = ferry_ld_be64(buf + 48);
    s->reftable_clusters = ferry_ld_be32(buf + 56);
    s->nb_snapshots = ferry_ld_be32(buf + 60);
    s->snapshots_offset = ferry_ld_be64(buf + 64);
    backing_off = ferry_ld_be64(buf + 8);
    backing_len = ferry_ld_be32(buf + 16);
    if (s->version >= 3) {
        s->incompat = ferry_ld_be64(buf + 72);
        s->compat = ferry_ld_be64(buf + 80);
        s->autoclear = ferry_ld_be64(buf + 88);
        s->refcount_order = ferry_ld_be32(buf + 96);
        s->header_length = ferry_ld_be32(buf + 100);
        if (s->header_length < QCOW2_HDR_V3_LEN ||
            s->header_length > s->cluster_size || (s->header_length & 7)) {
            CORRUPT("qcow2 '%s': header length %u is invalid (at least 104, "
                    "a multiple of 8, within the first cluster)", f,
                    s->header_length);
            return false;
        }
        if (s->header_length > 104) {
            s->compression_type = buf[104];
        }
    } else {
        s->refcount_order = 4;
        s->header_length = QCOW2_HDR_V2_LEN;
    }
    if (!read_extensions(s, buf, len, s->header_length,
                         backing_off && backing_off < s->cluster_size ?
                         backing_off : MIN(len, s->cluster_size), errp)) {
        return false;
    }
    if (s->incompat & ~QCOW2_INCOMPAT_KNOWN) {
        g_autofree char *names =
            feature_list(s, 0, s->incompat & ~QCOW2_INCOMPAT_KNOWN);
        ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED,
                        "qcow2 '%s': unsupported incompatible feature(s): %s",
                        f, names);
        return false;
    }
    if (s->crypt_method) {
        ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED,
                        "qcow2 '%s': encrypted qcow2 images are not supported "
                        "yet", f);
        return false;
    }
    if (s->refcount_order > 6) {
        CORRUPT("qcow2 '%s': refcount_order %u is out of range (0 to 6)", f,
                s->refcount_order);
        return false;
    }
    s->refcount_bits = 1u << s->refcount_order;
    s->refcount_max = s->refcount_bits == 64 ? UINT64_MAX
                                             : (1ull << s->refcount_bits) - 1;
    s->rb_bits = s->cluster_bits + 3 - s->refcount_order;
    if (s->incompat & QCOW2_INCOMPAT_COMPRESSION) {
        if (s->header_length <= 104 || s->compression_type > 1) {
            ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED,
                            "qcow2 '%s': compression type %u is not supported",
                            f, s->compression_type);
            return false;
        }
    } else if (s->compression_type) {
        CORRUPT("qcow2 '%s': compression type %u set without the compression "
                "type feature bit", f, s->compression_type);
        return false;
    }
    s->extended_l2 = s->incompat & QCOW2_INCOMPAT_EXTL2;
    if (s->extended_l2 && s->cluster_bits < 14) {
        CORRUPT("qcow2 '%s': extended L2 entries need clusters of at least "
                "16 KiB (cluster_bits is %u)", f, s->cluster_bits);
        return false;
    }
    s->l2_entry_bytes = s->extended_l2 ? 16 : 8;
    s->l2_bits = s->cluster_bits - (s->extended_l2 ? 4 : 3);
    s->l2_entries = 1ull << s->l2_bits;
    s->subcluster_bits = s->extended_l2 ? 5 : 0;
    s->subclusters = 1u << s->subcluster_bits;
    s->subcluster_size = s->cluster_size >> s->subcluster_bits;
    if (s->size > (uint64_t)INT64_MAX - s->cluster_size) {
        CORRUPT("qcow2 '%s': virtual size %" G_GUINT64_FORMAT " is too large",
                f, s->size);
        return false;
    }
    l2_cover = s->cluster_size << s->l2_bits;
    if ((uint64_t)s->l1_size * 8 > QCOW2_MAX_L1_BYTES) {
        CORRUPT("qcow2 '%s': L1 table size %u entries is too large", f,
                s->l1_size);
        return false;
    }
    if (s->l1_size < (s->size + l2_cover - 1) / l2_cover) {
        CORRUPT("qcow2 '%s': L1 table of %u entries is too small for the "
                "virtual size %" G_GUINT64_FORMAT, f, s->l1_size, s->size);
        return false;
    }
    if (s->l1_size && (s->l1_offset & (s->cluster_size - 1))) {
        CORRUPT("qcow2 '%s': L1 table offset 0x%" G_GINT64_MODIFIER "x is not "
                "cluster aligned", f, s->l1_offset);
        return false;
    }
    if (s->l1_size && (s->l1_offset >= (uint64_t)file_len ||
                       (uint64_t)s->l1_size * 8 > file_len - s->l1_offset)) {
        CORRUPT("qcow2 '%s': L1 table offset 0x%" G_GINT64_MODIFIER "x is past "
                "the end of the file", f, s->l1_offset);
        return false;
    }
    if (s->reftable_offset & (s->cluster_size - 1)) {
        CORRUPT("qcow2 '%s': refcount table offset 0x%" G_GINT64_MODIFIER "x is "
                "not cluster aligned", f, s->reftable_offset);
        return false;
    }
    if (s->reftable_clusters == 0 ||
        s->reftable_clusters * s->cluster_size > QCOW2_MAX_REFTABLE_BYTES) {
        CORRUPT("qcow2 '%s': refcount table of %u clusters is invalid", f,
                s->reftable_clusters);
        return false;
    }
    if (s->reftable_offset >= (uint64_t)file_len ||
        s->reftable_clusters * s->cluster_size > file_len - s->reftable_offset) {
        CORRUPT("qcow2 '%s': refcount table offset 0x%" G_GINT64_MODIFIER "x is "
                "past the end of the file", f, s->reftable_offset);
        return false;
    }
    if (s->nb_snapshots && (s->snapshots_offset & (s->cluster_size - 1) ||
                            s->snapshots_offset >= (uint64_t)file_len)) {
        CORRUPT("qcow2 '%s': snapshot table offset 0x%" G_GINT64_MODIFIER "x is "
                "invalid", f, s->snapshots_offset);
        return false;
    }
    if (backing_off) {
        if (backing_len > 1023 || backing_off > s->cluster_size ||
            backing_len > s->cluster_size - backing_off ||
            backing_off + backing_len > len) {
            CORRUPT("qcow2 '%s': backing file name at offset %" G_GUINT64_FORMAT
                    " (%u bytes) is invalid", f, backing_off, backing_len);
            return false;
        }
        s->backing_name = g_strndup((const char *)buf + backing_off,
                                    backing_len);
    }
    if ((s->autoclear & QCOW2_AUTOCLEAR_DATA_RAW) &&
        !(s->incompat & QCOW2_INCOMPAT_DATA_FILE)) {
        CORRUPT("qcow2 '%s': data-file-raw is set without an external data "
                "file", f);
        return false;
    }
    s->data_file_raw = s->autoclear & QCOW2_AUTOCLEAR_DATA_RAW;
    return true;
}

static bool load_tables(Qcow2State *s, GError **errp)
{
    uint64_t rbytes = (uint64_t)s->reftable_clusters * s->cluster_size;
    int ret;

    s->l1 = g_try_new0(uint64_t, MAX(s->l1_size, 1));
    s->reftable_size = rbytes / 8;
    s->reftable = g_try_new0(uint64_t, s->reftable_size);
    if (!s->l1 || !s->reftable) {
        ferry_error_set(errp, FERRY_ERROR_FAILED, "qcow2 '%s': out of memory "
                        "for its tables", fname(s));
        return false;
    }
    if (s->l1_size) {
        ret = block_node_pread(s->bs->file->node, s->l1_offset,
                               s->l1_size * 8, s->l1, 0);
        if (ret < 0) {
            ferry_error_setg_errno(errp, -ret, "qcow2 '%s': cannot read the L1 "
                                   "table", fname(s));
            return false;
        }
    }
    ret = block_node_pread(s->bs->file->node, s->reftable_offset, rbytes,
                           s->reftable, 0);
    if (ret < 0) {
        ferry_error_setg_errno(errp, -ret, "qcow2 '%s': cannot read the "
                               "refcount table", fname(s));
        return false;
    }
    for (uint32_t i = 0; i < s->l1_size; i++) {
        s->l1[i] = GUINT64_FROM_BE(s->l1[i]);
    }
    for (uint64_t i = 0; i < s->reftable_size; i++) {
        s->reftable[i] = GUINT64_FROM_BE(s->reftable[i]);
        if (s->reftable[i] & (s->cluster_size - 1)) {
            CORRUPT("qcow2 '%s': refcount block %" G_GUINT64_FORMAT " offset 0x%"
                    G_GINT64_MODIFIER "x is not cluster aligned", fname(s), i,
                    s->reftable[i]);
            return false;
        }
    }
    return true;
}

/* Cache sizes from QEMU's runtime options (bytes -> table slots). */
static bool setup_caches(Qcow2State *s, json_t *options, GError **errp)
{
    uint64_t cs = s->cluster_size;
    uint64_t l2_cover = cs << s->l2_bits;
    uint64_t max_l2 = MAX((s->size + l2_cover - 1) / l2_cover, 1) * cs;
    uint64_t l2 = 0, rc = 0, total = 0, min_rc = 4 * cs;
    bool has_l2 = json_object_get(options, "l2-cache-size");
    bool has_rc = json_object_get(options, "refcount-cache-size");
    bool has_total = json_object_get(options, "cache-size");

    if (!ferry_opt_size(options, "l2-cache-size", 0, &l2, errp) ||
        !ferry_opt_size(options, "refcount-cache-size", 0, &rc, errp) ||
        !ferry_opt_size(options, "cache-size", 0, &total, errp)) {
        return false;
    }
    if (has_total && has_l2 && has_rc && l2 + rc != total) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "l2-cache-size (%" G_GUINT64_FORMAT ") + "
                        "refcount-cache-size (%" G_GUINT64_FORMAT ") must "
                        "equal cache-size (%" G_GUINT64_FORMAT ")", l2, rc,
                        total);
        return false;
    }
    if (has_total) {
        if (!has_l2 && !has_rc) {
            l2 = MIN(max_l2, total > min_rc ? total - min_rc : cs);
            rc = total > l2 ? total - l2 : min_rc;
        } else if (!has_l2) {
            l2 = total > rc ? total - rc : cs;
        } else if (!has_rc) {
            rc = total > l2 ? total - l2 : min_rc;
        }
    } else {
        if (!has_l2) {
            l2 = MIN(max_l2, (uint64_t)QCOW2_DEFAULT_L2_CACHE_MAX);
        }
        if (!has_rc) {
            rc = MAX(min_rc, (uint64_t)256 * 1024);
        }
    }
    if (l2 / cs > INT32_MAX / 2 || rc / cs > INT32_MAX / 2) {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "qcow2 cache size is too "
                        "large");
        return false;
    }
    qcow2_cache_init(&s->l2_cache, s, "L2", (int)(l2 / cs), true);
    qcow2_cache_init(&s->rb_cache, s, "refcount", (int)(rc / cs), false);
    return true;
}

static bool open_children(Qcow2State *s, json_t *options, GError **errp)
{
    BlockNode *bs = s->bs;

    if (s->incompat & QCOW2_INCOMPAT_DATA_FILE) {
        g_autofree char *path = s->data_file_name ?
            block_backing_path(fname(s), s->data_file_name) : NULL;
        if (!json_object_get(options, "data-file") && !path) {
            ferry_error_set(errp, FERRY_ERROR_INVALID,
                            "qcow2 '%s': the image needs an external data file "
                            "but names none: give one with data-file=",
                            fname(s));
            return false;
        }
        if (!block_node_open_child(bs, options, "data-file",
                                   BLOCK_CHILD_DATA_FILE, path, NULL, errp)) {
            if (errp && !*errp) {
                ferry_error_set(errp, FERRY_ERROR_INVALID, "qcow2 '%s': no data "
                                "file", fname(s));
            }
            g_prefix_error(errp, "qcow2 '%s': data file: ", fname(s));
            return false;
        }
        s->has_data_file = true;
    } else if (json_object_get(options, "data-file")) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "qcow2 '%s': data-file given, but the image has no "
                        "external data file", fname(s));
        return false;
    }
    g_free(bs->backing_file);
    g_free(bs->backing_format);
    bs->backing_file = g_strdup(s->backing_name);
    bs->backing_format = g_strdup(s->backing_fmt);
    if (!(bs->open_flags & BLOCK_O_NO_BACKING) &&
        (s->backing_name || json_object_get(options, "backing"))) {
        g_autofree char *path = block_backing_path(fname(s), s->backing_name);
        GError *local = NULL;
        if (!block_node_open_child(bs, options, "backing", BLOCK_CHILD_BACKING,
                                   path, s->backing_fmt, &local) && local) {
            g_propagate_prefixed_error(errp, local, "qcow2 '%s': backing file: ",
                                       fname(s));
            return false;
        }
    }
    return true;
}

static void free_state(Qcow2State *s)
{
    qcow2_snapshots_free(s);
    qcow2_bitmaps_free(s);
    g_free(s->meta);
    g_free(s->inactive_l2);
    qcow2_cache_destroy(&s->l2_cache);
    qcow2_cache_destroy(&s->rb_cache);
    g_free(s->l1);
    g_free(s->reftable);
    g_free(s->data_file_name);
    g_free(s->backing_name);
    g_free(s->backing_fmt);
    if (s->unknown_exts) {
        g_ptr_array_free(s->unknown_exts, TRUE);
    }
    for (int t = 0; t < 3; t++) {
        for (int b = 0; b < 64; b++) {
            g_free(s->feature_names[t][b]);
        }
    }
    if (s->in_flight) {
        g_array_free(s->in_flight, TRUE);
    }
    if (s->deferred) {
        g_array_free(s->deferred, TRUE);
    }
    g_mutex_clear(&s->lock);
    g_cond_clear(&s->alloc_cond);
}

static bool open_rw_fixups(Qcow2State *s, GError **errp)
{
    uint64_t clear = s->autoclear & ~(QCOW2_AUTOCLEAR_DATA_RAW |
                                      (s->has_bitmaps_ext ?
                                       QCOW2_AUTOCLEAR_BITMAPS : 0));

    if (clear) {
        /* Spec: unknown autoclear bits (and the bitmaps bit without a
         * bitmaps extension) are cleared before the first write. */
        uint8_t b[8];
        int ret;
        s->autoclear &= ~clear;
        ferry_st_be64(b, s->autoclear);
        ret = qcow2_write_header_field(s, QCOW2_HDR_AUTOCLEAR_OFF, b, 8);
        if (ret == 0) {
            ret = qcow2_barrier(s);
        }
        if (ret < 0) {
            ferry_error_setg_errno(errp, -ret, "qcow2 '%s': cannot clear the "
                                   "autoclear bits", fname(s));
            return false;
        }
    }
    if ((s->incompat & QCOW2_INCOMPAT_DIRTY) &&
        !(s->bs->open_flags & BLOCK_O_CHECK)) {
        /* Lazy refcounts left dirty: rebuild refcounts before any use. */
        BlockCheckResult res = { 0 };
        int ret;
        if (!qcow2_check_locked(s, &res, BLOCK_FIX_LEAKS | BLOCK_FIX_ERRORS,
                                errp)) {
            g_prefix_error(errp, "qcow2 '%s': repairing the dirty image: ",
                           fname(s));
            return false;
        }
        if (res.corruptions > res.corruptions_fixed) {
            ferry_error_set(errp, FERRY_ERROR_CORRUPT,
                            "qcow2 '%s': the dirty image has %" G_GINT64_FORMAT
                            " corruptions that could not be repaired", fname(s),
                            res.corruptions - res.corruptions_fixed);
            return false;
        }
        s->incompat &= ~QCOW2_INCOMPAT_DIRTY;
        ret = write_incompat(s);
        if (ret == 0) {
            ret = qcow2_barrier(s);
        }
        if (ret < 0) {
            ferry_error_setg_errno(errp, -ret, "qcow2 '%s': cannot clear the "
                                   "dirty bit", fname(s));
            return false;
        }
    }
    return true;
}

static bool qcow2_open(BlockNode *bs, json_t *options, GError **errp)
{
    Qcow2State *s = bs->opaque;
    g_autofree uint8_t *buf = NULL;
    int64_t file_len;
    size_t len;
    bool lazy;
    int ret;

    g_mutex_init(&s->lock);
    g_cond_init(&s->alloc_cond);
    s->bs = bs;
    s->unknown_exts = g_ptr_array_new_with_free_func(unknown_ext_free);
    s->in_flight = g_array_new(FALSE, FALSE, sizeof(Qcow2InFlight));
    s->deferred = g_array_new(FALSE, FALSE, sizeof(Qcow2DeferredFree));
    if (!block_node_open_child(bs, options, "file", BLOCK_CHILD_FILE,
                               ferry_opt_str(options, "filename"), NULL,
                               errp)) {
        if (errp && !*errp) {
            ferry_error_set(errp, FERRY_ERROR_INVALID,
                            "the qcow2 format needs a 'file' or 'filename'");
        }
        goto fail;
    }
    if (!bs->filename && bs->file->node->filename) {
        bs->filename = g_strdup(bs->file->node->filename);
    }
    if (ferry_opt_str(options, "encrypt") || json_is_object(
            json_object_get(options, "encrypt"))) {
        ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED,
                        "qcow2 '%s': encrypted qcow2 images are not supported "
                        "yet", fname(s));
        goto fail;
    }
    file_len = block_node_getlength(bs->file->node);
    if (file_len < 0) {
        ferry_error_setg_errno(errp, (int)-file_len, "qcow2 '%s': cannot get "
                               "the file size", fname(s));
        goto fail;
    }
    len = (size_t)MIN(file_len, (int64_t)(2 << 20));
    if (len < QCOW2_HDR_V2_LEN) {
        CORRUPT("qcow2 '%s': the file is too short (%" G_GINT64_FORMAT " bytes) "
                "for a qcow2 header", fname(s), file_len);
        goto fail;
    }
    buf = g_malloc0(2 << 20);
    ret = block_node_pread(bs->file->node, 0, len, buf, 0);
    if (ret < 0) {
        ferry_error_setg_errno(errp, -ret, "qcow2 '%s': cannot read the header",
                               fname(s));
        goto fail;
    }
    if (!parse_header(s, buf, MIN(len, (size_t)(2 << 20)), file_len, errp) ||
        !load_tables(s, errp) || !setup_caches(s, options, errp) ||
        !qcow2_read_snapshots(s, file_len, errp) ||
        !qcow2_read_bitmap_dir(s, file_len, errp)) {
        goto fail;
    }
    s->file_end = (uint64_t)file_len;
    s->meta_stale = s->inactive_l2_stale = true;
    s->writable = bs->open_flags & BLOCK_O_RDWR;
    if (!ferry_opt_bool(options, "lazy-refcounts",
                        s->compat & QCOW2_COMPAT_LAZY_REFCOUNTS, &lazy, errp) ||
        !ferry_opt_bool(options, "pass-discard-request", true,
                        &s->discard_passthrough[QCOW2_DISCARD_REQUEST], errp) ||
        !ferry_opt_bool(options, "pass-discard-snapshot", true,
                        &s->discard_passthrough[QCOW2_DISCARD_SNAPSHOT], errp) ||
        !ferry_opt_bool(options, "pass-discard-other", false,
                        &s->discard_passthrough[QCOW2_DISCARD_OTHER], errp)) {
        goto fail;
    }
    if (lazy && s->version < 3) {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "qcow2 '%s': lazy refcounts "
                        "need compat=1.1 (version 3)", fname(s));
        goto fail;
    }
    s->lazy_refcounts = lazy;
    if (s->writable && (s->incompat & QCOW2_INCOMPAT_CORRUPT) &&
        !(bs->open_flags & BLOCK_O_CHECK)) {
        CORRUPT("qcow2 '%s': the image is marked corrupt and cannot be opened "
                "read-write (run 'ferry img check -r all' to repair it)",
                fname(s));
        goto fail;
    }
    if (!open_children(s, options, errp)) {
        goto fail;
    }
    if (s->writable && !open_rw_fixups(s, errp)) {
        goto fail;
    }
    /*
     * Bitmaps come into the node unless a read-only user said it does not
     * want them (a writer must load them: its writes change them) or check
     * looks at the image as it is.
     */
    if (s->has_bitmaps_ext && !(bs->open_flags & BLOCK_O_CHECK) &&
        (s->writable || !(bs->open_flags & BLOCK_O_NO_BITMAPS)) &&
        !qcow2_load_bitmaps(s, errp)) {
        goto fail;
    }
    return true;

fail:
    free_state(s);
    memset(s, 0, sizeof(*s));
    return false;
}

/* -- run time ------------------------------------------------------------ */

int qcow2_flush_locked(Qcow2State *s)
{
    int ret;

    if (!s->writable) {
        return 0;
    }
    ret = qcow2_cache_write_all(&s->rb_cache);
    if (ret == 0) {
        ret = qcow2_cache_write_all(&s->l2_cache);
    }
    if (ret == 0 && s->deferred->len) {
        /* Invariant 4: lowered refcounts follow the L2 updates on disk. */
        ret = qcow2_barrier(s);
        if (ret == 0) {
            ret = qcow2_apply_deferred_frees(s);
        }
        if (ret == 0) {
            ret = qcow2_cache_write_all(&s->rb_cache);
        }
    }
    return ret;
}

/*
 * The ordered metadata writes need the lock, and their first barrier
 * also writes back every data cluster written since the last flush: a
 * disk's worth of time during which allocating writes would wait for the
 * lock.  So the data goes to disk first, without the lock (writes carry
 * on meanwhile), and the barriers under the lock find little left to do.
 * Mirror of 1 GiB to a local qcow2 target, flush included: see
 * bench/results/mirror.md.
 */
static int flush_data_unlocked(BlockNode *bs)
{
    BlockChild *kids[2] = { bs->file, bs->data_file };

    for (int i = 0; i < 2; i++) {
        if (kids[i] && (kids[i]->node->open_flags & BLOCK_O_RDWR)) {
            int ret = block_node_flush(kids[i]->node);
            if (ret < 0) {
                return ret;
            }
        }
    }
    return 0;
}

static int qcow2_flush(BlockNode *bs)
{
    Qcow2State *s = bs->opaque;
    int ret;

    if (s->writable && (ret = flush_data_unlocked(bs)) < 0) {
        return ret;
    }
    g_mutex_lock(&s->lock);
    ret = qcow2_flush_locked(s);
    g_mutex_unlock(&s->lock);
    return ret;
}

static void qcow2_close(BlockNode *bs)
{
    Qcow2State *s = bs->opaque;

    if (!s->bs) {
        return;
    }
    if (s->writable && !(s->incompat & QCOW2_INCOMPAT_CORRUPT)) {
        GError *err = NULL;
        g_mutex_lock(&s->lock);
        if (!qcow2_store_bitmaps_locked(s, &err)) {
            ferry_error_report("%s", err->message);
            g_error_free(err);
        }
        if (qcow2_flush_locked(s) == 0 && (s->incompat & QCOW2_INCOMPAT_DIRTY) &&
            qcow2_barrier(s) == 0) {
            s->incompat &= ~QCOW2_INCOMPAT_DIRTY;
            write_incompat(s);
        }
        g_mutex_unlock(&s->lock);
        qcow2_barrier(s);
    }
    free_state(s);
}

static int64_t qcow2_getlength(BlockNode *bs)
{
    Qcow2State *s = bs->opaque;

    return (int64_t)__atomic_load_n(&s->size, __ATOMIC_RELAXED);
}

static int write_size(Qcow2State *s, uint64_t size)
{
    uint8_t b[8];
    int ret;

    ferry_st_be64(b, size);
    ret = qcow2_write_header_field(s, QCOW2_HDR_SIZE_OFF, b, 8);
    return ret ? ret : qcow2_barrier(s);
}

static bool shrink_locked(Qcow2State *s, uint64_t size, GError **errp)
{
    uint64_t cs = s->cluster_size, l2_cover = cs << s->l2_bits;
    uint64_t first_free_l1 = (size + l2_cover - 1) / l2_cover;
    int ret;

    ret = qcow2_discard_range_locked(s, qcow2_align_up(size, cs),
                                     qcow2_align_up(s->size, cs), true,
                                     QCOW2_DISCARD_OTHER);
    if (ret == 0) {
        ret = qcow2_flush_locked(s);
    }
    for (uint64_t i = first_free_l1; ret == 0 && i < s->l1_size; i++) {
        uint64_t l2 = s->l1[i] & QCOW2_L1E_OFFSET_MASK;
        uint64_t be = 0;
        if (!l2) {
            continue;
        }
        ret = qcow2_cache_write_all(&s->l2_cache);
        if (ret == 0) {
            ret = block_node_pwrite(s->bs->file->node, s->l1_offset + i * 8, 8,
                                    &be, 0);
        }
        if (ret == 0) {
            s->l1[i] = 0;
            qcow2_cache_discard(&s->l2_cache, l2);
            qcow2_free_deferred(s, l2, 1, QCOW2_DISCARD_OTHER);
        }
    }
    if (ret == 0) {
        ret = qcow2_barrier(s);
    }
    if (ret == 0) {
        ret = qcow2_flush_locked(s);
    }
    if (ret == 0) {
        ret = write_size(s, size);
    }
    if (ret < 0) {
        ferry_error_setg_errno(errp, -ret, "qcow2 '%s': cannot shrink the image",
                               fname(s));
        return false;
    }
    s->size = size;
    return true;
}

/* Inconsistent bitmaps cannot follow a resize: QEMU refuses it too. */
static bool has_inconsistent_bitmaps(BlockNode *bs)
{
    bool found = false;

    g_mutex_lock(&bs->bitmaps_lock);
    for (GList *l = bs->bitmaps; l && !found; l = l->next) {
        BlockDirtyBitmap *bm = l->data;
        found = bm->persistent && bm->inconsistent;
    }
    g_mutex_unlock(&bs->bitmaps_lock);
    return found;
}

static bool qcow2_truncate(BlockNode *bs, int64_t size, bool exact,
                           BlockPrealloc prealloc, GError **errp)
{
    Qcow2State *s = bs->opaque;
    uint64_t old = s->size, l2_cover = s->cluster_size << s->l2_bits;
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&s->lock);
    uint64_t host_end = 0;
    int ret;

    if ((uint64_t)size == old) {
        return true;
    }
    if (s->incompat & QCOW2_INCOMPAT_CORRUPT) {
        CORRUPT("qcow2 '%s': the image is marked corrupt", fname(s));
        return false;
    }
    if (s->nb_snapshots && s->version < 3) {
        /* v2 snapshot entries need not record their disk size. */
        ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED, "qcow2 '%s': cannot "
                        "resize a compat=0.10 image with internal snapshots",
                        fname(s));
        return false;
    }
    if (has_inconsistent_bitmaps(bs)) {
        ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED, "qcow2 '%s': cannot "
                        "resize an image with inconsistent bitmaps (remove "
                        "them with 'ferry img bitmap --remove')", fname(s));
        return false;
    }
    ret = qcow2_bitmaps_before_write_locked(s);
    if (ret < 0) {
        ferry_error_setg_errno(errp, -ret, "qcow2 '%s': cannot mark the "
                               "bitmaps in use", fname(s));
        return false;
    }
    if ((uint64_t)size < old) {
        if (!exact) {
            return true;    /* "at least size": it already is */
        }
        if (s->nb_snapshots) {
            ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED, "qcow2 '%s': cannot "
                            "shrink an image with internal snapshots", fname(s));
            return false;
        }
        if (prealloc != BLOCK_PREALLOC_OFF) {
            ferry_error_set(errp, FERRY_ERROR_INVALID, "qcow2 '%s': "
                            "preallocation only applies when growing", fname(s));
            return false;
        }
        return shrink_locked(s, size, errp);
    }
    ret = qcow2_grow_l1_locked(s, ((uint64_t)size + l2_cover - 1) / l2_cover);
    if (ret == 0 && prealloc != BLOCK_PREALLOC_OFF) {
        ret = qcow2_preallocate_locked(s, old, size, &host_end);
        if (ret == 0) {
            ret = qcow2_flush_locked(s);
        }
    }
    if (ret == 0) {
        ret = write_size(s, size);
    }
    if (ret < 0) {
        ferry_error_setg_errno(errp, -ret, "qcow2 '%s': cannot grow the image to "
                               "%" G_GINT64_FORMAT " bytes", fname(s), size);
        return false;
    }
    __atomic_store_n(&s->size, (uint64_t)size, __ATOMIC_RELAXED);
    if (host_end) {
        BlockNode *data = qcow2_data_node(s);
        BlockPrealloc fp = prealloc == BLOCK_PREALLOC_METADATA
                           ? BLOCK_PREALLOC_OFF : prealloc;
        if (!block_node_truncate(data, host_end, false, fp, errp)) {
            g_prefix_error(errp, "qcow2 '%s': preallocating: ", fname(s));
            return false;
        }
    }
    return true;
}

static bool qcow2_get_info(BlockNode *bs, BlockImageInfo *info, GError **errp)
{
    Qcow2State *s = bs->opaque;
    json_t *data = json_object();
    json_t *fs = json_object();

    info->cluster_size = s->cluster_size;
    info->dirty_flag = s->incompat & QCOW2_INCOMPAT_DIRTY;
    info->encrypted = s->crypt_method != 0;
    json_object_set_new(data, "compat",
                        json_string(s->version >= 3 ? "1.1" : "0.10"));
    json_object_set_new(data, "compression-type",
                        json_string(s->compression_type == QCOW2_COMPRESS_ZSTD
                                    ? "zstd" : "zlib"));
    if (s->version >= 3) {
        json_object_set_new(data, "lazy-refcounts",
                            json_boolean(s->compat & QCOW2_COMPAT_LAZY_REFCOUNTS));
        g_mutex_lock(&s->lock);
        if (s->bitmaps && s->bitmaps->len) {
            json_object_set_new(data, "bitmaps", qcow2_bitmap_info(s));
        }
        g_mutex_unlock(&s->lock);
    }
    json_object_set_new(data, "refcount-bits", json_integer(s->refcount_bits));
    if (s->incompat & QCOW2_INCOMPAT_DATA_FILE) {
        if (s->data_file_name) {
            json_object_set_new(data, "data-file",
                                json_string(s->data_file_name));
        }
        json_object_set_new(data, "data-file-raw",
                            json_boolean(s->data_file_raw));
    }
    if (s->version >= 3) {
        json_object_set_new(data, "corrupt",
                            json_boolean(s->incompat & QCOW2_INCOMPAT_CORRUPT));
        json_object_set_new(data, "extended-l2", json_boolean(s->extended_l2));
    }
    json_object_set_new(fs, "type", json_string("qcow2"));
    json_object_set_new(fs, "data", data);
    info->format_specific = fs;
    return true;
}

static bool qcow2_reopen(BlockNode *bs, uint32_t new_flags, GError **errp)
{
    Qcow2State *s = bs->opaque;
    bool rw = new_flags & BLOCK_O_RDWR;

    if (rw == s->writable) {
        return true;
    }
    if (!rw) {
        GError *err = NULL;
        g_mutex_lock(&s->lock);
        if (!qcow2_store_bitmaps_locked(s, &err)) {
            g_propagate_error(errp, err);
            g_mutex_unlock(&s->lock);
            return false;
        }
        qcow2_flush_locked(s);
        if (s->incompat & QCOW2_INCOMPAT_DIRTY) {
            qcow2_barrier(s);
            s->incompat &= ~QCOW2_INCOMPAT_DIRTY;
            write_incompat(s);
        }
        g_mutex_unlock(&s->lock);
        s->writable = false;
        return true;
    }
    if (s->incompat & QCOW2_INCOMPAT_CORRUPT) {
        CORRUPT("qcow2 '%s': the image is marked corrupt and cannot be made "
                "writable", fname(s));
        return false;
    }
    s->writable = true;
    if (!open_rw_fixups(s, errp)) {
        s->writable = false;
        return false;
    }
    if (s->bitmaps_loaded) {
        /* Writes will change them from now on: IN_USE before the first. */
        bool any = false;
        g_mutex_lock(&bs->bitmaps_lock);
        for (GList *l = bs->bitmaps; l; l = l->next) {
            BlockDirtyBitmap *bm = l->data;
            if (bm->persistent) {
                bm->readonly = false;
                any = any || !bm->inconsistent;
            }
        }
        g_mutex_unlock(&bs->bitmaps_lock);
        s->bitmaps_need_mark = any;
    } else if (s->has_bitmaps_ext && !qcow2_load_bitmaps(s, errp)) {
        s->writable = false;
        return false;
    }
    return true;
}

static bool qcow2_change_backing_file(BlockNode *bs, const char *backing_file,
                                      const char *backing_fmt, GError **errp)
{
    Qcow2State *s = bs->opaque;
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&s->lock);
    char *old_name = s->backing_name, *old_fmt = s->backing_fmt;

    s->backing_name = g_strdup(backing_file);
    s->backing_fmt = backing_file ? g_strdup(backing_fmt) : NULL;
    if (qcow2_flush_locked(s) < 0 || !qcow2_update_header(s, errp)) {
        if (errp && !*errp) {
            ferry_error_set(errp, FERRY_ERROR_IO, "qcow2 '%s': cannot flush",
                            fname(s));
        }
        g_free(s->backing_name);
        g_free(s->backing_fmt);
        s->backing_name = old_name;
        s->backing_fmt = old_fmt;
        return false;
    }
    g_free(old_name);
    g_free(old_fmt);
    g_free(bs->backing_file);
    g_free(bs->backing_format);
    bs->backing_file = g_strdup(s->backing_name);
    bs->backing_format = g_strdup(s->backing_fmt);
    return true;
}

static int qcow2_probe(const uint8_t *buf, size_t len, const char *filename)
{
    if (len >= 8 && ferry_ld_be32(buf) == QCOW2_MAGIC &&
        (ferry_ld_be32(buf + 4) == 2 || ferry_ld_be32(buf + 4) == 3)) {
        return 100;
    }
    return 0;
}

const BlockDriver qcow2_driver = {
    .name                = "qcow2",
    .kind                = BLOCK_DRIVER_FORMAT,
    .caps                = BLOCK_CAP_BACKING | BLOCK_CAP_COMPRESSED |
                           BLOCK_CAP_ZERO_INIT | BLOCK_CAP_SNAPSHOTS |
                           BLOCK_CAP_BITMAPS,
    .state_size          = sizeof(Qcow2State),
    .open_opts           = qcow2_open_opts,
    .create_opts         = qcow2_create_opts,
    .probe               = qcow2_probe,
    .open                = qcow2_open,
    .close               = qcow2_close,
    .create              = qcow2_create,
    .pread               = qcow2_pread,
    .pwrite              = qcow2_pwrite,
    .pwrite_zeroes       = qcow2_pwrite_zeroes,
    .pdiscard            = qcow2_pdiscard,
    .flush               = qcow2_flush,
    .block_status        = qcow2_block_status,
    .getlength           = qcow2_getlength,
    .truncate            = qcow2_truncate,
    .reopen              = qcow2_reopen,
    .get_info            = qcow2_get_info,
    .check               = qcow2_check,
    .change_backing_file = qcow2_change_backing_file,
    .measure             = qcow2_measure,
    .make_empty          = qcow2_make_empty,
    .amend               = qcow2_amend,
    .snapshot_create     = qcow2_snapshot_create,
    .snapshot_goto       = qcow2_snapshot_goto,
    .snapshot_delete     = qcow2_snapshot_delete,
    .snapshot_list       = qcow2_snapshot_list,
    .bitmaps_store       = qcow2_bitmaps_store,
    .bitmap_can_store    = qcow2_bitmap_can_store,
    .bitmap_remove_persistent = qcow2_bitmap_remove_persistent,
};
