/*
 * The command table and the dispatcher: checks the request envelope and the
 * arguments against each command's member list with QEMU's error classes
 * and messages, then calls the handler.  Layers register their commands by
 * an explicit call (qmp_register_*_commands()) from the program's main.
 * qmp-spec: "Commands Responses", "Error"; QEMU's qapi/qmp-dispatch.c
 * behaviour for the envelope.
 */
#include "config.h"

#include <string.h>

#include "common/error.h"
#include "common/opts.h"
#include "qmp/qmp.h"

G_DEFINE_QUARK(qmp-error-quark, qmp_error)

typedef enum {
    ARG_STR, ARG_INT, ARG_BOOL, ARG_NUMBER, ARG_OBJECT, ARG_ARRAY, ARG_ANY,
} ArgType;

typedef struct ArgSpec {
    char *name;
    ArgType type;
    bool optional;
} ArgSpec;

typedef struct Command {
    QmpCommand cmd;
    GArray *args;            /* ArgSpec; NULL for boxed commands */
} Command;

static GHashTable *commands;  /* name -> Command*; main thread only */

const char *qmp_error_class_name(QmpErrorClass cls)
{
    switch (cls) {
    case QMP_ERROR_COMMAND_NOT_FOUND: return "CommandNotFound";
    case QMP_ERROR_DEVICE_NOT_ACTIVE: return "DeviceNotActive";
    case QMP_ERROR_DEVICE_NOT_FOUND: return "DeviceNotFound";
    case QMP_ERROR_KVM_MISSING_CAP: return "KVMMissingCap";
    default: return "GenericError";
    }
}

static const char *type_name(ArgType t)
{
    static const char *const names[] = {
        "string", "integer", "boolean", "number", "object", "array", "any",
    };
    return names[t];
}

static GArray *parse_spec(const char *spec)
{
    GArray *args = g_array_new(FALSE, TRUE, sizeof(ArgSpec));
    g_auto(GStrv) words = g_strsplit(spec, " ", -1);

    for (char **w = words; *w; w++) {
        ArgSpec a = { 0 };
        char *colon = strchr(*w, ':');
        size_t tl;
        if (!**w) {
            continue;
        }
        g_assert(colon);
        a.name = g_strndup(*w, colon - *w);
        tl = strlen(colon + 1);
        a.optional = tl && colon[tl] == '?';
        if (a.optional) {
            colon[tl] = '\0';
        }
        if (!strcmp(colon + 1, "str")) {
            a.type = ARG_STR;
        } else if (!strcmp(colon + 1, "int")) {
            a.type = ARG_INT;
        } else if (!strcmp(colon + 1, "bool")) {
            a.type = ARG_BOOL;
        } else if (!strcmp(colon + 1, "number")) {
            a.type = ARG_NUMBER;
        } else if (!strcmp(colon + 1, "object")) {
            a.type = ARG_OBJECT;
        } else if (!strcmp(colon + 1, "array")) {
            a.type = ARG_ARRAY;
        } else {
            g_assert(!strcmp(colon + 1, "any"));
            a.type = ARG_ANY;
        }
        g_array_append_val(args, a);
    }
    return args;
}

void qmp_register_commands(const QmpCommand *cmds, size_t n)
{
    if (!commands) {
        commands = g_hash_table_new(g_str_hash, g_str_equal);
    }
    for (size_t i = 0; i < n; i++) {
        Command *c = g_new0(Command, 1);
        c->cmd = cmds[i];
        c->args = cmds[i].args ? parse_spec(cmds[i].args) : NULL;
        g_assert(!g_hash_table_contains(commands, cmds[i].name));
        g_hash_table_insert(commands, (char *)cmds[i].name, c);
    }
}

