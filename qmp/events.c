/*
 * Asynchronous events: {"timestamp": {...}, "event": NAME, "data": {...}}
 * to every subscribed client.  Any thread may emit (jobs run on workers);
 * the text is built and stamped at once, queued, and delivered on the
 * thread that owns the default main context, in emission order.
 * qmp-spec: "Asynchronous events".
 */
#include "config.h"

#include "qmp/qmp.h"

typedef struct Subscriber {
    QmpEventSink fn;
    void *opaque;
} Subscriber;

static GMutex queue_lock;
static GQueue pending = G_QUEUE_INIT;     /* char* lines; queue_lock */
static bool flush_scheduled;              /* queue_lock */
static GList *subscribers;                /* Subscriber*; main thread only */

void qmp_event_subscribe(QmpEventSink fn, void *opaque)
{
    Subscriber *s = g_new0(Subscriber, 1);

    s->fn = fn;
    s->opaque = opaque;
    subscribers = g_list_append(subscribers, s);
}

void qmp_event_unsubscribe(QmpEventSink fn, void *opaque)
{
    for (GList *l = subscribers; l; l = l->next) {
        Subscriber *s = l->data;
        if (s->fn == fn && s->opaque == opaque) {
            subscribers = g_list_delete_link(subscribers, l);
            g_free(s);
            return;
        }
    }
}

static gboolean flush(gpointer unused)
{
    for (;;) {
        char *line;
        g_mutex_lock(&queue_lock);
        line = g_queue_pop_head(&pending);
        if (!line) {
            flush_scheduled = false;
        }
        g_mutex_unlock(&queue_lock);
        if (!line) {
            break;
        }
        for (GList *l = subscribers; l;) {
            Subscriber *s = l->data;
            l = l->next;      /* a sink may unsubscribe itself */
            s->fn(line, s->opaque);
        }
        g_free(line);
    }
    return G_SOURCE_REMOVE;
}

void qmp_event_emit(const char *name, json_t *data)
{
    gint64 now = g_get_real_time();
    json_t *ev = json_object();
    char *text;
    bool schedule;

    json_object_set_new(ev, "timestamp", json_pack(
        "{s:I,s:I}", "seconds", (json_int_t)(now >= 0 ? now / G_USEC_PER_SEC : -1),
        "microseconds", (json_int_t)(now >= 0 ? now % G_USEC_PER_SEC : -1)));
    json_object_set_new(ev, "event", json_string(name));
    if (data) {
        json_object_set_new(ev, "data", data);
    }
    text = json_dumps(ev, JSON_COMPACT);
    json_decref(ev);

    g_mutex_lock(&queue_lock);
    g_queue_push_tail(&pending, g_strdup(text));
    schedule = !flush_scheduled;
    flush_scheduled = true;
    g_mutex_unlock(&queue_lock);
    free(text);

    if (g_main_context_is_owner(g_main_context_default())) {
        flush(NULL);
    } else if (schedule) {
        GSource *src = g_idle_source_new();
        g_source_set_priority(src, G_PRIORITY_DEFAULT);
        g_source_set_callback(src, flush, NULL, NULL);
        g_source_attach(src, NULL);
        g_source_unref(src);
    }
}
