/*
 * null-co and null-aio: a disk of a given size that stores nothing.  Reads
 * return zeroes (read-zeroes=on is ferry's default: handing out whatever
 * was in the buffer is never what a user wants), writes are dropped.  For
 * benchmarks and tests.
 */
#include "config.h"

#include <string.h>

#include "blockdev/driver.h"
#include "common/error.h"
#include "common/opts.h"

typedef struct NullState {
    int64_t size;       /* bytes */
    bool read_zeroes;
} NullState;

static const char *const null_open_opts[] = {
    "filename", "size", "read-zeroes", "latency-ns", NULL,
};

static bool null_open(BlockNode *bs, json_t *options, GError **errp)
{
    NullState *s = bs->opaque;
    uint64_t size;

    if (!ferry_opt_size(options, "size", INT64_C(1) << 30, &size, errp) ||
        !ferry_opt_bool(options, "read-zeroes", true, &s->read_zeroes, errp)) {
        return false;
    }
    s->size = size;
    if (!bs->filename) {
        bs->filename = g_strdup_printf("%s://", bs->drv->name);
    }
    return true;
}

static int null_pread(BlockNode *bs, int64_t offset, int64_t bytes, void *buf,
                      uint32_t flags)
{
    NullState *s = bs->opaque;

    if (s->read_zeroes) {
        memset(buf, 0, bytes);
    }
    return 0;
}

static int null_pwrite(BlockNode *bs, int64_t offset, int64_t bytes,
                       const void *buf, uint32_t flags)
{
    return 0;
}

static int null_pwrite_zeroes(BlockNode *bs, int64_t offset, int64_t bytes,
                              uint32_t flags)
{
    return 0;
}

static int null_block_status(BlockNode *bs, int64_t offset, int64_t bytes,
                             int64_t *pnum, int64_t *map, BlockNode **file)
{
    NullState *s = bs->opaque;

    *pnum = bytes;
    *map = offset;
    *file = bs;
    return BLOCK_STATUS_OFFSET_VALID | BLOCK_STATUS_ALLOCATED |
           (s->read_zeroes ? BLOCK_STATUS_ZERO : BLOCK_STATUS_DATA);
}

static int64_t null_getlength(BlockNode *bs)
{
    return ((NullState *)bs->opaque)->size;
}

static bool null_truncate(BlockNode *bs, int64_t size, bool exact,
                          BlockPrealloc prealloc, GError **errp)
{
    ((NullState *)bs->opaque)->size = size;
    return true;
}

#define NULL_DRIVER(drv_name)                              \
    {                                                      \
        .name          = drv_name,                         \
        .kind          = BLOCK_DRIVER_PROTOCOL,            \
        .caps          = BLOCK_CAP_ZERO_INIT,              \
        .state_size    = sizeof(NullState),                \
        .open_opts     = null_open_opts,                   \
        .protocols     = (const char *const[]){ drv_name "://", NULL }, \
        .open          = null_open,                        \
        .pread         = null_pread,                       \
        .pwrite        = null_pwrite,                      \
        .pwrite_zeroes = null_pwrite_zeroes,               \
        .block_status  = null_block_status,                \
        .getlength     = null_getlength,                   \
        .truncate      = null_truncate,                    \
    }

const BlockDriver null_co_driver = NULL_DRIVER("null-co");
const BlockDriver null_aio_driver = NULL_DRIVER("null-aio");
