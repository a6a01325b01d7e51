/*
 * qcow2 persistent dirty bitmaps: the bitmaps extension and its directory
 * (validated at open), loading bitmaps into the node (blockdev/bitmap.h),
 * the IN_USE marking before the first write, storing them back (close,
 * bitmaps_store), removal, and what "info" lists.  The bits themselves are
 * the graph's; this file only moves them between memory and the image.
 * Spec: "Bitmaps extension", "Bitmaps".  Write order: internal.h,
 * invariant 9.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "blockdev/bitmap.h"
#include "common/bytes.h"
#include "common/error.h"
#include "common/log.h"
#include "qcow2/internal.h"

#define DIR_ENTRY_HEADER 24

static void bitmap_entry_free(gpointer p)
{
    Qcow2Bitmap *b = p;

    g_free(b->name);
    g_free(b);
}

void qcow2_bitmaps_free(Qcow2State *s)
{
    g_clear_pointer(&s->bitmaps, g_ptr_array_unref);
}

static Qcow2Bitmap *dir_find(GPtrArray *dir, const char *name)
{
    for (guint i = 0; dir && i < dir->len; i++) {
        Qcow2Bitmap *b = dir->pdata[i];
        if (!strcmp(b->name, name)) {
            return b;
        }
    }
    return NULL;
}

static uint64_t dir_entry_bytes(size_t name_len)
{
    return qcow2_align_up(DIR_ENTRY_HEADER + name_len, 8);
}

/* Bitmap table entries a bitmap of this granularity needs for `size`. */
static uint64_t table_entries(Qcow2State *s, uint64_t size, uint32_t gbits)
{
    uint64_t bits = (size + (1ull << gbits) - 1) >> gbits;
    uint64_t bytes = (bits + 7) / 8;

    return (bytes + s->cluster_size - 1) >> s->cluster_bits;
}

/* FNV-1a over the words: tells a store whether a bitmap changed. */
static uint64_t bits_digest(BlockDirtyBitmap *bm)
{
    uint64_t h = 0xcbf29ce484222325ull;

    for (uint64_t w = 0; w < (bm->nb_bits + 63) / 64; w++) {
        h ^= __atomic_load_n(&bm->bits[w], __ATOMIC_RELAXED);
        h *= 0x100000001b3ull;
    }
    return h ^ bm->nb_bits;
}

/* -- the extension and the directory -------------------------------------- */

/*
 * The bitmaps header extension (24 bytes).  Without the autoclear bit the
 * data is stale: warn and ignore it, as QEMU does (it is dropped the next
 * time the header is written).
 */
bool qcow2_parse_bitmaps_ext(Qcow2State *s, const uint8_t *data, uint32_t len,
                             GError **errp)
{
    const char *f = qcow2_fname(s);
    uint32_t nb;

    if (len != 24) {
        ferry_error_set(errp, FERRY_ERROR_CORRUPT, "qcow2 '%s': the bitmaps "
                        "extension has %u bytes (24 expected)", f, len);
        return false;
    }
    if (s->version < 3 || !(s->autoclear & QCOW2_AUTOCLEAR_BITMAPS)) {
        ferry_warn("qcow2 '%s': the bitmaps were modified by a program "
                   "without bitmap support; they are ignored (run 'ferry img "
                   "check -r leaks' to reclaim their clusters)", f);
        return true;
    }
    nb = ferry_ld_be32(data);
    s->bitmap_dir_size = ferry_ld_be64(data + 8);
    s->bitmap_dir_offset = ferry_ld_be64(data + 16);
    if (ferry_ld_be32(data + 4)) {
        ferry_error_set(errp, FERRY_ERROR_CORRUPT, "qcow2 '%s': the reserved "
                        "field of the bitmaps extension is not zero", f);
        return false;
    }
    if (nb == 0 || nb > QCOW2_MAX_BITMAPS) {
        ferry_error_set(errp, FERRY_ERROR_CORRUPT, "qcow2 '%s': the bitmaps "
                        "extension names %u bitmaps (1 to %u allowed)", f, nb,
                        QCOW2_MAX_BITMAPS);
        return false;
    }
    if (s->bitmap_dir_size < DIR_ENTRY_HEADER * (uint64_t)nb ||
        s->bitmap_dir_size > QCOW2_MAX_BITMAP_DIR_BYTES) {
        ferry_error_set(errp, FERRY_ERROR_CORRUPT, "qcow2 '%s': bitmap "
                        "directory size %" G_GUINT64_FORMAT " is invalid for %u "
                        "bitmaps", f, s->bitmap_dir_size, nb);
        return false;
    }
    if (s->bitmap_dir_offset & (s->cluster_size - 1) ||
        s->bitmap_dir_offset < s->cluster_size) {
        ferry_error_set(errp, FERRY_ERROR_CORRUPT, "qcow2 '%s': bitmap "
                        "directory offset 0x%" G_GINT64_MODIFIER "x is invalid",
                        f, s->bitmap_dir_offset);
        return false;
    }
    s->nb_bitmaps = nb;
    s->has_bitmaps_ext = true;
    return true;
}

