/*
 * NBD export commands: nbd-server-start/stop, nbd-server-add/remove,
 * block-export-add/del, query-block-exports (qapi/block-export.json;
 * specs/qmp-block-jobs.md 6), on the NBD server's public API.  One server
 * at a time runs nbd_server_run() on a thread of its own; this file keeps
 * the exports' ids and nodes for the queries.
 */
#include "config.h"

#include <string.h>

#include "blockdev/backend.h"
#include "common/error.h"
#include "common/opts.h"
#include "nbd-server/nbd-server.h"
#include "qmp/commands.h"
#include "qmp/internal.h"

typedef struct QmpExport {
    char *id;
    char *name;                  /* the NBD export name */
    char *node_name;
} QmpExport;

/*
 * TLS credential objects (object-add qom-type=tls-creds-x509|tls-creds-psk,
 * QEMU's crypto/tlscreds*.c), for nbd-server-start's tls-creds.  Only the
 * server side is used here; a directory holds QEMU's file names:
 * ca-cert.pem, server-cert.pem, server-key.pem, or keys.psk.
 */
typedef struct TlsCreds {
    char *id;
    bool psk;
    char *dir;
    bool server;                 /* endpoint=server (the default) */
    bool verify_peer;            /* x509: ask for client certificates */
} TlsCreds;

static GList *tls_creds;         /* TlsCreds* */

static NbdServer *server;        /* main thread */
static GThread *server_thread;
static GList *exports;           /* QmpExport* */

static void export_free(QmpExport *e)
{
    g_free(e->id);
    g_free(e->name);
    g_free(e->node_name);
    g_free(e);
}

static QmpExport *find_export(const char *id)
{
    for (GList *l = exports; l; l = l->next) {
        QmpExport *e = l->data;
        if (!strcmp(e->id, id)) {
            return e;
        }
    }
    return NULL;
}

static gpointer server_main(gpointer srv)
{
    nbd_server_run(srv);
    return NULL;
}

void qmp_nbd_adopt_server(NbdServer *srv)
{
    g_assert(!server);
    server = srv;
    server_thread = g_thread_new("nbd-server", server_main, srv);
}

void qmp_nbd_note_export(const char *id, const char *name,
                         const char *node_name)
{
    QmpExport *e = g_new0(QmpExport, 1);

    e->id = g_strdup(id);
    e->name = g_strdup(name);
    e->node_name = g_strdup(node_name);
    exports = g_list_append(exports, e);
}

static void server_stop(void)
{
    if (!server) {
        return;
    }
    nbd_server_shutdown(server);
    g_thread_join(server_thread);
    nbd_server_free(server);
    server = NULL;
    server_thread = NULL;
    for (GList *l = exports; l; l = l->next) {
        QmpExport *e = l->data;
        qmp_event_emit("BLOCK_EXPORT_DELETED", json_pack("{s:s}", "id", e->id));
    }
    g_list_free_full(exports, (GDestroyNotify)export_free);
    exports = NULL;
}

/* SocketAddressLegacy ({type, data: {...}}) or flat SocketAddress. */
static bool listen_on(NbdServer *srv, json_t *addr, GError **errp)
{
    const char *type = json_string_value(json_object_get(addr, "type"));
    json_t *data = json_object_get(addr, "data");

    if (!json_is_object(data)) {
        data = addr;
    }
    if (!g_strcmp0(type, "unix")) {
        const char *path = json_string_value(json_object_get(data, "path"));
        if (!path) {
            g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                        "Parameter 'path' is missing");
            return false;
        }
        return nbd_server_listen_unix(srv, path, errp);
    }
    if (!g_strcmp0(type, "inet")) {
        const char *host = json_string_value(json_object_get(data, "host"));
        const char *port = json_string_value(json_object_get(data, "port"));
        if (!host || !port) {
            g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                        "Parameter '%s' is missing", host ? "port" : "host");
            return false;
        }
        return nbd_server_listen_tcp(srv, *host ? host : NULL, port, errp);
    }
    g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                "NBD server address type '%s' is not supported (unix, inet)",
                type ? type : "");
    return false;
}

