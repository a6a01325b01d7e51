/*
 * Creating qcow2 images with qemu-img's option names and qemu-img 7.2's
 * defaults (compat=1.1, 64 KiB clusters, 16-bit refcounts, zlib).  Layout:
 * header, refcount table, refcount blocks, L1 table; preallocation then
 * goes through the same code as a growing truncate.
 */
#include "config.h"

#include <errno.h>
#include <string.h>

#include "common/error.h"
#include "common/opts.h"
#include "qcow2/internal.h"

const BlockCreateOpt qcow2_create_opts[] = {
    { "size", BLOCK_OPT_SIZE, "Virtual disk size" },
    { "compat", BLOCK_OPT_STRING, "Compatibility level (v2 [0.10], v3 [1.1])" },
    { "backing_file", BLOCK_OPT_STRING, "File name of a base image" },
    { "backing_fmt", BLOCK_OPT_STRING, "Image format of the base image" },
    { "data_file", BLOCK_OPT_STRING, "File name of an external data file" },
    { "data_file_raw", BLOCK_OPT_BOOL,
      "The external data file must stay valid as a raw image" },
    { "encryption", BLOCK_OPT_BOOL,
      "Encrypt the image with format 'aes' (not supported)" },
    { "encrypt.format", BLOCK_OPT_STRING,
      "Encrypt the image, format choices: 'aes', 'luks' (not supported)" },
    { "encrypt", BLOCK_OPT_STRING, "Encryption options (not supported)" },
    { "cluster_size", BLOCK_OPT_SIZE, "qcow2 cluster size" },
    { "extended_l2", BLOCK_OPT_BOOL, "Extended L2 tables" },
    { "preallocation", BLOCK_OPT_STRING,
      "Preallocation mode (allowed values: off, metadata, falloc, full)" },
    { "lazy_refcounts", BLOCK_OPT_BOOL,
      "Postpone refcount updates" },
    { "refcount_bits", BLOCK_OPT_NUMBER,
      "Width of a reference count entry in bits" },
    { "compression_type", BLOCK_OPT_STRING,
      "Compression method used for image cluster compression" },
    { NULL },
};

typedef struct CreateParams {
    uint64_t size;
    uint32_t version;
    uint64_t cluster_size;
    uint32_t refcount_order;
    bool lazy, extl2, data_raw;
    uint32_t compression;
    BlockPrealloc prealloc;
    const char *backing, *backing_fmt, *data_file;
} CreateParams;

static bool parse_params(json_t *opts, CreateParams *p, GError **errp)
{
    const char *compat = ferry_opt_str(opts, "compat");
    const char *ct = ferry_opt_str(opts, "compression_type");
    const char *pre = ferry_opt_str(opts, "preallocation");
    const char *key;
    json_t *val;
    uint64_t rbits;
    bool enc;

    json_object_foreach(opts, key, val) {
        if (g_str_has_prefix(key, "encrypt")) {
            if (!strcmp(key, "encryption") &&
                ferry_opt_bool(opts, key, false, &enc, NULL) && !enc) {
                continue;
            }
            ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED,
                            "encrypted qcow2 images are not supported yet");
            return false;
        }
    }
    memset(p, 0, sizeof(*p));
    if (!ferry_opt_size(opts, "size", 0, &p->size, errp) ||
        !ferry_opt_size(opts, "cluster_size", 65536, &p->cluster_size, errp) ||
        !ferry_opt_uint(opts, "refcount_bits", 16, &rbits, errp) ||
        !ferry_opt_bool(opts, "lazy_refcounts", false, &p->lazy, errp) ||
        !ferry_opt_bool(opts, "extended_l2", false, &p->extl2, errp) ||
        !ferry_opt_bool(opts, "data_file_raw", false, &p->data_raw, errp)) {
        return false;
    }
    if (!compat || !strcmp(compat, "1.1") || !strcmp(compat, "v3")) {
        p->version = 3;
    } else if (!strcmp(compat, "0.10") || !strcmp(compat, "v2")) {
        p->version = 2;
    } else {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "invalid compatibility "
                        "level '%s' (0.10, v2, 1.1 or v3)", compat);
        return false;
    }
    if (p->cluster_size < 512 || p->cluster_size > (2u << 20) ||
        (p->cluster_size & (p->cluster_size - 1))) {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "cluster size must be a "
                        "power of two between 512 and 2M, not %" G_GUINT64_FORMAT,
                        p->cluster_size);
        return false;
    }
    if (!rbits || rbits > 64 || (rbits & (rbits - 1))) {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "refcount_bits must be a "
                        "power of two up to 64, not %" G_GUINT64_FORMAT, rbits);
        return false;
    }
    p->refcount_order = (uint32_t)__builtin_ctzll(rbits);
    p->compression = QCOW2_COMPRESS_ZLIB;
    if (ct && !strcmp(ct, "zstd")) {
#ifndef HAVE_ZSTD
        ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED, "this ferry was built "
                        "without zstd");
        return false;