/* One directory entry at dir[pos], checked against the spec and QEMU. */
static Qcow2Bitmap *parse_dir_entry(Qcow2State *s, const uint8_t *dir,
                                    uint64_t size, uint64_t *pos, uint32_t i,
                                    uint64_t file_len, GError **errp)
{
    const char *f = qcow2_fname(s), *why = NULL;
    const uint8_t *e = dir + *pos;
    uint32_t name_len, extra;
    Qcow2Bitmap *b;

    if (size - *pos < DIR_ENTRY_HEADER) {
        ferry_error_set(errp, FERRY_ERROR_CORRUPT, "qcow2 '%s': bitmap "
                        "directory entry %u runs past the directory", f, i);
        return NULL;
    }
    name_len = (uint32_t)e[18] << 8 | e[19];
    extra = ferry_ld_be32(e + 20);
    if (extra > size || DIR_ENTRY_HEADER + (uint64_t)extra + name_len >
                        size - *pos) {
        ferry_error_set(errp, FERRY_ERROR_CORRUPT, "qcow2 '%s': bitmap "
                        "directory entry %u runs past the directory", f, i);
        return NULL;
    }
    b = g_new0(Qcow2Bitmap, 1);
    b->table_offset = ferry_ld_be64(e);
    b->table_size = ferry_ld_be32(e + 8);
    b->flags = ferry_ld_be32(e + 12);
    b->granularity_bits = e[17];
    if (e[16] != QCOW2_BME_TYPE_DIRTY) {
        why = "is not a dirty tracking bitmap";
    } else if (b->granularity_bits < QCOW2_BME_MIN_GRAN_BITS ||
               b->granularity_bits > QCOW2_BME_MAX_GRAN_BITS) {
        why = "has a granularity out of range (2^9 to 2^31)";
    } else if (b->flags & ~(QCOW2_BME_FLAG_IN_USE | QCOW2_BME_FLAG_AUTO |
                            QCOW2_BME_FLAG_EXTRA_COMPAT)) {
        why = "has reserved flags set";
    } else if (name_len == 0 || name_len > QCOW2_BME_MAX_NAME) {
        why = "has a name of invalid length";
    } else if (extra) {
        why = "has extra data ferry does not understand";
    } else if (b->table_offset & (s->cluster_size - 1) ||
               (b->table_size && b->table_offset < s->cluster_size)) {
        why = "has an invalid bitmap table offset";
    } else if (b->table_size > QCOW2_BME_MAX_TABLE_SIZE ||
               (uint64_t)b->table_size * s->cluster_size >
               QCOW2_BME_MAX_PHYS_SIZE) {
        why = "has a bitmap table too large";
    } else if (b->table_offset >= file_len ||
               (uint64_t)b->table_size * 8 > file_len - b->table_offset) {
        why = "has its bitmap table past the end of the file";
    }
    if (why) {
        ferry_error_set(errp, FERRY_ERROR_CORRUPT, "qcow2 '%s': bitmap "
                        "directory entry %u %s", f, i, why);
        bitmap_entry_free(b);
        return NULL;
    }
    b->name = g_strndup((const char *)e + DIR_ENTRY_HEADER + extra, name_len);
    if (strlen(b->name) != name_len) {
        ferry_error_set(errp, FERRY_ERROR_CORRUPT, "qcow2 '%s': bitmap "
                        "directory entry %u has a NUL byte in its name", f, i);
        bitmap_entry_free(b);
        return NULL;
    }
    *pos += qcow2_align_up(DIR_ENTRY_HEADER + (uint64_t)extra + name_len, 8);
    return b;
}

