/*
 * The command sets qmp/ implements on top of the block layer.  Each layer
 * registers its commands with one explicit call; a program calls the ones
 * it serves (the storage daemon calls all of them).
 */
#ifndef FERRY_QMP_COMMANDS_H
#define FERRY_QMP_COMMANDS_H

#include "blockdev/backend.h"

/* block-cmds.c: blockdev-add/del, query-named-block-nodes, query-block,
 * block_resize */
void qmp_register_block_commands(void);
/* bitmap-cmds.c: block-dirty-bitmap-* */
void qmp_register_bitmap_commands(void);
/* job-cmds.c: block-stream, block-commit, *-mirror, blockdev-backup,
 * job-* and block-job-*, query-jobs, query-block-jobs; also routes job
 * events to QMP */
void qmp_register_job_commands(void);

/* nbd-cmds.c: nbd-server-start/stop/add/remove, block-export-add/del,
 * query-block-exports */
typedef struct NbdServer NbdServer;
void qmp_register_nbd_commands(void);
/*
 * QEMU's --object TYPE,id=ID,key=value,... for the TLS credential types
 * (the same as QMP object-add), and the server side NbdTls of such an
 * object, for qemu-nbd's --tls-creds ID.
 */
bool qmp_object_add_cli(const char *optarg, GError **errp);
typedef struct NbdTls NbdTls;
NbdTls *qmp_tls_creds(const char *id, GError **errp);
/* Serve srv (ferry nbd's, from the command line) as if nbd-server-start
 * had started it, and list an export it already has. */
void qmp_nbd_adopt_server(NbdServer *srv);
void qmp_nbd_note_export(const char *id, const char *name,
                         const char *node_name);
/* Stop the NBD server and drop its exports. */
void qmp_nbd_commands_shutdown(void);
/* transaction.c: transaction (abort, block-dirty-bitmap-*, blockdev-backup) */
void qmp_register_transaction_command(void);

/*
 * Named block backends ("devices"), as a VM's drives are: query-block
 * lists them, and a device or node argument of every block command finds
 * them before node names, as QEMU's lookup does (the node is the backend's
 * root at the time, so it follows a mirror's pivot).  qdev is the guest
 * device's id or path.  The caller keeps blk alive until it removes it.
 */
void qmp_block_device_add(const char *name, const char *qdev,
                          BlockBackend *blk);
void qmp_block_device_remove(const char *name);

/* Close what the commands opened (nodes added by blockdev-add, jobs). */
void qmp_block_commands_shutdown(void);

#endif