/* g_ptr_array_sort passes pointers to the elements. */
static gint compare_names(gconstpointer a, gconstpointer b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

GPtrArray *qmp_command_names(void)
{
    GPtrArray *names = g_ptr_array_new();
    GHashTableIter it;
    gpointer key;

    if (commands) {
        g_hash_table_iter_init(&it, commands);
        while (g_hash_table_iter_next(&it, &key, NULL)) {
            g_ptr_array_add(names, key);
        }
    }
    g_ptr_array_sort(names, compare_names);
    return names;
}

static bool type_ok(json_t *v, ArgType t)
{
    switch (t) {
    case ARG_STR: return json_is_string(v);
    case ARG_INT: return json_is_integer(v);
    case ARG_BOOL: return json_is_boolean(v);
    case ARG_NUMBER: return json_is_number(v);
    case ARG_OBJECT: return json_is_object(v);
    case ARG_ARRAY: return json_is_array(v);
    default: return true;
    }
}

static bool check_args(Command *c, json_t *args, GError **errp)
{
    const char *key;
    json_t *v;

    if (!c->args) {
        return true;
    }
    for (guint i = 0; i < c->args->len; i++) {
        ArgSpec *a = &g_array_index(c->args, ArgSpec, i);
        v = json_object_get(args, a->name);
        if (!v) {
            if (!a->optional) {
                g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                            "Parameter '%s' is missing", a->name);
                return false;
            }
            continue;
        }
        if (!type_ok(v, a->type)) {
            g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                        "Invalid parameter type for '%s', expected: %s",
                        a->name, type_name(a->type));
            return false;
        }
    }
    json_object_foreach(args, key, v) {
        bool known = false;
        for (guint i = 0; i < c->args->len && !known; i++) {
            known = !strcmp(g_array_index(c->args, ArgSpec, i).name, key);
        }
        if (!known) {
            g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                        "Parameter '%s' is unexpected", key);
            return false;
        }
    }
    return true;
}

json_t *qmp_call(const char *name, json_t *args, GError **errp)
{
    Command *c = commands ? g_hash_table_lookup(commands, name) : NULL;
    g_autoptr(json_t) empty = json_object();

    if (!c) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_COMMAND_NOT_FOUND,
                    "The command %s has not been found", name);
        return NULL;
    }
    if (!args) {
        args = empty;
    }
    if (!json_is_object(args)) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Invalid parameter type for 'data', expected: object");
        return NULL;
    }
    if (!check_args(c, args, errp)) {
        return NULL;
    }
    return c->cmd.fn(args, errp);
}

json_t *qmp_error_response(QmpErrorClass cls, const char *desc)
{
    return json_pack("{s:{s:s,s:s}}", "error", "class",
                     qmp_error_class_name(cls), "desc", desc);
}

static json_t *error_from_gerror(GError *err)
{
    QmpErrorClass cls = QMP_ERROR_GENERIC;

    if (err->domain == QMP_ERROR) {
        cls = (QmpErrorClass)err->code;
    }
    return qmp_error_response(cls, err->message);
}

static json_t *with_id(json_t *resp, json_t *id)
{
    if (id) {
        json_object_set(resp, "id", id);
    }
    return resp;
}

json_t *qmp_dispatch(QmpSession *s, json_t *req)
{
    const char *key, *name;
    json_t *v, *id, *args, *exec, *ret;
    g_autoptr(GError) err = NULL;
    Command *c;

    if (!json_is_object(req)) {
        return qmp_error_response(QMP_ERROR_GENERIC,
                                  "QMP input must be a JSON object");
    }
    id = json_object_get(req, "id");
    json_object_foreach(req, key, v) {
        if (strcmp(key, "execute") && strcmp(key, "arguments") &&
            strcmp(key, "id")) {
            g_autofree char *msg = g_strdup_printf(
                "QMP input member '%s' is unexpected", key);
            return with_id(qmp_error_response(QMP_ERROR_GENERIC, msg), id);
        }
    }
    exec = json_object_get(req, "execute");
    if (!exec) {
        return with_id(qmp_error_response(QMP_ERROR_GENERIC,
                       "QMP input lacks member 'execute'"), id);
    }
    if (!json_is_string(exec)) {
        return with_id(qmp_error_response(QMP_ERROR_GENERIC,
                       "QMP input member 'execute' must be a string"), id);
    }
    name = json_string_value(exec);
    args = json_object_get(req, "arguments");
    if (args && !json_is_object(args)) {
        return with_id(qmp_error_response(QMP_ERROR_GENERIC,
                       "QMP input member 'arguments' must be an object"), id);
    }
    c = commands ? g_hash_table_lookup(commands, name) : NULL;
    if (!s->negotiated && g_strcmp0(name, "qmp_capabilities")) {
        return with_id(qmp_error_response(QMP_ERROR_COMMAND_NOT_FOUND,
                       "Expecting capabilities negotiation with "
                       "'qmp_capabilities'"), id);
    }
    if (!c) {
        g_autofree char *msg = g_strdup_printf(
            "The command %s has not been found", name);
        return with_id(qmp_error_response(QMP_ERROR_COMMAND_NOT_FOUND, msg),
                       id);
    }
    if (!strcmp(name, "qmp_capabilities")) {
        if (s->negotiated) {
            return with_id(qmp_error_response(QMP_ERROR_COMMAND_NOT_FOUND,
                           "Capabilities negotiation is already complete, "
                           "command ignored"), id);
        }
    }
    {
        g_autoptr(json_t) empty = json_object();
        if (!args) {
            args = empty;
        }
        if (!check_args(c, args, &err)) {
            return with_id(error_from_gerror(err), id);
        }
        ret = c->cmd.fn(args, &err);
    }
    if (!ret) {
        if (!err) {
            g_set_error(&err, QMP_ERROR, QMP_ERROR_GENERIC,
                        "command %s failed", name);
        }
        return with_id(error_from_gerror(err), id);
    }
    if (!strcmp(name, "qmp_capabilities")) {
        s->negotiated = true;
    }
    v = json_object();
    json_object_set_new(v, "return", ret);
    return with_id(v, id);
}