/* Read and check the directory the extension names (at open). */
bool qcow2_read_bitmap_dir(Qcow2State *s, uint64_t file_len, GError **errp)
{
    const char *f = qcow2_fname(s);
    g_autofree uint8_t *dir = NULL;
    uint64_t pos = 0;
    int ret;

    s->bitmaps = g_ptr_array_new_with_free_func(bitmap_entry_free);
    if (!s->has_bitmaps_ext) {
        return true;
    }
    if (s->bitmap_dir_offset >= file_len ||
        s->bitmap_dir_size > file_len - s->bitmap_dir_offset) {
        ferry_error_set(errp, FERRY_ERROR_CORRUPT, "qcow2 '%s': the bitmap "
                        "directory (%" G_GUINT64_FORMAT " bytes at 0x%"
                        G_GINT64_MODIFIER "x) is past the end of the file", f,
                        s->bitmap_dir_size, s->bitmap_dir_offset);
        return false;
    }
    dir = g_try_malloc(s->bitmap_dir_size);
    if (!dir) {
        ferry_error_set(errp, FERRY_ERROR_NO_SPACE, "qcow2 '%s': no memory for "
                        "the bitmap directory", f);
        return false;
    }
    ret = block_node_pread(s->bs->file->node, s->bitmap_dir_offset,
                           s->bitmap_dir_size, dir, 0);
    if (ret < 0) {
        ferry_error_setg_errno(errp, -ret, "qcow2 '%s': cannot read the bitmap "
                               "directory", f);
        return false;
    }
    for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
        Qcow2Bitmap *b = parse_dir_entry(s, dir, s->bitmap_dir_size, &pos, i,
                                         file_len, errp);
        if (!b) {
            return false;
        }
        if (dir_find(s->bitmaps, b->name)) {
            ferry_error_set(errp, FERRY_ERROR_CORRUPT, "qcow2 '%s': bitmap "
                            "directory entry %u repeats the name of another", f,
                            i);
            bitmap_entry_free(b);
            return false;
        }
        g_ptr_array_add(s->bitmaps, b);
    }
    if (pos != s->bitmap_dir_size) {
        ferry_error_set(errp, FERRY_ERROR_CORRUPT, "qcow2 '%s': the bitmap "
                        "directory has %" G_GUINT64_FORMAT " bytes, its %u "
                        "entries %" G_GUINT64_FORMAT, f, s->bitmap_dir_size,
                        s->nb_bitmaps, pos);
        return false;
    }
    return true;
}

/* -- loading the bits ---------------------------------------------------- */

static bool load_bits(Qcow2State *s, Qcow2Bitmap *b, BlockDirtyBitmap *bm,
                      GError **errp)
{
    const char *f = qcow2_fname(s);
    uint64_t cs = s->cluster_size;
    uint64_t nbytes = (bm->nb_bits + 7) / 8;
    uint64_t nwords = (bm->nb_bits + 63) / 64;
    g_autofree uint64_t *table = NULL;
    uint8_t *bytes = (uint8_t *)bm->bits;
    int ret;

    if (b->table_size != table_entries(s, bm->size, b->granularity_bits)) {
        ferry_error_set(errp, FERRY_ERROR_CORRUPT, "qcow2 '%s': bitmap '%s' "
                        "has %u table entries, not the %" G_GUINT64_FORMAT
                        " its size needs", f, b->name, b->table_size,
                        table_entries(s, bm->size, b->granularity_bits));
        return false;
    }
    table = g_try_new(uint64_t, MAX(b->table_size, 1));
    if (!table) {
        ferry_error_set(errp, FERRY_ERROR_NO_SPACE, "qcow2 '%s': no memory for "
                        "bitmap '%s'", f, b->name);
        return false;
    }
    ret = b->table_size ? block_node_pread(s->bs->file->node, b->table_offset,
                                           (int64_t)b->table_size * 8, table,
                                           0) : 0;
    if (ret < 0) {
        ferry_error_setg_errno(errp, -ret, "qcow2 '%s': cannot read the table "
                               "of bitmap '%s'", f, b->name);
        return false;
    }
    for (uint32_t i = 0; i < b->table_size; i++) {
        uint64_t e = GUINT64_FROM_BE(table[i]);
        uint64_t off = e & QCOW2_BME_ENTRY_OFFSET_MASK;
        uint64_t start = (uint64_t)i * cs, n = MIN(cs, nbytes - start);
        if ((e & QCOW2_BME_ENTRY_RESERVED) || (off && (e & 1)) ||
            (off && ((off & (cs - 1)) || off < cs || off >= s->file_end))) {
            ferry_error_set(errp, FERRY_ERROR_CORRUPT, "qcow2 '%s': bitmap "
                            "'%s' table entry %u (0x%" G_GINT64_MODIFIER "x) is "
                            "invalid", f, b->name, i, e);
            return false;
        }
        if (off) {
            ret = block_node_pread(s->bs->file->node, off, n, bytes + start, 0);
            if (ret < 0) {
                ferry_error_setg_errno(errp, -ret, "qcow2 '%s': cannot read "
                                       "bitmap '%s'", f, b->name);
                return false;
            }
        } else {
            memset(bytes + start, (e & QCOW2_BME_ENTRY_ALL_ONES) ? 0xff : 0, n);
        }
    }
    /* The file's bit order is little-endian by byte: make words of it. */
    for (uint64_t w = 0; w < nwords; w++) {
        bm->bits[w] = GUINT64_FROM_LE(bm->bits[w]);
    }
    if (bm->nb_bits % 64) {
        bm->bits[nwords - 1] &= (1ull << (bm->nb_bits % 64)) - 1;
    }
    b->digest = bits_digest(bm);
    b->has_digest = true;
    return true;
}

