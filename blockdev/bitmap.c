/*
 * In-memory dirty bitmaps.  Loading and storing persistent ones is the
 * format driver's business (qcow2/bitmap.c); this file only keeps bits.
 */
#include "config.h"

#include <string.h>

#include "blockdev/bitmap.h"
#include "blockdev/driver.h"
#include "common/error.h"

static uint64_t nb_words(uint64_t nb_bits)
{
    return (nb_bits + 63) / 64;
}

BlockDirtyBitmap *block_dirty_bitmap_find(BlockNode *bs, const char *name)
{
    BlockDirtyBitmap *found = NULL;

    g_mutex_lock(&bs->bitmaps_lock);
    for (GList *l = bs->bitmaps; l; l = l->next) {
        BlockDirtyBitmap *bm = l->data;
        if (!g_strcmp0(bm->name, name)) {
            found = bm;
            break;
        }
    }
    g_mutex_unlock(&bs->bitmaps_lock);
    return found;
}

BlockDirtyBitmap *block_dirty_bitmap_create(BlockNode *bs, const char *name,
                                            uint32_t granularity,
                                            GError **errp)
{
    int64_t size = block_node_getlength(bs);
    BlockDirtyBitmap *bm;

    if (size < 0) {
        ferry_error_setg_errno(errp, (int)-size, "cannot get the size of '%s'",
                               bs->node_name);
        return NULL;
    }
    if (granularity < 512 || (granularity & (granularity - 1)) ||
        granularity > (1u << 31)) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "bitmap granularity %u must be a power of two "
                        "between 512 and 2 GiB", granularity);
        return NULL;
    }
    if (name && (!*name || strlen(name) > 1023)) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "bitmap name must be 1 to 1023 bytes");
        return NULL;
    }
    if (name && block_dirty_bitmap_find(bs, name)) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "bitmap '%s' already exists on node '%s'", name,
                        bs->node_name);
        return NULL;
    }
    bm = g_new0(BlockDirtyBitmap, 1);
    bm->name = g_strdup(name);
    bm->node = bs;
    bm->granularity = granularity;
    bm->size = size;
    bm->nb_bits = ((uint64_t)size + granularity - 1) / granularity;
    bm->bits = g_try_new0(uint64_t, MAX(nb_words(bm->nb_bits), 1));
    if (!bm->bits) {
        ferry_error_set(errp, FERRY_ERROR_NO_SPACE,
                        "no memory for bitmap '%s' of %" G_GUINT64_FORMAT
                        " bits", name, bm->nb_bits);
        g_free(bm->name);
        g_free(bm);
        return NULL;
    }
    bm->enabled = true;
    g_mutex_lock(&bs->bitmaps_lock);
    bs->bitmaps = g_list_append(bs->bitmaps, bm);
    g_mutex_unlock(&bs->bitmaps_lock);
    return bm;
}

static void bitmap_free(BlockDirtyBitmap *bm)
{
    g_free(bm->bits);
    g_free(bm->name);
    g_free(bm);
}

bool block_dirty_bitmap_remove(BlockNode *bs, const char *name, GError **errp)
{
    BlockDirtyBitmap *bm = block_dirty_bitmap_find(bs, name);

    if (!bm) {
        ferry_error_set(errp, FERRY_ERROR_NOT_FOUND,
                        "bitmap '%s' not found on node '%s'", name,
                        bs->node_name);
        return false;
    }
    if (bm->busy) {
        ferry_error_set(errp, FERRY_ERROR_LOCKED,
                        "bitmap '%s' is in use and cannot be removed", name);
        return false;
    }
    if (bm->persistent && bs->drv->bitmap_remove_persistent &&
        !bs->drv->bitmap_remove_persistent(bs, name, errp)) {
        return false;
    }
    g_mutex_lock(&bs->bitmaps_lock);
    bs->bitmaps = g_list_remove(bs->bitmaps, bm);
    g_mutex_unlock(&bs->bitmaps_lock);
    bitmap_free(bm);
    return true;
}

