/*
 * The command sets qmp/ implements on top of the block layer.  Each layer
 * registers its commands with one explicit call; a program calls the ones
 * it serves (the storage daemon calls all of them).
 */
#ifndef FERRY_QMP_COMMANDS_H
#define FERRY_QMP_COMMANDS_H

/* block-cmds.c: blockdev-add/del, query-named-block-nodes, query-block,
 * block_resize */
void qmp_register_block_commands(void);
/* bitmap-cmds.c: block-dirty-bitmap-* */
void qmp_register_bitmap_commands(void);
/* job-cmds.c: block-stream, block-commit, *-mirror, blockdev-backup,
 * job-* and block-job-*, query-jobs, query-block-jobs; also routes job
 * events to QMP */
void qmp_register_job_commands(void);

/* transaction.c: transaction (abort, block-dirty-bitmap-*, blockdev-backup) */
void qmp_register_transaction_command(void);

/* Close what the commands opened (nodes added by blockdev-add, jobs). */
void qmp_block_commands_shutdown(void);

#endif