/*
 * Create the node's bitmaps from the directory: persistent, enabled from
 * the auto flag, inconsistent (and left unread) if IN_USE.
 */
bool qcow2_load_bitmaps(Qcow2State *s, GError **errp)
{
    BlockNode *bs = s->bs;
    bool mark = false;

    for (guint i = 0; i < s->bitmaps->len; i++) {
        Qcow2Bitmap *b = s->bitmaps->pdata[i];
        BlockDirtyBitmap *bm = block_dirty_bitmap_create(
            bs, b->name, 1u << b->granularity_bits, errp);
        if (!bm) {
            g_prefix_error(errp, "qcow2 '%s': bitmap directory entry %u: ",
                           qcow2_fname(s), i);
            goto fail;
        }
        bm->persistent = true;
        bm->enabled = b->flags & QCOW2_BME_FLAG_AUTO;
        bm->readonly = !s->writable;
        if (b->flags & QCOW2_BME_FLAG_IN_USE) {
            bm->inconsistent = true;
            continue;
        }
        if (!load_bits(s, b, bm, errp)) {
            goto fail;
        }
        mark = true;
    }
    s->bitmaps_loaded = true;
    s->bitmaps_need_mark = mark && s->writable;
    return true;

fail:
    block_dirty_bitmaps_release(bs);
    return false;
}

/* -- writing ------------------------------------------------------------- */

static size_t serialize_dir(GPtrArray *dir, uint8_t **out)
{
    size_t size = 0, pos = 0;
    uint8_t *buf;

    for (guint i = 0; i < dir->len; i++) {
        size += dir_entry_bytes(strlen(((Qcow2Bitmap *)dir->pdata[i])->name));
    }
    buf = g_malloc0(MAX(size, 1));
    for (guint i = 0; i < dir->len; i++) {
        Qcow2Bitmap *b = dir->pdata[i];
        size_t name_len = strlen(b->name);
        ferry_st_be64(buf + pos, b->table_offset);
        ferry_st_be32(buf + pos + 8, b->table_size);
        ferry_st_be32(buf + pos + 12, b->flags);
        buf[pos + 16] = QCOW2_BME_TYPE_DIRTY;
        buf[pos + 17] = (uint8_t)b->granularity_bits;
        buf[pos + 18] = (uint8_t)(name_len >> 8);
        buf[pos + 19] = (uint8_t)name_len;
        memcpy(buf + pos + DIR_ENTRY_HEADER, b->name, name_len);
        pos += dir_entry_bytes(name_len);
    }
    *out = buf;
    return size;
}

static int write_autoclear(Qcow2State *s)
{
    uint8_t b[8];
    int ret;

    ferry_st_be64(b, s->autoclear);
    ret = qcow2_write_header_field(s, QCOW2_HDR_AUTOCLEAR_OFF, b, 8);
    return ret ? ret : qcow2_barrier(s);
}

/*
 * Invariant 9: before the first write, every bitmap loaded from the image
 * gets IN_USE on disk.  The directory is rewritten in place while the
 * autoclear bit is clear, so a torn write is never trusted.
 */
int qcow2_bitmaps_before_write_locked(Qcow2State *s)
{
    g_autofree uint8_t *dir = NULL;
    size_t size;
    int ret;

    if (!s->bitmaps_need_mark) {
        return 0;
    }
    for (guint i = 0; i < s->bitmaps->len; i++) {
        ((Qcow2Bitmap *)s->bitmaps->pdata[i])->flags |= QCOW2_BME_FLAG_IN_USE;
    }
    size = serialize_dir(s->bitmaps, &dir);
    g_assert(size == s->bitmap_dir_size);
    s->autoclear &= ~QCOW2_AUTOCLEAR_BITMAPS;
    ret = write_autoclear(s);
    if (ret == 0) {
        ret = block_node_pwrite(s->bs->file->node, s->bitmap_dir_offset, size,
                                dir, 0);
    }
    if (ret == 0) {
        ret = qcow2_barrier(s);
    }
    if (ret == 0) {
        s->autoclear |= QCOW2_AUTOCLEAR_BITMAPS;
        ret = write_autoclear(s);
    }
    if (ret < 0) {
        /* Bitmaps on disk can no longer be trusted: refuse the write. */
        return ret;
    }
    s->bitmaps_need_mark = false;
    FERRY_TRACE_POINT(QCOW2, "node=%s bitmaps-in-use n=%u", s->bs->node_name,
                      s->nb_bitmaps);
    return 0;
}