#endif
        p->compression = QCOW2_COMPRESS_ZSTD;
    } else if (ct && strcmp(ct, "zlib")) {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "compression_type must be "
                        "zlib or zstd, not '%s'", ct);
        return false;
    }
    if (pre && !block_parse_prealloc(pre, &p->prealloc, errp)) {
        return false;
    }
    p->backing = ferry_opt_str(opts, "backing_file");
    p->backing_fmt = ferry_opt_str(opts, "backing_fmt");
    p->data_file = ferry_opt_str(opts, "data_file");
    if (p->version < 3) {
        const char *need = p->lazy ? "lazy refcounts" :
                           p->extl2 ? "extended L2 entries" :
                           rbits != 16 ? "refcount widths other than 16 bits" :
                           p->compression ? "compression type zstd" :
                           p->data_file ? "an external data file" : NULL;
        if (need) {
            ferry_error_set(errp, FERRY_ERROR_INVALID, "%s need compat=1.1 "
                            "(v3)", need);
            return false;
        }
    }
    if (p->extl2 && p->cluster_size < 16384) {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "extended L2 entries need a "
                        "cluster size of at least 16 KiB");
        return false;
    }
    if (p->data_raw && !p->data_file) {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "data_file_raw needs "
                        "data_file");
        return false;
    }
    if (p->backing_fmt && !p->backing) {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "backing_fmt needs "
                        "backing_file");
        return false;
    }
    if (p->backing && p->data_raw) {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "a backing file cannot go "
                        "with data_file_raw");
        return false;
    }
    if (p->backing && p->prealloc != BLOCK_PREALLOC_OFF) {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "preallocation cannot go "
                        "with a backing file");
        return false;
    }
    if (p->size > (UINT64_C(1) << 62)) {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "image size %"
                        G_GUINT64_FORMAT " is too large", p->size);
        return false;
    }
    return true;
}

/* Write the initial metadata into an empty file node. */
static bool write_layout(BlockNode *file, const CreateParams *p,
                         const char *filename, GError **errp)
{
    Qcow2State s = { 0 };
    uint64_t cs = p->cluster_size;
    uint32_t cbits = (uint32_t)__builtin_ctzll(cs);
    uint32_t l2_bits = cbits - (p->extl2 ? 4 : 3);
    uint64_t l2_cover = cs << l2_bits;
    uint64_t l1_size = (p->size + l2_cover - 1) / l2_cover;
    uint64_t l1c = qcow2_align_up(MAX(l1_size, 1) * 8, cs) / cs;
    uint64_t rb_entries = cs * 8 >> p->refcount_order;
    uint64_t rt = 1, k = 1, total;
    g_autofree uint8_t *buf = NULL;
    int ret;

    if (l1_size * 8 > QCOW2_MAX_L1_BYTES) {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "image size %"
                        G_GUINT64_FORMAT " needs too large an L1 table for "
                        "%" G_GUINT64_FORMAT "-byte clusters", p->size, cs);
        return false;
    }
    for (;;) {
        uint64_t k2, rt2;
        total = 1 + rt + k + l1c;
        k2 = (total + rb_entries - 1) / rb_entries;
        rt2 = qcow2_align_up(k2 * 8, cs) / cs;
        if (k2 == k && rt2 == rt) {
            break;
        }
        k = k2;
        rt = rt2;
    }
    s.version = p->version;
    s.cluster_bits = cbits;
    s.cluster_size = cs;
    s.size = p->size;
    s.l1_size = (uint32_t)l1_size;
    s.l1_offset = (1 + rt + k) * cs;
    s.reftable_offset = cs;
    s.reftable_clusters = (uint32_t)rt;
    s.refcount_order = p->refcount_order;
    s.header_length = QCOW2_HDR_V3_CREATE_LEN;
    s.compression_type = p->compression;
    s.compat = p->lazy ? QCOW2_COMPAT_LAZY_REFCOUNTS : 0;
    s.incompat = (p->compression ? QCOW2_INCOMPAT_COMPRESSION : 0) |
                 (p->extl2 ? QCOW2_INCOMPAT_EXTL2 : 0) |
                 (p->data_file ? QCOW2_INCOMPAT_DATA_FILE : 0);
    s.autoclear = p->data_raw ? QCOW2_AUTOCLEAR_DATA_RAW : 0;
    s.backing_name = (char *)p->backing;
    s.backing_fmt = (char *)p->backing_fmt;
    s.data_file_name = (char *)p->data_file;
    buf = g_malloc0(total * cs);
    if (!qcow2_serialize_header(&s, buf, MIN(cs, (uint64_t)65536))) {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "the header and its "
                        "extensions do not fit in one %" G_GUINT64_FORMAT
                        "-byte cluster", cs);
        return false;
    }
    for (uint64_t b = 0; b < k; b++) {
        uint64_t be = GUINT64_TO_BE((1 + rt + b) * cs);
        memcpy(buf + cs + b * 8, &be, 8);
    }
    for (uint64_t c = 0; c < total; c++) {
        qcow2_rc_set_entry(buf + (1 + rt + c / rb_entries) * cs,
                           p->refcount_order, c % rb_entries, 1);
    }
    ret = block_node_pwrite(file, 0, total * cs, buf, 0);
    if (ret == 0) {
        ret = block_node_flush(file);
    }
    if (ret < 0) {
        ferry_error_setg_errno(errp, -ret, "cannot write the qcow2 metadata "
                               "of '%s'", filename);
        return false;
    }
    return true;
}