void block_dirty_bitmap_release(BlockDirtyBitmap *bm)
{
    BlockNode *bs = bm->node;

    g_mutex_lock(&bs->bitmaps_lock);
    bs->bitmaps = g_list_remove(bs->bitmaps, bm);
    g_mutex_unlock(&bs->bitmaps_lock);
    bitmap_free(bm);
}

void block_dirty_bitmaps_release(BlockNode *bs)
{
    g_mutex_lock(&bs->bitmaps_lock);
    g_list_free_full(bs->bitmaps, (GDestroyNotify)bitmap_free);
    bs->bitmaps = NULL;
    g_mutex_unlock(&bs->bitmaps_lock);
}

/* Bits [first, last] of the bitmap, set (value) or cleared. */
static void change_bits(BlockDirtyBitmap *bm, uint64_t first, uint64_t last,
                        bool value)
{
    for (uint64_t w = first / 64; w <= last / 64; w++) {
        uint64_t lo = w == first / 64 ? first % 64 : 0;
        uint64_t hi = w == last / 64 ? last % 64 : 63;
        uint64_t mask = (hi == 63 ? ~UINT64_C(0) : ((UINT64_C(1) << (hi + 1)) - 1)) &
                        ~((UINT64_C(1) << lo) - 1);
        if (value) {
            if ((__atomic_load_n(&bm->bits[w], __ATOMIC_RELAXED) & mask) != mask) {
                __atomic_fetch_or(&bm->bits[w], mask, __ATOMIC_RELAXED);
            }
        } else {
            __atomic_fetch_and(&bm->bits[w], ~mask, __ATOMIC_RELAXED);
        }
    }
}

static bool range_to_bits(BlockDirtyBitmap *bm, int64_t offset, int64_t bytes,
                          bool outward, uint64_t *first, uint64_t *last)
{
    int64_t end;

    if (bytes <= 0 || offset >= bm->size) {
        return false;
    }
    end = MIN(offset + bytes, bm->size);
    if (outward) {
        *first = offset / bm->granularity;
        *last = (end - 1) / bm->granularity;
    } else {
        /* Clearing: only granules wholly inside the range (or the tail). */
        *first = (offset + bm->granularity - 1) / bm->granularity;
        if (end == bm->size) {
            *last = bm->nb_bits - 1;
        } else if (end / bm->granularity == 0) {
            return false;
        } else {
            *last = end / bm->granularity - 1;
        }
        if (*first > *last) {
            return false;
        }
    }
    return true;
}

void block_dirty_bitmap_set(BlockDirtyBitmap *bm, int64_t offset, int64_t bytes)
{
    uint64_t first, last;

    if (range_to_bits(bm, offset, bytes, true, &first, &last)) {
        change_bits(bm, first, last, true);
    }
}

void block_dirty_bitmap_reset(BlockDirtyBitmap *bm, int64_t offset,
                              int64_t bytes)
{
    uint64_t first, last;

    if (range_to_bits(bm, offset, bytes, false, &first, &last)) {
        change_bits(bm, first, last, false);
    }
}

void block_dirty_bitmap_clear(BlockDirtyBitmap *bm)
{
    memset(bm->bits, 0, nb_words(bm->nb_bits) * 8);
}

bool block_dirty_bitmap_get(BlockDirtyBitmap *bm, int64_t offset)
{
    uint64_t bit;

    if (offset < 0 || offset >= bm->size) {
        return false;
    }
    bit = offset / bm->granularity;
    return (__atomic_load_n(&bm->bits[bit / 64], __ATOMIC_RELAXED) >> (bit % 64)) & 1;
}

bool block_dirty_bitmap_merge(BlockDirtyBitmap *dst, BlockDirtyBitmap *src,
                              GError **errp)
{
    if (dst->granularity != src->granularity) {
        /* Different granularity: mark dst for every dirty extent of src. */
        int64_t off = 0, len;
        while ((off = block_dirty_bitmap_next_extent(src, off, src->size, true,
                                                     &len)) >= 0) {
            block_dirty_bitmap_set(dst, off, len);
            off += len;
        }
        return true;
    }
    for (uint64_t w = 0; w < MIN(nb_words(dst->nb_bits), nb_words(src->nb_bits)); w++) {
        __atomic_fetch_or(&dst->bits[w], src->bits[w], __ATOMIC_RELAXED);
    }
    return true;
}