int qcow2_bitmaps_before_write(Qcow2State *s)
{
    int ret;

    if (G_LIKELY(!__atomic_load_n(&s->bitmaps_need_mark, __ATOMIC_ACQUIRE))) {
        return 0;
    }
    g_mutex_lock(&s->lock);
    ret = qcow2_bitmaps_before_write_locked(s);
    g_mutex_unlock(&s->lock);
    return ret;
}

/* Free a bitmap's table and data clusters (its entry is gone from disk). */
static int free_bitmap_clusters(Qcow2State *s, const Qcow2Bitmap *b)
{
    g_autofree uint64_t *table = g_try_new(uint64_t, MAX(b->table_size, 1));
    uint64_t cs = s->cluster_size;
    int ret;

    if (!table) {
        return -ENOMEM;
    }
    ret = b->table_size ? block_node_pread(s->bs->file->node, b->table_offset,
                                           (int64_t)b->table_size * 8, table,
                                           0) : 0;
    for (uint32_t i = 0; ret == 0 && i < b->table_size; i++) {
        uint64_t off = GUINT64_FROM_BE(table[i]) & QCOW2_BME_ENTRY_OFFSET_MASK;
        if (off && !(off & (cs - 1)) && off < s->file_end) {
            ret = qcow2_free_clusters_now(s, off, 1, QCOW2_DISCARD_OTHER);
        }
    }
    if (ret == 0 && b->table_size) {
        ret = qcow2_free_clusters_now(s, b->table_offset,
                                      qcow2_align_up((uint64_t)b->table_size * 8,
                                                     cs) >> s->cluster_bits,
                                      QCOW2_DISCARD_OTHER);
    }
    return ret;
}

/* Write one bitmap's data clusters and table; fills b's table fields. */
static int write_bitmap(Qcow2State *s, BlockDirtyBitmap *bm, Qcow2Bitmap *b)
{
    uint64_t cs = s->cluster_size;
    uint64_t nbytes = (bm->nb_bits + 7) / 8;
    uint64_t entries = table_entries(s, bm->size, b->granularity_bits);
    uint64_t tclusters = qcow2_align_up(entries * 8, cs) >> s->cluster_bits;
    g_autofree uint64_t *table = g_try_new0(uint64_t, MAX(tclusters * cs / 8,
                                                          1));
    g_autofree uint8_t *cl = g_try_malloc(cs);
    int64_t toff;
    int ret = 0;

    if (!table || !cl) {
        return -ENOMEM;
    }
    for (uint64_t i = 0; i < entries; i++) {
        uint64_t start = i * cs, n = MIN(cs, nbytes - start);
        bool zero = true;
        int64_t off;
        memset(cl, 0, cs);
        for (uint64_t k = 0; k < n; k += 8) {
            uint64_t w = __atomic_load_n(&bm->bits[(start + k) / 8],
                                         __ATOMIC_RELAXED);
            w = GUINT64_TO_LE(w);
            memcpy(cl + k, &w, MIN((uint64_t)8, n - k));
            zero = zero && !w;
        }
        if (zero) {
            continue;
        }
        off = qcow2_alloc_clusters(s, 1);
        if (off < 0) {
            return (int)off;
        }
        table[i] = GUINT64_TO_BE((uint64_t)off);
        ret = block_node_pwrite(s->bs->file->node, off, cs, cl, 0);
        if (ret < 0) {
            return ret;
        }
    }
    toff = entries ? qcow2_alloc_clusters(s, tclusters) : 0;
    if (toff < 0) {
        return (int)toff;
    }
    if (entries) {
        ret = block_node_pwrite(s->bs->file->node, toff, tclusters * cs, table,
                                0);
    }
    b->table_offset = (uint64_t)toff;
    b->table_size = (uint32_t)entries;
    b->digest = bits_digest(bm);
    b->has_digest = true;
    return ret;
}

/*
 * Point the header at dir (invariant 9): the directory in new clusters,
 * flushed, then the header with the extension (or without it, and the
 * autoclear bit clear, when dir is empty), then the old directory freed.
 */