/* -- argument helpers ------------------------------------------------------ */

const char *qmp_arg_str(json_t *args, const char *name)
{
    return json_string_value(json_object_get(args, name));
}

bool qmp_arg_bool(json_t *args, const char *name, bool def)
{
    json_t *v = json_object_get(args, name);
    return json_is_boolean(v) ? json_is_true(v) : def;
}

int64_t qmp_arg_int(json_t *args, const char *name, int64_t def)
{
    json_t *v = json_object_get(args, name);
    return json_is_integer(v) ? (int64_t)json_integer_value(v) : def;
}

bool qmp_arg_has(json_t *args, const char *name)
{
    return json_object_get(args, name) != NULL;
}

/* -- core commands ---------------------------------------------------------- */

static GMainLoop *quit_loop;

void qmp_server_set_quit_loop(GMainLoop *loop)
{
    quit_loop = loop;
}

static json_t *cmd_qmp_capabilities(json_t *args, GError **errp)
{
    json_t *enable = json_object_get(args, "enable");
    size_t i;
    json_t *v;

    json_array_foreach(enable, i, v) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Capability '%s' not available",
                    json_is_string(v) ? json_string_value(v) : "?");
        return NULL;
    }
    return json_object();
}

/*
 * The "qemu" version is the QEMU release whose QMP ferry answers like
 * (Debian 12's 7.2, the test oracle): tools gate features on it.  ferry's
 * own version is in "package".
 */
static json_t *cmd_query_version(json_t *args, GError **errp)
{
    return json_pack("{s:{s:i,s:i,s:i},s:s}", "qemu", "major",
                     QMP_QEMU_COMPAT_MAJOR, "minor", QMP_QEMU_COMPAT_MINOR,
                     "micro", 0, "package", "ferry-" PACKAGE_VERSION);
}

static json_t *cmd_query_commands(json_t *args, GError **errp)
{
    g_autoptr(GPtrArray) names = qmp_command_names();
    json_t *list = json_array();

    for (guint i = 0; i < names->len; i++) {
        json_array_append_new(list, json_pack("{s:s}", "name",
                                              (char *)names->pdata[i]));
    }
    return list;
}

static json_t *cmd_quit(json_t *args, GError **errp)
{
    if (quit_loop) {
        g_main_loop_quit(quit_loop);
    }
    return json_object();
}

/* -- introspection ---------------------------------------------------------- */

/*
 * Events ferry emits, with their members in the same notation as a
 * command's (query-qmp-schema lists them).
 */
static const struct {
    const char *name;
    const char *args;
} events[] = {
    { "JOB_STATUS_CHANGE", "id:str status:str" },
    { "BLOCK_JOB_COMPLETED", "type:str device:str len:int offset:int "
      "speed:int error:str?" },
    { "BLOCK_JOB_CANCELLED", "type:str device:str len:int offset:int "
      "speed:int" },
    { "BLOCK_JOB_READY", "type:str device:str len:int offset:int speed:int" },
    { "BLOCK_JOB_ERROR", "device:str operation:str action:str" },
    { "BLOCK_JOB_PENDING", "type:str id:str" },
    { "BLOCK_EXPORT_DELETED", "id:str" },
};

