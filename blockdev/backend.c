/*
 * BlockBackend: permissions and length checks for the users of a node.
 */
#include "config.h"

#include <errno.h>
#include <stddef.h>

#include "blockdev/backend.h"
#include "blockdev/driver.h"
#include "common/error.h"

struct BlockBackend {
    char *name;
    BlockNode *root;          /* holds a reference; NULL when empty */
    BlockUser user;           /* our entry in root->users */
    int refcnt;
    /* requests in flight and holds (block_node_replace moves root) */
    int in_flight;            /* atomic */
    int quiesce_counter;      /* atomic; >0 holds new requests */
    GMutex drain_lock;
    GCond drain_cond;
};

/* Same protocol as the graph's req_enter/req_exit, one level up. */
static void blk_enter(BlockBackend *blk)
{
    for (;;) {
        __atomic_add_fetch(&blk->in_flight, 1, __ATOMIC_SEQ_CST);
        if (G_LIKELY(!__atomic_load_n(&blk->quiesce_counter, __ATOMIC_SEQ_CST))) {
            return;
        }
        g_mutex_lock(&blk->drain_lock);
        if (__atomic_sub_fetch(&blk->in_flight, 1, __ATOMIC_SEQ_CST) == 0) {
            g_cond_broadcast(&blk->drain_cond);
        }
        while (__atomic_load_n(&blk->quiesce_counter, __ATOMIC_SEQ_CST)) {
            g_cond_wait(&blk->drain_cond, &blk->drain_lock);
        }
        g_mutex_unlock(&blk->drain_lock);
    }
}

static void blk_exit(BlockBackend *blk)
{
    if (__atomic_sub_fetch(&blk->in_flight, 1, __ATOMIC_SEQ_CST) == 0 &&
        __atomic_load_n(&blk->quiesce_counter, __ATOMIC_SEQ_CST)) {
        g_mutex_lock(&blk->drain_lock);
        g_cond_broadcast(&blk->drain_cond);
        g_mutex_unlock(&blk->drain_lock);
    }
}

static void blk_quiesce(BlockUser *u, bool begin)
{
    BlockBackend *blk = (BlockBackend *)((char *)u -
                                         offsetof(BlockBackend, user));

    g_mutex_lock(&blk->drain_lock);
    if (begin) {
        __atomic_add_fetch(&blk->quiesce_counter, 1, __ATOMIC_SEQ_CST);
        while (__atomic_load_n(&blk->in_flight, __ATOMIC_SEQ_CST) > 0) {
            g_cond_wait(&blk->drain_cond, &blk->drain_lock);
        }
    } else if (__atomic_sub_fetch(&blk->quiesce_counter, 1,
                                  __ATOMIC_SEQ_CST) == 0) {
        g_cond_broadcast(&blk->drain_cond);
    }
    g_mutex_unlock(&blk->drain_lock);
}

void blk_perm_for_flags(uint32_t flags, uint32_t *perm, uint32_t *shared)
{
    if (flags & (BLOCK_O_FORCE_SHARE | BLOCK_O_NO_IO)) {
        *perm = 0;
        *shared = BLOCK_PERM_ALL;
    } else if (flags & BLOCK_O_RDWR) {
        /* A writer, like a VM's disk: no second writer, no resizing. */
        *perm = BLOCK_PERM_CONSISTENT_READ | BLOCK_PERM_WRITE |
                BLOCK_PERM_RESIZE;
        *shared = BLOCK_PERM_CONSISTENT_READ | BLOCK_PERM_WRITE_UNCHANGED;
    } else {
        /* A reader copes with changing data, as qemu-img's readers do. */
        *perm = BLOCK_PERM_CONSISTENT_READ;
        *shared = BLOCK_PERM_ALL;
    }
}

BlockBackend *blk_new(const char *name, uint32_t perm, uint32_t shared)
{
    BlockBackend *blk = g_new0(BlockBackend, 1);

    blk->name = g_strdup(name ? name : "");
    blk->refcnt = 1;
    blk->user.perm = perm;
    blk->user.shared = shared;
    blk->user.what = name && *name
        ? g_strdup_printf("block backend '%s'", name)
        : g_strdup("a block backend");
    blk->user.slot = &blk->root;
    blk->user.quiesce = blk_quiesce;
    g_mutex_init(&blk->drain_lock);
    g_cond_init(&blk->drain_cond);
    return blk;
}

bool blk_insert_node(BlockBackend *blk, BlockNode *bs, GError **errp)
{
    g_assert(!blk->root);
    if (!block_node_add_user(bs, &blk->user, errp)) {
        return false;
    }
    block_node_ref(bs);
    blk->root = bs;
    return true;
}

void blk_remove_node(BlockBackend *blk)
{
    if (blk->root) {
        block_node_remove_user(blk->root, &blk->user);
        block_node_unref(blk->root);
        blk->root = NULL;
    }
}