static int switch_dir(Qcow2State *s, GPtrArray *dir)
{
    uint64_t old_off = s->bitmap_dir_offset, old_size = s->bitmap_dir_size;
    bool had = s->has_bitmaps_ext;
    g_autofree uint8_t *buf = NULL;
    size_t size = serialize_dir(dir, &buf);
    uint64_t clusters = qcow2_align_up(size, s->cluster_size)
                        >> s->cluster_bits;
    int64_t off = 0;
    int ret;

    if (size > QCOW2_MAX_BITMAP_DIR_BYTES) {
        return -EFBIG;
    }
    if (size) {
        g_autofree uint8_t *padded = g_malloc0(clusters << s->cluster_bits);
        memcpy(padded, buf, size);
        off = qcow2_alloc_clusters(s, clusters);
        if (off < 0) {
            return (int)off;
        }
        ret = block_node_pwrite(s->bs->file->node, off,
                                clusters << s->cluster_bits, padded, 0);
        if (ret < 0) {
            return ret;
        }
    }
    ret = qcow2_cache_write_all(&s->rb_cache);
    if (ret == 0) {
        ret = qcow2_barrier(s);
    }
    if (ret < 0) {
        return ret;
    }
    s->bitmap_dir_offset = (uint64_t)off;
    s->bitmap_dir_size = size;
    s->nb_bitmaps = dir->len;
    s->has_bitmaps_ext = dir->len > 0;
    if (dir->len) {
        s->autoclear |= QCOW2_AUTOCLEAR_BITMAPS;
    } else {
        s->autoclear &= ~QCOW2_AUTOCLEAR_BITMAPS;
    }
    if (!qcow2_update_header(s, NULL)) {
        s->bitmap_dir_offset = old_off;
        s->bitmap_dir_size = old_size;
        s->has_bitmaps_ext = had;
        return -EIO;
    }
    if (s->bitmaps != dir) {
        g_ptr_array_unref(s->bitmaps);
        s->bitmaps = g_ptr_array_ref(dir);
    }
    s->meta_stale = true;
    if (had && old_size) {
        ret = qcow2_free_clusters_now(s, old_off,
                                      qcow2_align_up(old_size, s->cluster_size)
                                      >> s->cluster_bits, QCOW2_DISCARD_OTHER);
    }
    return ret;
}

/* The node's bitmaps this image stores: persistent, consistent, ours. */
static GPtrArray *storable_bitmaps(BlockNode *bs)
{
    GPtrArray *out = g_ptr_array_new();

    g_mutex_lock(&bs->bitmaps_lock);
    for (GList *l = bs->bitmaps; l; l = l->next) {
        BlockDirtyBitmap *bm = l->data;
        if (bm->persistent && !bm->inconsistent && !bm->readonly) {
            g_ptr_array_add(out, bm);
        }
    }
    g_mutex_unlock(&bs->bitmaps_lock);
    return out;
}

static uint32_t bm_flags(BlockDirtyBitmap *bm)
{
    return bm->enabled ? QCOW2_BME_FLAG_AUTO : 0;
}

static BlockDirtyBitmap *mem_find(GPtrArray *mem, const char *name)
{
    for (guint k = 0; k < mem->len; k++) {
        BlockDirtyBitmap *bm = mem->pdata[k];
        if (!strcmp(bm->name, name)) {
            return bm;
        }
    }
    return NULL;
}

/* Does the image already hold exactly what memory has? */
static bool store_needed(Qcow2State *s, GPtrArray *mem)
{
    for (guint i = 0; i < s->bitmaps->len; i++) {
        Qcow2Bitmap *b = s->bitmaps->pdata[i];
        if ((b->flags & QCOW2_BME_FLAG_IN_USE) && mem_find(mem, b->name)) {
            return true;    /* marked in use by us */
        }
    }
    for (guint i = 0; i < mem->len; i++) {
        BlockDirtyBitmap *bm = mem->pdata[i];
        Qcow2Bitmap *b = dir_find(s->bitmaps, bm->name);
        if (!b || b->flags != bm_flags(bm) || !b->has_digest ||
            (1u << b->granularity_bits) != bm->granularity ||
            b->table_size != table_entries(s, bm->size, b->granularity_bits) ||
            b->digest != bits_digest(bm)) {
            return true;
        }
    }
    return false;
}

static Qcow2Bitmap *entry_copy(const Qcow2Bitmap *b)
{
    Qcow2Bitmap *copy = g_memdup2(b, sizeof(*b));

    copy->name = g_strdup(b->name);
    return copy;
}

/*
 * Store the node's bitmaps (invariant 9).  The directory keeps its order:
 * entries memory has are written anew in place, the others (inconsistent,
 * or not loaded) stay as they are, new bitmaps go at the end.
 */