static TlsCreds *find_creds(const char *id)
{
    for (GList *l = tls_creds; l; l = l->next) {
        TlsCreds *t = l->data;
        if (!strcmp(t->id, id)) {
            return t;
        }
    }
    return NULL;
}

static void creds_free(TlsCreds *t)
{
    g_free(t->id);
    g_free(t->dir);
    g_free(t);
}

static json_t *cmd_object_add(json_t *args, GError **errp)
{
    const char *type = qmp_arg_str(args, "qom-type");
    const char *id = qmp_arg_str(args, "id");
    const char *dir = qmp_arg_str(args, "dir");
    const char *endpoint = qmp_arg_str(args, "endpoint");
    const char *key;
    bool verify_peer;
    json_t *v;
    TlsCreds *t;

    if (!type || !id) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Parameter '%s' is missing", type ? "id" : "qom-type");
        return NULL;
    }
    if (strcmp(type, "tls-creds-x509") && strcmp(type, "tls-creds-psk")) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Invalid parameter '%s' (ferry has the object types "
                    "tls-creds-x509 and tls-creds-psk)", type);
        return NULL;
    }
    json_object_foreach(args, key, v) {
        if (strcmp(key, "qom-type") && strcmp(key, "id") &&
            strcmp(key, "dir") && strcmp(key, "endpoint") &&
            strcmp(key, "verify-peer") && strcmp(key, "username") &&
            strcmp(key, "priority") && strcmp(key, "sanity-check")) {
            g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                        "Parameter '%s' is unexpected", key);
            return NULL;
        }
    }
    if (find_creds(id)) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "attempt to add duplicate property '%s' to object "
                    "(type 'container')", id);
        return NULL;
    }
    if (!dir) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Parameter 'dir' is missing (ferry reads credentials "
                    "from files only)");
        return NULL;
    }
    if (endpoint && strcmp(endpoint, "server") && strcmp(endpoint, "client")) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Parameter 'endpoint' does not accept value '%s'",
                    endpoint);
        return NULL;
    }
    /* a JSON bool from QMP, or on/off from --object's key=value form */
    if (!ferry_opt_bool(args, "verify-peer", true, &verify_peer, errp)) {
        return NULL;
    }
    t = g_new0(TlsCreds, 1);
    t->verify_peer = verify_peer;
    t->id = g_strdup(id);
    t->psk = !strcmp(type, "tls-creds-psk");
    t->dir = g_strdup(dir);
    /* QEMU's default endpoint is client; a server needs endpoint=server */
    t->server = endpoint && !strcmp(endpoint, "server");

    tls_creds = g_list_append(tls_creds, t);
    return json_object();
}

static json_t *cmd_object_del(json_t *args, GError **errp)
{
    const char *id = qmp_arg_str(args, "id");
    TlsCreds *t = find_creds(id);

    if (!t) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "object '%s' not found", id);
        return NULL;
    }
    tls_creds = g_list_remove(tls_creds, t);
    creds_free(t);
    return json_object();
}

/* The NbdTls for tls-creds=id, read from its directory now. */
static NbdTls *creds_to_tls(const char *id, GError **errp)
{
    TlsCreds *t = find_creds(id);
    g_autofree char *a = NULL, *b = NULL, *c = NULL;

    if (!t) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "No TLS credentials with id '%s'", id);
        return NULL;
    }
    if (!t->server) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Expecting TLS credentials with a server endpoint");
        return NULL;
    }
    if (t->psk) {
        a = g_build_filename(t->dir, "keys.psk", NULL);
        return nbd_tls_new_psk(a, errp);
    }
    a = g_build_filename(t->dir, "server-cert.pem", NULL);
    b = g_build_filename(t->dir, "server-key.pem", NULL);
    c = g_build_filename(t->dir, "ca-cert.pem", NULL);
    return nbd_tls_new_x509(a, b, t->verify_peer ? c : NULL, errp);
}

bool qmp_object_add_cli(const char *optarg, GError **errp)
{
    g_autoptr(json_t) args = ferry_opts_parse(optarg, "qom-type", errp);
    json_t *ret;

    if (!args) {
        return false;
    }
    ret = cmd_object_add(args, errp);
    json_decref(ret);
    return ret != NULL;
}