void blk_unref(BlockBackend *blk)
{
    if (!blk || --blk->refcnt > 0) {
        return;
    }
    blk_remove_node(blk);
    g_mutex_clear(&blk->drain_lock);
    g_cond_clear(&blk->drain_cond);
    g_free(blk->user.what);
    g_free(blk->name);
    g_free(blk);
}

BlockBackend *blk_open(const char *spec, const char *fmt, json_t *extra,
                       uint32_t flags, GError **errp)
{
    uint32_t perm, shared;
    BlockBackend *blk;
    BlockNode *bs;

    blk_perm_for_flags(flags, &perm, &shared);
    bs = block_node_open(spec, fmt, extra, flags, perm, shared, errp);
    if (!bs) {
        return NULL;
    }
    if (!(bs->open_flags & BLOCK_O_RDWR)) {
        /* read-only=on in the spec wins over the caller's flags */
        blk_perm_for_flags(bs->open_flags, &perm, &shared);
    }
    blk = blk_new(NULL, perm, shared);
    if (!blk_insert_node(blk, bs, errp)) {
        blk_unref(blk);
        blk = NULL;
    }
    block_node_unref(bs);
    return blk;
}

BlockNode *blk_node(BlockBackend *blk)
{
    return blk->root;
}

const char *blk_name(BlockBackend *blk)
{
    return blk->name;
}

bool blk_set_perm(BlockBackend *blk, uint32_t perm, uint32_t shared,
                  GError **errp)
{
    if (!blk->root) {
        blk->user.perm = perm;
        blk->user.shared = shared;
        return true;
    }
    return block_node_update_user(blk->root, &blk->user, perm, shared, errp);
}

static int check_range(BlockBackend *blk, int64_t offset, int64_t bytes,
                       uint32_t need)
{
    int64_t len;

    if (!blk->root) {
        return -ENOMEDIUM;
    }
    if ((blk->user.perm & need) != need) {
        return -EPERM;
    }
    if (offset < 0 || bytes < 0) {
        return -EIO;
    }
    len = block_node_getlength(blk->root);
    if (len < 0) {
        return (int)len;
    }
    if (offset > len || bytes > len - offset) {
        return -EIO;
    }
    return 0;
}

int blk_pread(BlockBackend *blk, int64_t offset, int64_t bytes, void *buf,
              uint32_t flags)
{
    int ret;

    blk_enter(blk);
    ret = check_range(blk, offset, bytes, 0);
    if (ret == 0) {
        ret = block_node_pread(blk->root, offset, bytes, buf, flags);
    }
    blk_exit(blk);
    return ret;
}

int blk_splice_read(BlockBackend *blk, int64_t offset, int64_t bytes,
                    int pipe_wr, const void *prefix, size_t prefix_len)
{
    int ret;

    blk_enter(blk);
    ret = check_range(blk, offset, bytes, 0);
    if (ret == 0) {
        ret = block_node_splice_read(blk->root, offset, bytes, pipe_wr,
                                     prefix, prefix_len);
    }
    blk_exit(blk);
    return ret;
}

int blk_pwrite(BlockBackend *blk, int64_t offset, int64_t bytes,
               const void *buf, uint32_t flags)
{
    int ret;

    blk_enter(blk);
    ret = check_range(blk, offset, bytes, BLOCK_PERM_WRITE);
    if (ret == 0) {
        ret = block_node_pwrite(blk->root, offset, bytes, buf, flags);
    }
    blk_exit(blk);
    return ret;
}

int blk_pwrite_zeroes(BlockBackend *blk, int64_t offset, int64_t bytes,
                      uint32_t flags)
{
    int ret;

    blk_enter(blk);
    ret = check_range(blk, offset, bytes, BLOCK_PERM_WRITE);
    if (ret == 0) {
        ret = block_node_pwrite_zeroes(blk->root, offset, bytes, flags);
    }
    blk_exit(blk);
    return ret;
}

int blk_pdiscard(BlockBackend *blk, int64_t offset, int64_t bytes)
{
    int ret;

    blk_enter(blk);
    ret = check_range(blk, offset, bytes, BLOCK_PERM_WRITE);
    if (ret == 0) {
        ret = block_node_pdiscard(blk->root, offset, bytes);
    }
    blk_exit(blk);
    return ret;
}

int blk_flush(BlockBackend *blk)
{
    int ret;

    blk_enter(blk);
    ret = blk->root ? block_node_flush(blk->root) : 0;
    blk_exit(blk);
    return ret;
}

int64_t blk_getlength(BlockBackend *blk)
{
    return blk->root ? block_node_getlength(blk->root) : -ENOMEDIUM;
}

bool blk_truncate(BlockBackend *blk, int64_t size, bool exact,
                  BlockPrealloc prealloc, GError **errp)
{
    if (!blk->root) {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "no medium");
        return false;
    }
    if (!(blk->user.perm & BLOCK_PERM_RESIZE)) {
        ferry_error_set(errp, FERRY_ERROR_PERMISSION,
                        "'%s' was not opened for resizing", blk->root->filename);
        return false;
    }
    return block_node_truncate(blk->root, size, exact, prealloc, errp);
}