/* The schema name of an argument type: QEMU's builtin names. */
static const char *schema_type(ArgType t)
{
    static const char *const names[] = {
        "str", "int", "bool", "number", "any", "any", "any",
    };
    return names[t];
}

/*
 * An object type for a member list, named by number as QEMU masks its
 * internal names; "0" is the empty object.  Returns its name.
 */
static const char *schema_object(json_t *schema, GHashTable *seen,
                                 GArray *args, unsigned *next)
{
    g_autoptr(GString) key = g_string_new(NULL);
    const char *name;
    json_t *members;

    for (guint i = 0; args && i < args->len; i++) {
        ArgSpec *a = &g_array_index(args, ArgSpec, i);
        g_string_append_printf(key, "%s:%d:%d ", a->name, a->type,
                               a->optional);
    }
    name = g_hash_table_lookup(seen, key->str);
    if (name) {
        return name;
    }
    name = g_strdup_printf("%u", (*next)++);
    g_hash_table_insert(seen, g_strdup(key->str), (char *)name);
    members = json_array();
    for (guint i = 0; args && i < args->len; i++) {
        ArgSpec *a = &g_array_index(args, ArgSpec, i);
        json_t *m = json_pack("{s:s,s:s}", "name", a->name, "type",
                              schema_type(a->type));
        if (a->optional) {
            json_object_set_new(m, "default", json_null());
        }
        json_array_append_new(members, m);
    }
    json_array_append_new(schema, json_pack("{s:s,s:s,s:o}", "name", name,
                                            "meta-type", "object", "members",
                                            members));
    return name;
}

static json_t *cmd_query_qmp_schema(json_t *args, GError **errp)
{
    g_autoptr(GHashTable) seen = g_hash_table_new_full(g_str_hash,
                                                       g_str_equal, g_free,
                                                       g_free);
    g_autoptr(GPtrArray) names = qmp_command_names();
    json_t *schema = json_array();
    unsigned next = 0;

    for (guint i = 0; i < names->len; i++) {
        Command *c = g_hash_table_lookup(commands, names->pdata[i]);
        g_autoptr(GArray) none = g_array_new(FALSE, TRUE, sizeof(ArgSpec));
        const char *arg_type = schema_object(schema, seen,
                                             c->args ? c->args : none, &next);
        json_array_append_new(schema, json_pack(
            "{s:s,s:s,s:s,s:s}", "name", c->cmd.name, "meta-type", "command",
            "arg-type", arg_type, "ret-type", "any"));
    }
    for (size_t i = 0; i < G_N_ELEMENTS(events); i++) {
        GArray *a = parse_spec(events[i].args);
        const char *arg_type = schema_object(schema, seen, a, &next);
        json_array_append_new(schema, json_pack(
            "{s:s,s:s,s:s}", "name", events[i].name, "meta-type", "event",
            "arg-type", arg_type));
        for (guint k = 0; k < a->len; k++) {
            g_free(g_array_index(a, ArgSpec, k).name);
        }
        g_array_free(a, TRUE);
    }
    json_array_append_new(schema, json_pack("{s:s,s:s,s:s}", "name", "str",
                                            "meta-type", "builtin",
                                            "json-type", "string"));
    json_array_append_new(schema, json_pack("{s:s,s:s,s:s}", "name", "int",
                                            "meta-type", "builtin",
                                            "json-type", "int"));
    json_array_append_new(schema, json_pack("{s:s,s:s,s:s}", "name", "bool",
                                            "meta-type", "builtin",
                                            "json-type", "boolean"));
    json_array_append_new(schema, json_pack("{s:s,s:s,s:s}", "name", "number",
                                            "meta-type", "builtin",
                                            "json-type", "number"));
    json_array_append_new(schema, json_pack("{s:s,s:s,s:s}", "name", "any",
                                            "meta-type", "builtin",
                                            "json-type", "value"));
    return schema;
}

void qmp_register_core_commands(void)
{
    static const QmpCommand cmds[] = {
        { "qmp_capabilities", "enable:array?", cmd_qmp_capabilities },
        { "query-version", "", cmd_query_version },
        { "query-commands", "", cmd_query_commands },
        { "query-qmp-schema", "", cmd_query_qmp_schema },
        { "quit", "", cmd_quit },
    };
    qmp_register_commands(cmds, G_N_ELEMENTS(cmds));
}
