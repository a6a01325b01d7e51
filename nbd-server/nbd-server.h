/*
 * The NBD server: exports block nodes (through a BlockBackend each) over
 * TCP or unix sockets, optionally with TLS.  One NbdServer holds exports
 * and listeners; clients are served on threads of their own.  Used by
 * `ferry nbd` today and by the QMP nbd-server-* commands later.
 */
#ifndef FERRY_NBD_SERVER_NBD_SERVER_H
#define FERRY_NBD_SERVER_NBD_SERVER_H

#include <stdbool.h>
#include <stdint.h>

#include <glib.h>

#include "blockdev/backend.h"

typedef struct NbdServer NbdServer;
typedef struct NbdExport NbdExport;
typedef struct NbdTls NbdTls;

typedef enum {
    NBD_DETECT_ZEROES_OFF,
    NBD_DETECT_ZEROES_ON,      /* zeroed writes become WRITE_ZEROES */
    NBD_DETECT_ZEROES_UNMAP,   /* ... which may punch holes */
} NbdDetectZeroes;

typedef struct NbdExportConfig {
    const char *name;              /* "" is the default export */
    const char *description;       /* NBD_INFO_DESCRIPTION, or NULL */
    bool readonly;                 /* also implied by a read-only backend */
    bool allocation_depth;         /* offer qemu:allocation-depth */
    const char *const *bitmaps;    /* dirty bitmaps of the root node to
                                      offer as qemu:dirty-bitmap:NAME;
                                      NULL-terminated, or NULL */
    NbdDetectZeroes detect_zeroes;
} NbdExportConfig;

/*
 * Wrap blk (a reference is taken) as an export.  Fails if a named bitmap
 * does not exist on blk's node.
 */
NbdExport *nbd_export_new(BlockBackend *blk, const NbdExportConfig *cfg,
                          GError **errp);
void nbd_export_unref(NbdExport *exp);
const char *nbd_export_name(NbdExport *exp);

/* TLS credentials (nbd-server/tls.c), shared by every client. */
NbdTls *nbd_tls_new_x509(const char *cert_file, const char *key_file,
                         const char *ca_file, GError **errp);
/* A PSK file of "username:hexkey" lines, as qemu-nbd and nbdkit use. */
NbdTls *nbd_tls_new_psk(const char *psk_file, GError **errp);
void nbd_tls_free(NbdTls *tls);

typedef struct NbdServerConfig {
    int max_connections;          /* 0: unlimited (qemu-nbd -e 0) */
    bool persistent;              /* keep serving after the last client */
    int handshake_limit_ms;       /* 0: no limit on the negotiation */
    NbdTls *tls;                  /* not NULL: TLS required (FORCEDTLS) */
    unsigned max_workers;         /* threads per connection; 0: default */
} NbdServerConfig;

/* The server takes ownership of cfg->tls. */
NbdServer *nbd_server_new(const NbdServerConfig *cfg);
/* Add an export (the server takes the reference); names must be unique. */
bool nbd_server_add_export(NbdServer *srv, NbdExport *exp, GError **errp);

/*
 * Remove the export called name (QMP nbd-server-remove/block-export-del):
 * refused while clients use it, unless hard, which disconnects them.
 * Clients still connected keep their reference until they leave.
 */
bool nbd_server_remove_export(NbdServer *srv, const char *name, bool hard,
                              GError **errp);

/* Listeners: add any number before nbd_server_run(). */
bool nbd_server_listen_tcp(NbdServer *srv, const char *host, const char *port,
                           GError **errp);
bool nbd_server_listen_unix(NbdServer *srv, const char *path, GError **errp);
/* An already listening socket (systemd socket activation). */
bool nbd_server_listen_fd(NbdServer *srv, int fd, GError **errp);

/*
 * Accept and serve clients until nbd_server_shutdown(), or (without
 * persistent) until the last client of at least one has left.
 */
void nbd_server_run(NbdServer *srv);
/* Ask run() to stop; async-signal-safe. */
void nbd_server_shutdown(NbdServer *srv);
/* Close listeners, disconnect clients, wait for them, drop the exports. */
void nbd_server_free(NbdServer *srv);

/*
 * Serve one already connected client in the calling thread (negotiation
 * and transmission) and return when it is gone; the fd is closed.  For
 * the fuzz harness and tests.
 */
void nbd_server_serve_fd(NbdServer *srv, int fd);

/* Clients served so far and connected now (tests, leak checks). */
void nbd_server_stats(NbdServer *srv, uint64_t *served, unsigned *connected);

#endif