bool qcow2_store_bitmaps_locked(Qcow2State *s, GError **errp)
{
    g_autoptr(GPtrArray) mem = NULL;
    g_autoptr(GPtrArray) dir = NULL;
    g_autoptr(GPtrArray) replaced = NULL;
    g_autoptr(GPtrArray) sources = g_ptr_array_new();
    int ret = 0;

    if (!s->writable || (s->incompat & QCOW2_INCOMPAT_CORRUPT)) {
        return true;
    }
    mem = storable_bitmaps(s->bs);
    if (!store_needed(s, mem)) {
        return true;
    }
    if (mem->len && s->version < 3) {
        /* They can never be stored here: say it once, not again at close. */
        for (guint i = 0; i < mem->len; i++) {
            ((BlockDirtyBitmap *)mem->pdata[i])->persistent = false;
        }
        ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED, "qcow2 '%s': cannot store "
                        "dirty bitmaps in a compat=0.10 image", qcow2_fname(s));
        return false;
    }
    dir = g_ptr_array_new_with_free_func(bitmap_entry_free);
    replaced = g_ptr_array_new_with_free_func(bitmap_entry_free);
    for (guint i = 0; i < s->bitmaps->len; i++) {
        Qcow2Bitmap *b = s->bitmaps->pdata[i];
        BlockDirtyBitmap *bm = mem_find(mem, b->name);
        g_ptr_array_add(dir, entry_copy(b));
        g_ptr_array_add(sources, bm);
        if (bm) {
            g_ptr_array_add(replaced, entry_copy(b));
        }
    }
    for (guint k = 0; k < mem->len; k++) {
        BlockDirtyBitmap *bm = mem->pdata[k];
        if (!dir_find(s->bitmaps, bm->name)) {
            Qcow2Bitmap *b = g_new0(Qcow2Bitmap, 1);
            b->name = g_strdup(bm->name);
            g_ptr_array_add(dir, b);
            g_ptr_array_add(sources, bm);
        }
    }
    ret = qcow2_flush_locked(s);
    for (guint i = 0; i < dir->len && ret == 0; i++) {
        Qcow2Bitmap *b = dir->pdata[i];
        BlockDirtyBitmap *bm = sources->pdata[i];
        if (!bm) {
            continue;
        }
        b->flags = bm_flags(bm);
        b->granularity_bits = (uint32_t)__builtin_ctz(bm->granularity);
        ret = write_bitmap(s, bm, b);
    }
    if (ret == 0) {
        ret = switch_dir(s, dir);
    }
    for (guint i = 0; i < replaced->len && ret == 0; i++) {
        ret = free_bitmap_clusters(s, replaced->pdata[i]);
    }
    if (ret == 0) {
        ret = qcow2_flush_locked(s);
    }
    if (ret < 0) {
        ferry_error_setg_errno(errp, -ret, "qcow2 '%s': cannot store the "
                               "bitmaps", qcow2_fname(s));
        return false;
    }
    s->bitmaps_loaded = true;
    s->bitmaps_need_mark = mem->len > 0;
    FERRY_TRACE_POINT(QCOW2, "node=%s bitmaps-store n=%u dir=0x%"
                      G_GINT64_MODIFIER "x", s->bs->node_name, s->nb_bitmaps,
                      s->bitmap_dir_offset);
    return true;
}

/* -- driver ops ---------------------------------------------------------- */

bool qcow2_bitmaps_store(BlockNode *bs, GError **errp)
{
    Qcow2State *s = bs->opaque;
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&s->lock);

    if (!s->writable) {
        ferry_error_set(errp, FERRY_ERROR_PERMISSION, "qcow2 '%s': the image is "
                        "read-only", qcow2_fname(s));
        return false;
    }
    return qcow2_store_bitmaps_locked(s, errp);
}