static bool preallocate(const char *filename, const CreateParams *p,
                        GError **errp)
{
    g_autoptr(json_t) opts = json_object();
    g_autoptr(BlockNode) bs = NULL;
    Qcow2State *s;
    uint64_t host_end = 0;
    int ret;

    json_object_set_new(opts, "driver", json_string("qcow2"));
    json_object_set_new(opts, "filename", json_string(filename));
    bs = block_node_open_opts(opts, BLOCK_O_RDWR | BLOCK_O_NO_BACKING |
                              BLOCK_O_NO_BITMAPS,
                              BLOCK_PERM_CONSISTENT_READ | BLOCK_PERM_WRITE |
                              BLOCK_PERM_RESIZE, BLOCK_PERM_CONSISTENT_READ,
                              errp);
    if (!bs) {
        return false;
    }
    s = bs->opaque;
    g_mutex_lock(&s->lock);
    ret = qcow2_preallocate_locked(s, 0, p->size, &host_end);
    if (ret == 0) {
        ret = qcow2_flush_locked(s);
    }
    g_mutex_unlock(&s->lock);
    if (ret < 0) {
        ferry_error_setg_errno(errp, -ret, "cannot preallocate '%s'", filename);
        return false;
    }
    if (host_end && !s->has_data_file &&
        !block_node_truncate(bs->file->node, host_end, false,
                             p->prealloc == BLOCK_PREALLOC_METADATA
                             ? BLOCK_PREALLOC_OFF : p->prealloc, errp)) {
        return false;
    }
    return true;
}

bool qcow2_create(const char *filename, json_t *opts, GError **errp)
{
    CreateParams p;
    g_autoptr(json_t) fopts = json_object();
    g_autoptr(json_t) nopts = json_object();
    g_autoptr(BlockNode) file = NULL;

    if (!parse_params(opts, &p, errp)) {
        return false;
    }
    json_object_set_new(fopts, "size", json_integer(0));
    if (!block_create_file(filename, fopts, errp)) {
        return false;
    }
    if (p.data_file) {
        g_autoptr(json_t) dopts = json_object();
        g_autofree char *path = block_backing_path(filename, p.data_file);
        json_object_set_new(dopts, "size", json_integer(p.size));
        if (p.prealloc == BLOCK_PREALLOC_FALLOC ||
            p.prealloc == BLOCK_PREALLOC_FULL) {
            json_object_set_new(dopts, "preallocation",
                                json_string(block_prealloc_name(p.prealloc)));
        }
        if (!block_create_file(path, dopts, errp)) {
            g_prefix_error(errp, "data file: ");
            return false;
        }
    }
    json_object_set_new(nopts, "filename", json_string(filename));
    json_object_set_new(nopts, "driver",
                        json_string(block_driver_for_filename(filename)->name));
    file = block_node_open_opts(nopts, BLOCK_O_RDWR,
                                BLOCK_PERM_CONSISTENT_READ | BLOCK_PERM_WRITE |
                                BLOCK_PERM_RESIZE, BLOCK_PERM_CONSISTENT_READ,
                                errp);
    if (!file || !write_layout(file, &p, filename, errp)) {
        return false;
    }
    g_clear_pointer(&file, block_node_unref);
    if (p.prealloc != BLOCK_PREALLOC_OFF && p.size) {
        return preallocate(filename, &p, errp);
    }
    return true;
}
