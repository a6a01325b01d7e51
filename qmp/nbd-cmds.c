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
#include "nbd-server/nbd-server.h"
#include "qmp/commands.h"
#include "qmp/internal.h"

typedef struct QmpExport {
    char *id;
    char *name;                  /* the NBD export name */
    char *node_name;
} QmpExport;

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
    if (qmp_arg_has(args, "tls-creds") || qmp_arg_has(args, "tls-authz")) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "TLS through QMP objects is not supported by ferry yet "
                    "(use ferry nbd --tls-cert/--tls-psk)");
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
