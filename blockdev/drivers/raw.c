/*
 * The raw format: the file's bytes as the disk, optionally a window of them
 * (offset/size options).  A probed raw image refuses writes to its first
 * sector that would make it probe as another format next time, as QEMU
 * does, so a guest cannot turn its disk into a qcow2 pointing at host files.
 */
#include "config.h"

#include <errno.h>
#include <string.h>

#include "blockdev/driver.h"
#include "common/error.h"
#include "common/opts.h"

typedef struct RawState {
    int64_t offset;     /* bytes into the file where the disk starts */
    int64_t size;       /* bytes; -1: up to the end of the file */
} RawState;

static const char *const raw_open_opts[] = {
    "file", "filename", "offset", "size", NULL,
};

static int raw_probe(const uint8_t *buf, size_t len, const char *filename)
{
    return 1;       /* anything is raw, as a last resort */
}

static bool raw_open(BlockNode *bs, json_t *options, GError **errp)
{
    RawState *s = bs->opaque;
    uint64_t offset, size;
    int64_t file_len;

    if (!block_node_open_child(bs, options, "file", BLOCK_CHILD_FILE,
                               ferry_opt_str(options, "filename"), NULL,
                               errp)) {
        if (errp && !*errp) {
            ferry_error_set(errp, FERRY_ERROR_INVALID,
                            "the raw format needs a 'file' or 'filename'");
        }
        return false;
    }
    if (!ferry_opt_size(options, "offset", 0, &offset, errp) ||
        !ferry_opt_size(options, "size", UINT64_MAX >> 1, &size, errp)) {
        return false;
    }
    file_len = block_node_getlength(bs->file->node);
    if (file_len < 0) {
        ferry_error_setg_errno(errp, (int)-file_len,
                               "cannot get the size of '%s'", bs->filename);
        return false;
    }
    if ((int64_t)offset > file_len) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "raw offset %" G_GUINT64_FORMAT " is past the end of "
                        "'%s' (%" G_GINT64_FORMAT " bytes)", offset,
                        bs->file->node->filename, file_len);
        return false;
    }
    s->offset = offset;
    s->size = json_object_get(options, "size") ? (int64_t)size : -1;
    if (s->size >= 0 && s->size > file_len - s->offset) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "raw window offset %" G_GINT64_FORMAT " size %"
                        G_GINT64_FORMAT " does not fit in '%s' (%"
                        G_GINT64_FORMAT " bytes)", s->offset, s->size,
                        bs->file->node->filename, file_len);
        return false;
    }
    bs->request_alignment = bs->file->node->request_alignment;
    return true;
}

static int64_t raw_getlength(BlockNode *bs)
{
    RawState *s = bs->opaque;
    int64_t len;

    if (s->size >= 0) {
        return s->size;
    }
    len = block_node_getlength(bs->file->node);
    return len < 0 ? len : MAX(len - s->offset, 0);
}

/* Would this first sector make a probed image look like another format? */
static bool would_change_format(BlockNode *bs, int64_t offset, int64_t bytes,
                                const void *buf)
{
    uint8_t sector[2048] = { 0 };

    if (!(bs->open_flags & BLOCK_O_PROBED) || offset >= 512) {
        return false;
    }
    if (block_node_pread(bs->file->node, 0, sizeof(sector), sector, 0) < 0) {
        return true;
    }
    memcpy(sector + offset, buf, MIN(bytes, (int64_t)sizeof(sector) - offset));
    for (const BlockDriver *const *d = block_drivers; *d; d++) {
        if ((*d)->probe && (*d) != bs->drv &&
            (*d)->probe(sector, sizeof(sector), bs->filename) > 1) {
            return true;
        }
    }
    return false;
}

static int raw_pread(BlockNode *bs, int64_t offset, int64_t bytes, void *buf,
                     uint32_t flags)
{
    RawState *s = bs->opaque;

    return block_node_pread(bs->file->node, offset + s->offset, bytes, buf,
                            flags);
}

static int raw_pwrite(BlockNode *bs, int64_t offset, int64_t bytes,
                      const void *buf, uint32_t flags)
{
    RawState *s = bs->opaque;

    if (would_change_format(bs, offset, bytes, buf)) {
        return -EPERM;
    }
    return block_node_pwrite(bs->file->node, offset + s->offset, bytes, buf,
                             flags);
}

static int raw_pwrite_zeroes(BlockNode *bs, int64_t offset, int64_t bytes,
                             uint32_t flags)
{
    RawState *s = bs->opaque;

    return block_node_pwrite_zeroes(bs->file->node, offset + s->offset, bytes,
                                    flags);
}

static int raw_pdiscard(BlockNode *bs, int64_t offset, int64_t bytes)
{
    RawState *s = bs->opaque;

    return block_node_pdiscard(bs->file->node, offset + s->offset, bytes);
}

static int raw_block_status(BlockNode *bs, int64_t offset, int64_t bytes,
                            int64_t *pnum, int64_t *map, BlockNode **file)
{
    RawState *s = bs->opaque;

    *pnum = bytes;
    *map = offset + s->offset;
    *file = bs->file->node;
    return BLOCK_STATUS_RAW | BLOCK_STATUS_OFFSET_VALID;
}

static bool raw_truncate(BlockNode *bs, int64_t size, bool exact,
                         BlockPrealloc prealloc, GError **errp)
{
    RawState *s = bs->opaque;

    if (s->offset || s->size >= 0) {
        ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED,
                        "cannot resize a raw image opened with offset or size");
        return false;
    }
    return block_node_truncate(bs->file->node, size, exact, prealloc, errp);
}

static bool raw_create(const char *filename, json_t *opts, GError **errp)
{
    return block_create_file(filename, opts, errp);
}

/*
 * qemu-img measure for a raw target: a raw file is as long as its disk
 * whether or not the source is sparse, so both figures are the virtual size
 * (a size given without a source is rounded up to 512-byte sectors).
 */
static bool raw_measure(json_t *opts, BlockNode *in, uint64_t size,
                        BlockMeasureInfo *out, GError **errp)
{
    if (!in) {
        size = (size + 511) & ~UINT64_C(511);
    }
    out->required = size;
    out->fully_allocated = size;
    return true;
}

static const BlockCreateOpt raw_create_opts[] = {
    { "size", BLOCK_OPT_SIZE, "Virtual disk size" },
    { "preallocation", BLOCK_OPT_STRING,
      "Preallocation mode (allowed values: off, falloc, full)" },
    { NULL },
};

const BlockDriver raw_driver = {
    .name          = "raw",
    .kind          = BLOCK_DRIVER_FORMAT,
    .caps          = BLOCK_CAP_ZERO_INIT | BLOCK_CAP_FUA |
                     BLOCK_CAP_STABLE_MAP,
    .state_size    = sizeof(RawState),
    .open_opts     = raw_open_opts,
    .create_opts   = raw_create_opts,
    .probe         = raw_probe,
    .child_perm    = block_filter_child_perm,
    .open          = raw_open,
    .create        = raw_create,
    .pread         = raw_pread,
    .pwrite        = raw_pwrite,
    .pwrite_zeroes = raw_pwrite_zeroes,
    .pdiscard      = raw_pdiscard,
    .block_status  = raw_block_status,
    .getlength     = raw_getlength,
    .truncate      = raw_truncate,
    .measure       = raw_measure,
};
