/*
 * The storage daemon: no image on the command line; QMP adds nodes, runs
 * jobs and (with the NBD server) exports.  Like qemu-storage-daemon with
 * only --monitor.  Runs glib's main loop on the calling thread.
 */
#include "config.h"

#include <signal.h>
#include <stdio.h>

#include <glib-unix.h>

#include "common/log.h"
#include "qmp/commands.h"
#include "qmp/qmp.h"
#include "tools/qmp/qmp-tool.h"

static gboolean on_signal(gpointer loop)
{
    g_main_loop_quit(loop);
    return G_SOURCE_CONTINUE;
}

int qmp_daemon_run(const char *const *addrs)
{
    GMainLoop *loop = g_main_loop_new(NULL, FALSE);
    QmpServer *srv = qmp_server_new();
    GError *err = NULL;

    signal(SIGPIPE, SIG_IGN);
    qmp_register_core_commands();
    qmp_register_block_commands();
    qmp_register_bitmap_commands();
    qmp_register_job_commands();
    qmp_register_nbd_commands();
    qmp_register_transaction_command();
    for (const char *const *a = addrs; *a; a++) {
        if (!qmp_server_listen(srv, *a, &err)) {
            fprintf(stderr, "ferry: %s\n", err->message);
            g_error_free(err);
            qmp_server_free(srv);
            g_main_loop_unref(loop);
            return 1;
        }
    }
    qmp_server_set_quit_loop(loop);
    g_unix_signal_add(SIGTERM, on_signal, loop);
    g_unix_signal_add(SIGINT, on_signal, loop);
    ferry_info("qmp: storage daemon ready");
    g_main_loop_run(loop);
    qmp_server_set_quit_loop(NULL);
    qmp_server_free(srv);
    qmp_nbd_commands_shutdown();
    qmp_block_commands_shutdown();
    g_main_loop_unref(loop);
    return 0;
}
