/*
 * Helpers the job drivers share: range locks, holding nodes with declared
 * permissions, and copying a range with zero detection.
 */
#include "config.h"

#include <errno.h>
#include <string.h>

#include "blockdev/driver.h"
#include "blockdev/jobs/internal.h"
#include "common/error.h"

void range_lock_init(RangeLock *rl)
{
    g_mutex_init(&rl->lock);
    g_cond_init(&rl->cond);
    rl->held = NULL;
}

void range_lock_destroy(RangeLock *rl)
{
    g_assert(!rl->held);
    g_mutex_clear(&rl->lock);
    g_cond_clear(&rl->cond);
}

static bool overlaps_locked(RangeLock *rl, int64_t start, int64_t end)
{
    for (GList *l = rl->held; l; l = l->next) {
        JobRange *r = l->data;
        if (r->start < end && start < r->end) {
            return true;
        }
    }
    return false;
}

JobRange *range_lock(RangeLock *rl, int64_t start, int64_t end)
{
    JobRange *r = g_new(JobRange, 1);

    r->start = start;
    r->end = end;
    g_mutex_lock(&rl->lock);
    while (overlaps_locked(rl, start, end)) {
        g_cond_wait(&rl->cond, &rl->lock);
    }
    rl->held = g_list_prepend(rl->held, r);
    g_mutex_unlock(&rl->lock);
    return r;
}

void range_unlock(RangeLock *rl, JobRange *r)
{
    g_mutex_lock(&rl->lock);
    rl->held = g_list_remove(rl->held, r);
    g_cond_broadcast(&rl->cond);
    g_mutex_unlock(&rl->lock);
    g_free(r);
}

bool job_write_hook_free(BlockNode *bs, GError **errp)
{
    if (bs->write_hook) {
        ferry_error_setg(errp, "Node '%s' is busy: another job guards its "
                         "writes", bs->node_name);
        return false;
    }
    return true;
}

bool job_node_attach(JobNode *jn, BlockNode *bs, const char *job_id,
                     const char *role, uint32_t perm, uint32_t shared,
                     GError **errp)
{
    memset(jn, 0, sizeof(*jn));
    jn->user.what = g_strdup_printf("block job '%s' (%s)", job_id, role);
    jn->user.perm = perm;
    jn->user.shared = shared;
    if (!block_node_add_user(bs, &jn->user, errp)) {
        g_free(jn->user.what);
        jn->user.what = NULL;
        return false;
    }
    block_node_ref(bs);
    jn->bs = bs;
    jn->attached = true;
    return true;
}

void job_node_detach(JobNode *jn)
{
    if (!jn->attached) {
        return;
    }
    block_node_remove_user(jn->bs, &jn->user);
    block_node_unref(jn->bs);
    g_free(jn->user.what);
    jn->user.what = NULL;
    jn->bs = NULL;
    jn->attached = false;
}

bool job_reads_zero(BlockNode *bs, int64_t off, int64_t len)
{
    while (len > 0) {
        int64_t n;
        int st = block_node_block_status_above(bs, NULL, off, len, &n, NULL,
                                               NULL, NULL);
        if (st < 0 || n <= 0 || !(st & BLOCK_STATUS_ZERO)) {
            return false;
        }
        off += n;
        len -= n;
    }
    return true;
}

int job_copy_range(BlockNode *src, BlockNode *base, BlockNode *dst,
                   int64_t off, int64_t len, void *buf, uint32_t wflags,
                   bool *failed_read)
{
    int64_t end = off + len;

    while (off < end) {
        int64_t n;
        int ret;
        int st = block_node_block_status_above(src, base, off, end - off, &n,
                                               NULL, NULL, NULL);
        if (st < 0 || n <= 0) {
            st = BLOCK_STATUS_DATA;       /* unknown: copy the bytes */
            n = end - off;
        }
        if (st & BLOCK_STATUS_ZERO) {
            if (job_reads_zero(dst, off, n)) {
                ret = 0;
            } else {
                ret = block_node_pwrite_zeroes(dst, off, n,
                                               wflags | BLOCK_REQ_MAY_UNMAP);
            }
            if (ret < 0) {
                *failed_read = false;
                return ret;
            }
        } else {
            ret = block_node_pread(src, off, n, buf, 0);
            if (ret < 0) {
                *failed_read = true;
                return ret;
            }
            ret = block_node_pwrite(dst, off, n, buf, wflags);
            if (ret < 0) {
                *failed_read = false;
                return ret;
            }
        }
        off += n;
    }
    return 0;
}

BlockNode *job_find_overlay(BlockNode *bs)
{
    g_autoptr(GPtrArray) nodes = block_node_list();
    BlockNode *found = NULL;

    for (guint i = 0; i < nodes->len; i++) {
        BlockNode *n = nodes->pdata[i];
        if (!found && n->backing && n->backing->node == bs) {
            found = n;
        }
        block_node_unref(n);
    }
    return found;
}
