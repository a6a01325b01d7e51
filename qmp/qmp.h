/*
 * QMP: the JSON control protocol QEMU's management tools speak.  This header
 * is the whole public surface of qmp/: error classes, the command table
 * that layers register into (one explicit registration call per layer, no
 * constructors), events, and the socket server on glib's main loop.
 * Wire format: docs/interop/qmp-spec (summary in specs/qmp-block-jobs.md 1).
 */
#ifndef FERRY_QMP_QMP_H
#define FERRY_QMP_QMP_H

#include <stdbool.h>
#include <stddef.h>

#include <glib.h>
#include <jansson.h>

#include "common/opts.h"     /* g_autoptr(json_t) */

/* The QEMU release whose QMP ferry follows (greeting, query-version). */
#define QMP_QEMU_COMPAT_MAJOR 7
#define QMP_QEMU_COMPAT_MINOR 2

/* -- errors ---------------------------------------------------------------- */

/*
 * QMP's error classes (QapiErrorClass).  A handler's GError in the
 * QMP_ERROR domain keeps its class; any other domain is GenericError.
 */
#define QMP_ERROR (qmp_error_quark())
GQuark qmp_error_quark(void);

typedef enum {
    QMP_ERROR_GENERIC,            /* "GenericError" */
    QMP_ERROR_COMMAND_NOT_FOUND,  /* "CommandNotFound" */
    QMP_ERROR_DEVICE_NOT_ACTIVE,  /* "DeviceNotActive": no job there */
    QMP_ERROR_DEVICE_NOT_FOUND,   /* "DeviceNotFound" */
    QMP_ERROR_KVM_MISSING_CAP,    /* "KVMMissingCap" */
} QmpErrorClass;

const char *qmp_error_class_name(QmpErrorClass cls);

/* -- commands (dispatch.c) -------------------------------------------------- */

/*
 * A handler gets the (already type-checked) arguments object and returns a
 * new reference to its result ({} for commands without one), or NULL with
 * errp set.  Handlers run on the main loop thread.
 */
typedef json_t *(*QmpHandler)(json_t *args, GError **errp);

/*
 * args describes the members, space separated, each "name:type" with a
 * trailing '?' when optional; types: str int bool number object array any.
 * The dispatcher rejects missing, mistyped and unknown members with QEMU's
 * messages before the handler runs.  args == NULL: boxed (any object; the
 * handler checks, as blockdev-add does).
 */
typedef struct QmpCommand {
    const char *name;
    const char *args;
    QmpHandler fn;
} QmpCommand;

/* Register n commands; a name registered twice is a programming error. */
void qmp_register_commands(const QmpCommand *cmds, size_t n);
/* qmp_capabilities, query-version, query-commands, quit, ... */
void qmp_register_core_commands(void);
/* Names of every registered command, sorted (query-commands). */
GPtrArray *qmp_command_names(void);

/*
 * One client's session: whether capabilities were negotiated.  dispatch
 * turns one parsed request (or a parse error) into the response object.
 */
typedef struct QmpSession {
    bool negotiated;
} QmpSession;

json_t *qmp_dispatch(QmpSession *s, json_t *request);
/* Run a registered command as dispatch would (argument checks included):
 * its result, or NULL with errp set.  For transaction. */
json_t *qmp_call(const char *name, json_t *args, GError **errp);
/* The response for input that did not parse (no id can be echoed). */
json_t *qmp_error_response(QmpErrorClass cls, const char *desc);

/* Helpers for handlers (argument types are checked already). */
const char *qmp_arg_str(json_t *args, const char *name);        /* or NULL */
bool qmp_arg_bool(json_t *args, const char *name, bool def);
int64_t qmp_arg_int(json_t *args, const char *name, int64_t def);
bool qmp_arg_has(json_t *args, const char *name);

/* -- incremental JSON stream (stream.c) ---------------------------------- */

/*
 * Splits a byte stream into JSON texts without waiting for newlines and
 * without buffering more than max_bytes for one text.  fn gets each parsed
 * value (a new reference the callee owns), or NULL and an error message for
 * input that cannot be a value: bad JSON, too large, too deep, a control
 * character (which also resets the parser, as QMP's recovery asks).
 */
typedef void (*QmpStreamFn)(void *opaque, json_t *value, const char *error);

typedef struct QmpStream {
    QmpStreamFn fn;
    void *opaque;
    size_t max_bytes;           /* largest text kept */
    GString *buf;               /* the current text */
    int depth;                  /* open { and [ */
    bool in_string;
    bool escape;
    bool in_scalar;             /* a bare word at the top level */
    bool skipping;              /* dropping the rest of an oversized text */
} QmpStream;

#define QMP_STREAM_MAX_BYTES   (4u << 20)
#define QMP_STREAM_MAX_DEPTH   1024

void qmp_stream_init(QmpStream *st, size_t max_bytes, QmpStreamFn fn,
                     void *opaque);
void qmp_stream_feed(QmpStream *st, const char *data, size_t len);
void qmp_stream_destroy(QmpStream *st);

/* -- events (events.c) ---------------------------------------------------- */

/*
 * Emit an event to every client that negotiated capabilities; data may be
 * NULL and is stolen.  Callable from any thread: the timestamp is taken
 * here, delivery happens on the main loop thread in emission order.
 */
void qmp_event_emit(const char *name, json_t *data);

typedef void (*QmpEventSink)(const char *line, void *opaque);
/* The server subscribes each client; line is the event's JSON text. */
void qmp_event_subscribe(QmpEventSink fn, void *opaque);
void qmp_event_unsubscribe(QmpEventSink fn, void *opaque);

/* -- server (server.c) ---------------------------------------------------- */

typedef struct QmpServer QmpServer;

QmpServer *qmp_server_new(void);
/*
 * Listen on "unix:PATH[,server][,wait=off]" or "tcp:HOST:PORT[,server]"
 * (QEMU's chardev spellings; ferry always listens).
 */
bool qmp_server_listen(QmpServer *srv, const char *spec, GError **errp);
void qmp_server_free(QmpServer *srv);
/* Main loop to quit on the quit command (NULL: none). */
void qmp_server_set_quit_loop(GMainLoop *loop);

#endif
