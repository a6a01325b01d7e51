/*
 * BlockBackend: how a user (a tool, an NBD export, a guest disk, a job)
 * holds a node.  It declares what it will do (permissions) and what it lets
 * others do; the graph refuses a backend whose needs conflict with another
 * user's, and the file driver mirrors that in OFD locks between processes.
 * Requests through a backend are also checked against the node's length.
 */
#ifndef FERRY_BLOCKDEV_BACKEND_H
#define FERRY_BLOCKDEV_BACKEND_H

#include "blockdev/block.h"

typedef struct BlockBackend BlockBackend;

/*
 * perm/shared for a reader (shares everything, as qemu-img's readers do),
 * a writer (no second writer, as a VM's disk), and -U or metadata-only use.
 */
void blk_perm_for_flags(uint32_t flags, uint32_t *perm, uint32_t *shared);

BlockBackend *blk_new(const char *name, uint32_t perm, uint32_t shared);
/* Attach to bs (takes a reference) after checking permissions. */
bool blk_insert_node(BlockBackend *blk, BlockNode *bs, GError **errp);
void blk_remove_node(BlockBackend *blk);
void blk_unref(BlockBackend *blk);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(BlockBackend, blk_unref)

/*
 * Open a spec (see block_node_open) and attach a new backend to it with the
 * permissions that flags imply (BLOCK_O_RDWR: write and resize).
 */
BlockBackend *blk_open(const char *spec, const char *fmt, json_t *extra,
                       uint32_t flags, GError **errp);

BlockNode *blk_node(BlockBackend *blk);
const char *blk_name(BlockBackend *blk);
bool blk_set_perm(BlockBackend *blk, uint32_t perm, uint32_t shared,
                  GError **errp);

/* Requests: 0 or -errno; -EIO past the end, -EPERM without permission. */
int blk_pread(BlockBackend *blk, int64_t offset, int64_t bytes, void *buf,
              uint32_t flags);
/* block_node_splice_read() through the backend's checks. */
int blk_splice_read(BlockBackend *blk, int64_t offset, int64_t bytes,
                    int pipe_wr, const void *prefix, size_t prefix_len);
int blk_pwrite(BlockBackend *blk, int64_t offset, int64_t bytes,
               const void *buf, uint32_t flags);
int blk_pwrite_zeroes(BlockBackend *blk, int64_t offset, int64_t bytes,
                      uint32_t flags);
int blk_pdiscard(BlockBackend *blk, int64_t offset, int64_t bytes);
int blk_flush(BlockBackend *blk);
int64_t blk_getlength(BlockBackend *blk);
bool blk_truncate(BlockBackend *blk, int64_t size, bool exact,
                  BlockPrealloc prealloc, GError **errp);

#endif
