/*
 * ferry qmp: a small QMP client (send one command, watch events, a shell),
 * and `ferry qmp --serve ADDR`, the storage daemon that QMP alone
 * configures (also reached as `ferry nbd --qmp ADDR` without an image).
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/opts.h"
#include "qmp/qmp.h"
#include "tools/ferry.h"
#include "tools/qmp/qmp-tool.h"

typedef struct Client {
    int fd;
    QmpStream stream;
    GQueue msgs;                /* json_t* received, not yet consumed */
    bool broken;
    char *error;
    bool pretty;
} Client;

static void on_value(void *opaque, json_t *v, const char *error)
{
    Client *c = opaque;

    if (v) {
        g_queue_push_tail(&c->msgs, v);
    } else {
        c->broken = true;
        g_free(c->error);
        c->error = g_strdup(error);
    }
}

static int connect_to(const char *spec)
{
    int fd;

    if (g_str_has_prefix(spec, "tcp:")) {
        const char *hp = spec + 4, *colon = strrchr(hp, ':');
        g_autofree char *host = colon ? g_strndup(hp, colon - hp) : NULL;
        struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res, *ai;
        if (!colon || getaddrinfo(host, colon + 1, &hints, &res)) {
            fprintf(stderr, "ferry qmp: cannot resolve '%s'\n", spec);
            return -1;
        }
        fd = -1;
        for (ai = res; ai && fd < 0; ai = ai->ai_next) {
            fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
            if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
                close(fd);
                fd = -1;
            }
        }
        freeaddrinfo(res);
    } else {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        const char *path = g_str_has_prefix(spec, "unix:") ? spec + 5 : spec;
        g_strlcpy(sa.sun_path, path, sizeof(sa.sun_path));
        fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
            close(fd);
            fd = -1;
        }
    }
    if (fd < 0) {
        fprintf(stderr, "ferry qmp: cannot connect to '%s': %s\n", spec,
                g_strerror(errno));
    }
    return fd;
}

/* Next message from the server, or NULL at EOF or on a parse error. */
static json_t *client_recv(Client *c)
{
    char buf[65536];

    while (g_queue_is_empty(&c->msgs) && !c->broken) {
        ssize_t n = read(c->fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return NULL;
        }
        qmp_stream_feed(&c->stream, buf, n);
    }
    return g_queue_pop_head(&c->msgs);
}

static bool client_send(Client *c, json_t *msg)
{
    char *dump = json_dumps(msg, JSON_COMPACT);
    g_autofree char *text = g_strconcat(dump, "\n", NULL);
    size_t len = strlen(text), off = 0;

    free(dump);
    while (off < len) {
        ssize_t n = write(c->fd, text + off, len - off);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return false;
        }
        off += n;
    }
    return true;
}

static void print_json(Client *c, json_t *v)
{
    char *text = json_dumps(v, c->pretty ? JSON_INDENT(2) : JSON_COMPACT);
    printf("%s\n", text);
    fflush(stdout);
    free(text);
}

/* Send a command; print events that arrive first (if show_events). */
static json_t *client_execute(Client *c, const char *cmd, json_t *args,
                              bool show_events)
{
    g_autoptr(json_t) req = json_pack("{s:s}", "execute", cmd);
    json_t *m;

    if (args) {
        json_object_set(req, "arguments", args);
    }
    if (!client_send(c, req)) {
        return NULL;
    }
    while ((m = client_recv(c))) {
        if (json_object_get(m, "return") || json_object_get(m, "error")) {
            return m;
        }
        if (show_events) {
            print_json(c, m);
        }
        json_decref(m);
    }
    return NULL;
}

static bool client_open(Client *c, const char *spec)
{
    g_autoptr(json_t) greeting = NULL, caps = NULL;

    memset(c, 0, sizeof(*c));
    g_queue_init(&c->msgs);
    qmp_stream_init(&c->stream, 64u << 20, on_value, c);
    c->fd = connect_to(spec);
    if (c->fd < 0) {
        return false;
    }
    greeting = client_recv(c);
    if (!greeting || !json_object_get(greeting, "QMP")) {
        fprintf(stderr, "ferry qmp: '%s' sent no QMP greeting\n", spec);
        return false;
    }
    caps = client_execute(c, "qmp_capabilities", NULL, false);
    if (!caps || !json_object_get(caps, "return")) {
        fprintf(stderr, "ferry qmp: capabilities negotiation failed\n");
        return false;
    }
    return true;
}

static void client_close(Client *c)
{
    json_t *m;

    while ((m = g_queue_pop_head(&c->msgs))) {
        json_decref(m);
    }
    if (c->fd >= 0) {
        close(c->fd);
    }
    qmp_stream_destroy(&c->stream);
    g_free(c->error);
}