NbdTls *qmp_tls_creds(const char *id, GError **errp)
{
    return creds_to_tls(id, errp);
}

static json_t *cmd_nbd_server_start(json_t *args, GError **errp)
{
    NbdServerConfig cfg = { .persistent = true, .max_connections = 100,
                            .handshake_limit_ms = 10000 };
    NbdServer *srv;

    if (server) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "NBD server already running");
        return NULL;
    }
    if (qmp_arg_has(args, "tls-authz")) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "tls-authz is not supported by ferry yet (verify-peer "
                    "with a CA checks client certificates)");
        return NULL;
    }
    if (qmp_arg_has(args, "tls-creds") &&
        !(cfg.tls = creds_to_tls(qmp_arg_str(args, "tls-creds"), errp))) {
        return NULL;
    }
    cfg.max_connections = (int)qmp_arg_int(args, "max-connections", 100);
    cfg.handshake_limit_ms =
        (int)qmp_arg_int(args, "handshake-max-seconds", 10) * 1000;
    srv = nbd_server_new(&cfg);
    if (!listen_on(srv, json_object_get(args, "addr"), errp)) {
        nbd_server_free(srv);
        return NULL;
    }
    qmp_nbd_adopt_server(srv);
    return json_object();
}

static json_t *cmd_nbd_server_stop(json_t *args, GError **errp)
{
    if (!server) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "NBD server not running");
        return NULL;
    }
    server_stop();
    return json_object();
}

/* Export node under name; id for queries.  bitmaps: json array or NULL. */
static bool export_node(const char *id, const char *node, const char *name,
                        const char *description, bool writable,
                        bool allocation_depth, json_t *bitmaps, GError **errp)
{
    BlockNode *bs = qmp_find_node(node, errp);
    g_autoptr(GPtrArray) names = g_ptr_array_new();
    NbdExportConfig cfg = { 0 };
    uint32_t perm, shared;
    BlockBackend *blk;
    NbdExport *exp;
    size_t i;
    json_t *v;

    if (!bs) {
        return false;
    }
    if (!server) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "NBD server not running");
        return false;
    }
    if (find_export(id)) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Block export id '%s' is already in use", id);
        return false;
    }
    if (writable && !(bs->open_flags & BLOCK_O_RDWR)) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Cannot export read-only node as writable");
        return false;
    }
    json_array_foreach(bitmaps, i, v) {
        const char *bn = json_is_string(v) ? json_string_value(v)
                       : json_string_value(json_object_get(v, "name"));
        if (!bn) {
            g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                        "Invalid parameter type for 'bitmaps[%zu]'", i);
            return false;
        }
        g_ptr_array_add(names, (char *)bn);
    }
    g_ptr_array_add(names, NULL);
    /* nbd_export_new() settles the permissions (nbd-server/server.c). */
    blk_perm_for_flags(writable ? BLOCK_O_RDWR : 0, &perm, &shared);
    perm &= ~BLOCK_PERM_RESIZE;
    blk = blk_new(NULL, perm, shared);
    if (!blk_insert_node(blk, bs, errp)) {
        blk_unref(blk);
        return false;
    }
    cfg.name = name;
    cfg.description = description;
    cfg.readonly = !writable;
    cfg.allocation_depth = allocation_depth;
    cfg.bitmaps = (const char *const *)names->pdata;
    exp = nbd_export_new(blk, &cfg, errp);
    if (!exp) {
        blk_unref(blk);
        return false;
    }
    if (!nbd_server_add_export(server, exp, errp)) {
        nbd_export_unref(exp);
        return false;
    }
    qmp_nbd_note_export(id, name, bs->node_name);
    return true;
}

static json_t *cmd_nbd_server_add(json_t *args, GError **errp)
{
    const char *device = qmp_arg_str(args, "device");
    const char *name = qmp_arg_str(args, "name");
    const char *bitmap = qmp_arg_str(args, "bitmap");
    g_autoptr(json_t) bitmaps = json_array();

    if (!name) {
        name = device;
    }
    if (bitmap) {
        json_array_append_new(bitmaps, json_string(bitmap));
    }
    return export_node(name, device, name, qmp_arg_str(args, "description"),
                       qmp_arg_bool(args, "writable", false), false, bitmaps,
                       errp) ? json_object() : NULL;
}