bool qcow2_bitmap_can_store(BlockNode *bs, const char *name,
                            uint32_t granularity, GError **errp)
{
    Qcow2State *s = bs->opaque;
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&s->lock);
    uint64_t len = s->size, dir_bytes = s->bitmap_dir_size;
    uint32_t gbits, count = s->nb_bitmaps;
    const char *why = NULL;
    g_autoptr(GPtrArray) mem = storable_bitmaps(bs);

    for (guint i = 0; i < mem->len; i++) {
        BlockDirtyBitmap *bm = mem->pdata[i];
        if (!dir_find(s->bitmaps, bm->name)) {
            count++;
            dir_bytes += dir_entry_bytes(strlen(bm->name));
        }
    }
    if (s->version < 3) {
        why = "cannot store dirty bitmaps in qcow2 v2 (compat=0.10) files";
    } else if (granularity < 512 || (granularity & (granularity - 1)) ||
               granularity > (1u << QCOW2_BME_MAX_GRAN_BITS)) {
        why = "the granularity must be a power of two from 512 bytes to 2 GiB";
    } else if (!name || !*name || strlen(name) > QCOW2_BME_MAX_NAME) {
        why = "the name must have 1 to 1023 bytes";
    } else if (len == 0) {
        why = "the image is empty (QEMU cannot store a bitmap of 0 bytes)";
    } else if (dir_find(s->bitmaps, name)) {
        why = "the image already stores a bitmap of that name";
    } else if (count >= QCOW2_MAX_BITMAPS) {
        why = "the image already has the most bitmaps qcow2 allows";
    } else if (dir_bytes + dir_entry_bytes(strlen(name)) >
               QCOW2_MAX_BITMAP_DIR_BYTES) {
        why = "the bitmap directory is full";
    }
    if (!why) {
        gbits = (uint32_t)__builtin_ctz(granularity);
        if ((len >> gbits) > QCOW2_BME_MAX_PHYS_SIZE ||
            table_entries(s, len, gbits) > QCOW2_BME_MAX_TABLE_SIZE) {
            why = "too much space would be taken by the bitmap: use a larger "
                  "granularity";
        }
    }
    if (why) {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "Can't make bitmap '%s' "
                        "persistent in '%s': %s", name ? name : "",
                        qcow2_fname(s), why);
        return false;
    }
    return true;
}

bool qcow2_bitmap_remove_persistent(BlockNode *bs, const char *name,
                                    GError **errp)
{
    Qcow2State *s = bs->opaque;
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&s->lock);
    g_autoptr(GPtrArray) dir = NULL;
    Qcow2Bitmap *gone = dir_find(s->bitmaps, name);
    Qcow2Bitmap keep;
    int ret;

    if (!gone) {
        return true;    /* only in memory so far */
    }
    if (!s->writable) {
        ferry_error_set(errp, FERRY_ERROR_PERMISSION, "qcow2 '%s': the image is "
                        "read-only", qcow2_fname(s));
        return false;
    }
    dir = g_ptr_array_new_with_free_func(bitmap_entry_free);
    for (guint i = 0; i < s->bitmaps->len; i++) {
        Qcow2Bitmap *b = s->bitmaps->pdata[i];
        if (b != gone) {
            g_ptr_array_add(dir, entry_copy(b));
        }
    }
    keep = *gone;
    keep.name = g_strdup(gone->name);
    ret = qcow2_flush_locked(s);
    if (ret == 0) {
        ret = switch_dir(s, dir);
    }
    if (ret == 0) {
        ret = free_bitmap_clusters(s, &keep);
    }
    g_free(keep.name);
    if (ret == 0) {
        ret = qcow2_flush_locked(s);
    }
    if (ret < 0) {
        ferry_error_setg_errno(errp, -ret, "qcow2 '%s': cannot remove bitmap "
                               "'%s' from the image", qcow2_fname(s), name);
        return false;
    }
    return true;
}

/* [{"flags": [...], "name": ..., "granularity": ...}] as qemu-img info. */
json_t *qcow2_bitmap_info(Qcow2State *s)
{
    json_t *list = json_array();

    for (guint i = 0; s->bitmaps && i < s->bitmaps->len; i++) {
        Qcow2Bitmap *b = s->bitmaps->pdata[i];
        json_t *o = json_object(), *flags = json_array();
        if (b->flags & QCOW2_BME_FLAG_IN_USE) {
            json_array_append_new(flags, json_string("in-use"));
        }
        if (b->flags & QCOW2_BME_FLAG_AUTO) {
            json_array_append_new(flags, json_string("auto"));
        }
        json_object_set_new(o, "flags", flags);
        json_object_set_new(o, "name", json_string(b->name));
        json_object_set_new(o, "granularity",
                            json_integer((json_int_t)1 << b->granularity_bits));
        json_array_append_new(list, o);
    }
    return list;
}

/* Metadata clusters of the bitmaps: directory and tables (overlap check). */
void qcow2_collect_bitmap_meta(Qcow2State *s, GArray *out)
{
    uint64_t cs = s->cluster_size;

    if (!s->has_bitmaps_ext) {
        return;
    }
    for (uint64_t o = 0; o < s->bitmap_dir_size; o += cs) {
        uint64_t off = (s->bitmap_dir_offset + o) & ~(cs - 1);
        g_array_append_val(out, off);
    }
    for (guint i = 0; s->bitmaps && i < s->bitmaps->len; i++) {
        Qcow2Bitmap *b = s->bitmaps->pdata[i];
        for (uint64_t o = 0; o < (uint64_t)b->table_size * 8; o += cs) {
            uint64_t off = b->table_offset + o;
            g_array_append_val(out, off);
        }
    }
}
