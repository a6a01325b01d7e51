/*
 * libFuzzer harness: a qcow2 image from untrusted bytes, opened read-only
 * without its backing file, then info, check (no repair), block status and
 * reads of the first clusters and a few scattered ones; then opened again
 * as a user would (bitmaps loaded) to list snapshots and count bitmaps.
 */
#include "config.h"

#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <glib.h>

#include "blockdev/backend.h"
#include "blockdev/bitmap.h"
#include "blockdev/driver.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void exercise(BlockNode *bs)
{
    BlockImageInfo info = { 0 };
    BlockCheckResult res = { 0 };
    GError *err = NULL;
    int64_t len = block_node_getlength(bs);
    g_autofree uint8_t *buf = g_malloc(1 << 20);

    if (bs->drv->get_info && bs->drv->get_info(bs, &info, &err)) {
        json_decref(info.format_specific);
    }
    g_clear_error(&err);
    if (bs->drv->check) {
        bs->drv->check(bs, &res, 0, &err);
        g_clear_error(&err);
    }
    if (len <= 0) {
        return;
    }
    for (int64_t off = 0, n, i = 0; off < len && i < 64; off += n, i++) {
        int ret = block_node_block_status(bs, off, len - off, &n, NULL, NULL);
        if (ret < 0 || n <= 0) {
            break;
        }
    }
    block_node_pread(bs, 0, MIN(len, 1 << 20), buf, 0);
    for (int i = 1; i <= 4; i++) {
        int64_t off = (len / 5) * i & ~INT64_C(511);
        block_node_pread(bs, off, MIN(len - off, 4096), buf, 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = memfd_create("fuzz-qcow2", MFD_CLOEXEC);
    g_autofree char *spec = NULL;
    GError *err = NULL;
    BlockBackend *blk;

    if (fd < 0) {
        return 0;
    }
    if (write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return 0;
    }
    spec = g_strdup_printf("driver=qcow2,file.driver=file,"
                           "file.filename=/proc/self/fd/%d,file.locking=off", fd);
    blk = blk_open(spec, NULL, NULL, BLOCK_O_NO_BACKING | BLOCK_O_CHECK, &err);
    g_clear_error(&err);
    if (blk) {
        exercise(blk_node(blk));
        blk_unref(blk);
    }
    blk = blk_open(spec, NULL, NULL, BLOCK_O_NO_BACKING, &err);
    g_clear_error(&err);
    if (blk) {
        BlockNode *bs = blk_node(blk);
        BlockSnapshotInfo *list = NULL;
        int n = bs->drv->snapshot_list ? bs->drv->snapshot_list(bs, &list, &err)
                                       : 0;
        for (int i = 0; i < n; i++) {
            block_snapshot_info_clear(&list[i]);
        }
        g_free(list);
        g_clear_error(&err);
        for (GList *l = bs->bitmaps; l; l = l->next) {
            block_dirty_bitmap_count(l->data);
        }
        blk_unref(blk);
    }
    close(fd);
    return 0;
}
