/*
 * ferry qmp's pieces shared with other tools: the storage daemon's main
 * loop, which `ferry qmp --serve` and `ferry nbd --qmp` both run.
 */
#ifndef FERRY_TOOLS_QMP_QMP_TOOL_H
#define FERRY_TOOLS_QMP_QMP_TOOL_H

/*
 * Listen for QMP on each address (NULL-terminated), register every command
 * set, and serve until quit or SIGTERM/SIGINT.  Returns the exit status.
 */
int qmp_daemon_run(const char *const *addrs);

#endif