/* "name {json}" or a whole {"execute": ...} request. */
static int shell_line(Client *c, char *line)
{
    g_autoptr(json_t) args = NULL, reply = NULL;
    json_error_t jerr;
    char *sp;

    g_strstrip(line);
    if (!*line) {
        return 0;
    }
    if (line[0] == '{') {
        g_autoptr(json_t) req = json_loads(line, 0, &jerr);
        json_t *m;
        if (!req) {
            fprintf(stderr, "bad JSON: %s\n", jerr.text);
            return 0;
        }
        if (!client_send(c, req)) {
            return -1;
        }
        while ((m = client_recv(c))) {
            bool done = json_object_get(m, "return") || json_object_get(m, "error");
            print_json(c, m);
            json_decref(m);
            if (done) {
                return 0;
            }
        }
        return -1;
    }
    sp = strpbrk(line, " \t");
    if (sp) {
        *sp++ = '\0';
        args = json_loads(sp, 0, &jerr);
        if (!args) {
            fprintf(stderr, "bad JSON arguments: %s\n", jerr.text);
            return 0;
        }
    }
    reply = client_execute(c, line, args, true);
    if (!reply) {
        return -1;
    }
    print_json(c, reply);
    return 0;
}

static void usage(FILE *out)
{
    fprintf(out,
        "usage: ferry qmp [--pretty] SOCKET COMMAND [JSON-ARGS]\n"
        "       ferry qmp SOCKET --events [--count N] [--timeout SECONDS]\n"
        "       ferry qmp SOCKET --shell\n"
        "       ferry qmp --serve unix:PATH[,server] | tcp:HOST:PORT[,server] ...\n\n"
        "SOCKET is a unix socket path, unix:PATH or tcp:HOST:PORT.\n"
        "COMMAND prints the reply (exit 1 on an error reply); --events prints\n"
        "events one per line; --shell reads 'command {json-args}' lines or raw\n"
        "{\"execute\": ...} requests.  --serve runs ferry as a storage daemon\n"
        "configured through QMP alone.\n");
}

static int run_events(Client *c, long count, long timeout)
{
    json_t *m;

    if (timeout > 0) {
        alarm((unsigned)timeout);
    }
    while (count != 0 && (m = client_recv(c))) {
        if (json_object_get(m, "event")) {
            print_json(c, m);
            if (count > 0) {
                count--;
            }
        }
        json_decref(m);
    }
    return 0;
}

static int run_shell(Client *c)
{
    char line[1 << 16];
    bool tty = isatty(0);

    for (;;) {
        if (tty) {
            fputs("(ferry-qmp) ", stdout);
            fflush(stdout);
        }
        if (!fgets(line, sizeof(line), stdin)) {
            return 0;
        }
        if (shell_line(c, line) < 0) {
            fprintf(stderr, "ferry qmp: connection closed\n");
            return 1;
        }
    }
}

/* COMMAND [JSON-ARGS]: print the reply; 1 if it is an error. */
static int run_command(Client *c, const char *cmd, const char *json_args)
{
    g_autoptr(json_t) args = NULL, reply = NULL;
    json_error_t jerr;

    if (json_args) {
        args = json_loads(json_args, 0, &jerr);
        if (!json_is_object(args)) {
            fprintf(stderr, "ferry qmp: arguments must be a JSON object: "
                    "%s\n", args ? "not an object" : jerr.text);
            return 1;
        }
    }
    reply = client_execute(c, cmd, args, false);
    if (!reply) {
        fprintf(stderr, "ferry qmp: connection closed before a reply\n");
        return 1;
    }
    print_json(c, reply);
    return json_object_get(reply, "error") ? 1 : 0;
}

int qmp_main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "events", no_argument, NULL, 'e' },
        { "shell", no_argument, NULL, 's' },
        { "pretty", no_argument, NULL, 'p' },
        { "count", required_argument, NULL, 'n' },
        { "timeout", required_argument, NULL, 't' },
        { "serve", required_argument, NULL, 'S' },
        { NULL, 0, NULL, 0 },
    };
    g_autoptr(GPtrArray) serve = g_ptr_array_new();
    g_autoptr(GPtrArray) rest = g_ptr_array_new();
    bool events = false, shell = false, pretty = false;
    long count = -1, timeout = 0;
    Client c;
    int opt, rc;

    signal(SIGPIPE, SIG_IGN);       /* a server that quits is an error */
    /* GNU getopt permutes, so options may also follow SOCKET */
    while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'h': usage(stdout); return 0;
        case 'e': events = true; break;
        case 's': shell = true; break;
        case 'p': pretty = true; break;
        case 'n': count = strtol(optarg, NULL, 10); break;
        case 't': timeout = strtol(optarg, NULL, 10); break;
        case 'S': g_ptr_array_add(serve, optarg); break;
        default: usage(stderr); return 1;
        }
    }
    if (serve->len) {
        g_ptr_array_add(serve, NULL);
        return qmp_daemon_run((const char *const *)serve->pdata);
    }
    for (int i = optind + 1; i < argc; i++) {
        g_ptr_array_add(rest, argv[i]);
    }
    if (optind >= argc || (!events && !shell &&
                           (rest->len < 1 || rest->len > 2))) {
        usage(stderr);
        return 1;
    }
    if (!client_open(&c, argv[optind])) {
        client_close(&c);
        return 1;
    }
    c.pretty = pretty;
    if (events) {
        rc = run_events(&c, count, timeout);
    } else if (shell) {
        rc = run_shell(&c);
    } else {
        rc = run_command(&c, rest->pdata[0],
                         rest->len > 1 ? rest->pdata[1] : NULL);
    }
    client_close(&c);
    return rc;
}