uint64_t block_dirty_bitmap_count(BlockDirtyBitmap *bm)
{
    uint64_t n = 0;

    for (uint64_t w = 0; w < nb_words(bm->nb_bits); w++) {
        n += __builtin_popcountll(bm->bits[w]);
    }
    if (n && block_dirty_bitmap_get(bm, bm->size - 1) && bm->size % bm->granularity) {
        /* The last granule is partial. */
        return (n - 1) * bm->granularity + bm->size % bm->granularity;
    }
    return n * bm->granularity;
}

static bool bit_at(BlockDirtyBitmap *bm, uint64_t bit)
{
    return (__atomic_load_n(&bm->bits[bit / 64], __ATOMIC_RELAXED) >> (bit % 64)) & 1;
}

/* First bit >= from with value `want`, or nb_bits if none. */
static uint64_t find_bit(BlockDirtyBitmap *bm, uint64_t from, bool want)
{
    uint64_t bit = from;

    while (bit < bm->nb_bits) {
        uint64_t w = __atomic_load_n(&bm->bits[bit / 64], __ATOMIC_RELAXED);
        if (!want) {
            w = ~w;
        }
        w &= ~UINT64_C(0) << (bit % 64);
        if (w) {
            bit = (bit & ~UINT64_C(63)) + __builtin_ctzll(w);
            return MIN(bit, bm->nb_bits);
        }
        bit = (bit & ~UINT64_C(63)) + 64;
    }
    return bm->nb_bits;
}

int64_t block_dirty_bitmap_next_extent(BlockDirtyBitmap *bm, int64_t offset,
                                       int64_t end, bool want_dirty,
                                       int64_t *len)
{
    uint64_t start_bit, stop_bit;
    int64_t start, stop;

    end = MIN(end, bm->size);
    if (offset >= end) {
        return -1;
    }
    start_bit = offset / bm->granularity;
    if (bit_at(bm, start_bit) != want_dirty) {
        start_bit = find_bit(bm, start_bit, want_dirty);
    }
    start = MAX((int64_t)(start_bit * bm->granularity), offset);
    if (start >= end) {
        return -1;
    }
    stop_bit = find_bit(bm, start_bit, !want_dirty);
    stop = MIN((int64_t)MIN(stop_bit * (uint64_t)bm->granularity, (uint64_t)INT64_MAX), end);
    *len = stop - start;
    return start;
}

bool block_dirty_bitmap_resize(BlockDirtyBitmap *bm, int64_t size)
{
    uint64_t nb_bits = ((uint64_t)size + bm->granularity - 1) / bm->granularity;
    uint64_t *bits = g_try_new0(uint64_t, MAX(nb_words(nb_bits), 1));

    if (!bits) {
        return false;
    }
    memcpy(bits, bm->bits, MIN(nb_words(nb_bits), nb_words(bm->nb_bits)) * 8);
    if (nb_bits < bm->nb_bits && nb_bits % 64) {
        bits[nb_bits / 64] &= (UINT64_C(1) << (nb_bits % 64)) - 1;
    }
    g_free(bm->bits);
    bm->bits = bits;
    bm->nb_bits = nb_bits;
    bm->size = size;
    return true;
}

void block_dirty_bitmaps_mark(BlockNode *bs, int64_t offset, int64_t bytes)
{
    g_mutex_lock(&bs->bitmaps_lock);
    for (GList *l = bs->bitmaps; l; l = l->next) {
        BlockDirtyBitmap *bm = l->data;
        if (bm->enabled) {
            block_dirty_bitmap_set(bm, offset, bytes);
        }
    }
    g_mutex_unlock(&bs->bitmaps_lock);
}