static bool remove_export(QmpExport *e, const char *mode, GError **errp)
{
    if (mode && strcmp(mode, "safe") && strcmp(mode, "hard")) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Parameter 'mode' does not accept value '%s'", mode);
        return false;
    }
    if (!nbd_server_remove_export(server, e->name, !g_strcmp0(mode, "hard"),
                                  errp)) {
        return false;
    }
    qmp_event_emit("BLOCK_EXPORT_DELETED", json_pack("{s:s}", "id", e->id));
    exports = g_list_remove(exports, e);
    export_free(e);
    return true;
}

static json_t *cmd_nbd_server_remove(json_t *args, GError **errp)
{
    const char *name = qmp_arg_str(args, "name");

    for (GList *l = exports; l; l = l->next) {
        QmpExport *e = l->data;
        if (!strcmp(e->name, name)) {
            return remove_export(e, qmp_arg_str(args, "mode"), errp)
                   ? json_object() : NULL;
        }
    }
    g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                "Export '%s' is not found", name);
    return NULL;
}

static json_t *cmd_block_export_add(json_t *args, GError **errp)
{
    const char *type = qmp_arg_str(args, "type");
    const char *id = qmp_arg_str(args, "id");
    const char *node = qmp_arg_str(args, "node-name");
    const char *name = qmp_arg_str(args, "name");

    if (g_strcmp0(type, "nbd")) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Export type '%s' is not supported by ferry (nbd)",
                    type ? type : "");
        return NULL;
    }
    return export_node(id, node, name ? name : node,
                       qmp_arg_str(args, "description"),
                       qmp_arg_bool(args, "writable", false),
                       qmp_arg_bool(args, "allocation-depth", false),
                       json_object_get(args, "bitmaps"), errp)
           ? json_object() : NULL;
}

static json_t *cmd_block_export_del(json_t *args, GError **errp)
{
    const char *id = qmp_arg_str(args, "id");
    QmpExport *e = find_export(id);

    if (!e) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Export '%s' is not found", id);
        return NULL;
    }
    return remove_export(e, qmp_arg_str(args, "mode"), errp)
           ? json_object() : NULL;
}

static json_t *cmd_query_block_exports(json_t *args, GError **errp)
{
    json_t *list = json_array();

    for (GList *l = exports; l; l = l->next) {
        QmpExport *e = l->data;
        json_array_append_new(list, json_pack(
            "{s:s,s:s,s:s,s:b}", "type", "nbd", "id", e->id, "node-name",
            e->node_name, "shutting-down", 0));
    }
    return list;
}

void qmp_register_nbd_commands(void)
{
    static const QmpCommand cmds[] = {
        { "nbd-server-start", "addr:object tls-creds:str? tls-authz:str? "
          "max-connections:int? handshake-max-seconds:int?",
          cmd_nbd_server_start },
        { "nbd-server-stop", "", cmd_nbd_server_stop },
        { "object-add", NULL, cmd_object_add },
        { "object-del", "id:str", cmd_object_del },
        { "nbd-server-add", "device:str name:str? description:str? "
          "writable:bool? bitmap:str?", cmd_nbd_server_add },
        { "nbd-server-remove", "name:str mode:str?", cmd_nbd_server_remove },
        { "block-export-add", "type:str id:str node-name:str writable:bool? "
          "writethrough:bool? iothread:str? fixed-iothread:bool? "
          "allow-inactive:bool? name:str? description:str? bitmaps:array? "
          "allocation-depth:bool?", cmd_block_export_add },
        { "block-export-del", "id:str mode:str?", cmd_block_export_del },
        { "query-block-exports", "", cmd_query_block_exports },
    };
    qmp_register_commands(cmds, G_N_ELEMENTS(cmds));
}

void qmp_nbd_commands_shutdown(void)
{
    server_stop();
}
