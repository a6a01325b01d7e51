/*
 * ferry nbd: export one block node over NBD, with qemu-nbd's options where
 * qemu-nbd has one, plus TLS from files (--tls-cert/--tls-key/--tls-ca,
 * --tls-psk).  Parses options, opens the node, sets up the listener (TCP,
 * unix socket, or a socket from systemd socket activation), optionally
 * forks, and hands over to nbd-server/.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "blockdev/backend.h"
#include "blockdev/bitmap.h"
#include "common/error.h"
#include "common/log.h"
#include "common/opts.h"
#include "common/units.h"
#include "nbd-server/nbd-server.h"
#include "tools/ferry.h"
#include "tools/img/img.h"
#include "qmp/commands.h"
#include "tools/qmp/qmp-tool.h"

enum {
    OPT_FORK = 0x200,
    OPT_PID_FILE,
    OPT_CACHE,
    OPT_AIO,
    OPT_DISCARD,
    OPT_DETECT_ZEROES,
    OPT_IMAGE_OPTS,
    OPT_TLS_CERT,
    OPT_TLS_KEY,
    OPT_TLS_CA,
    OPT_TLS_PSK,
    OPT_OBJECT,
    OPT_TLS_CREDS,
    OPT_HANDSHAKE_LIMIT,
    OPT_X_WORKERS,
    OPT_X_CREATE_BITMAP,
    OPT_QMP,
};

static const struct option long_opts[] = {
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, 'V' },
    { "port", required_argument, NULL, 'p' },
    { "bind", required_argument, NULL, 'b' },
    { "socket", required_argument, NULL, 'k' },
    { "shared", required_argument, NULL, 'e' },
    { "persistent", no_argument, NULL, 't' },
    { "verbose", no_argument, NULL, 'v' },
    { "export-name", required_argument, NULL, 'x' },
    { "description", required_argument, NULL, 'D' },
    { "offset", required_argument, NULL, 'o' },
    { "allocation-depth", no_argument, NULL, 'A' },
    { "bitmap", required_argument, NULL, 'B' },
    { "format", required_argument, NULL, 'f' },
    { "read-only", no_argument, NULL, 'r' },
    { "snapshot", no_argument, NULL, 's' },
    { "load-snapshot", required_argument, NULL, 'l' },
    { "nocache", no_argument, NULL, 'n' },
    { "fork", no_argument, NULL, OPT_FORK },
    { "pid-file", required_argument, NULL, OPT_PID_FILE },
    { "cache", required_argument, NULL, OPT_CACHE },
    { "aio", required_argument, NULL, OPT_AIO },
    { "discard", required_argument, NULL, OPT_DISCARD },
    { "detect-zeroes", required_argument, NULL, OPT_DETECT_ZEROES },
    { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
    { "tls-cert", required_argument, NULL, OPT_TLS_CERT },
    { "tls-key", required_argument, NULL, OPT_TLS_KEY },
    { "tls-ca", required_argument, NULL, OPT_TLS_CA },
    { "tls-psk", required_argument, NULL, OPT_TLS_PSK },
    { "object", required_argument, NULL, OPT_OBJECT },
    { "tls-creds", required_argument, NULL, OPT_TLS_CREDS },
    { "handshake-limit", required_argument, NULL, OPT_HANDSHAKE_LIMIT },
    { "x-workers", required_argument, NULL, OPT_X_WORKERS },
    { "x-create-bitmap", required_argument, NULL, OPT_X_CREATE_BITMAP },
    { "qmp", required_argument, NULL, OPT_QMP },
    { NULL, 0, NULL, 0 },
};

static void usage(FILE *out)
{
    fprintf(out,
"usage: ferry nbd [OPTIONS] FILE\n"
"Export a disk image (any node spec: file, json:{...}, driver=..., nbd://...)\n"
"over NBD; qemu-nbd compatible options.\n"
"\n"
"Connection:\n"
"  -p, --port=PORT           TCP port to listen on (default 10809)\n"
"  -b, --bind=IFACE          address to bind to (default: all)\n"
"  -k, --socket=PATH         listen on a unix socket instead of TCP\n"
"  -e, --shared=NUM          serve up to NUM clients at once (default 1,\n"
"                            0 = unlimited)\n"
"  -t, --persistent          keep running after the last client leaves\n"
"  -x, --export-name=NAME    export name (default: the empty string)\n"
"  -D, --description=TEXT    human-readable export description\n"
"      --fork                run in the background once listening\n"
"      --pid-file=PATH       write the server's process ID to PATH\n"
"      --handshake-limit=N   drop clients that take more than N seconds\n"
"                            to negotiate (default 10, 0 = no limit)\n"
"TLS (required from every client when given):\n"
"      --tls-cert=FILE --tls-key=FILE\n"
"                            X.509 server certificate and key (PEM)\n"
"      --tls-ca=FILE         also require client certificates signed by\n"
"                            this CA\n"
"      --tls-psk=FILE        pre-shared keys, 'username:hexkey' lines\n"
"      --object tls-creds-x509,id=ID,dir=DIR,endpoint=server[,verify-peer=on]\n"
"      --object tls-creds-psk,id=ID,dir=DIR,endpoint=server\n"
"      --tls-creds=ID        qemu-nbd's form: credentials from DIR\n"
"                            (ca-cert.pem, server-cert.pem, server-key.pem;\n"
"                            or keys.psk)\n"
"What to export:\n"
"  -f, --format=FORMAT       image format (raw, qcow2, ...)\n"
"      --image-opts          FILE is a full set of key=value options\n"
"  -r, --read-only           export read-only\n"
"  -o, --offset=OFFSET       export a raw image from OFFSET on\n"
"  -A, --allocation-depth    offer the qemu:allocation-depth context\n"
"  -B, --bitmap=NAME         offer qemu:dirty-bitmap:NAME (repeatable)\n"
"  -n, --nocache             bypass the host page cache (--cache=none)\n"
"      --cache=MODE          none, writeback, writethrough, directsync,\n"
"                            unsafe\n"
"      --aio=MODE            threads, native, io_uring (accepted; ferry\n"
"                            uses threads)\n"
"      --discard=MODE        ignore (default) or unmap\n"
"      --detect-zeroes=MODE  off (default), on, unmap\n"
"  -v, --verbose             log clients coming and going\n"
"      --qmp=ADDR            QMP on unix:PATH[,server] or tcp:HOST:PORT;\n"
"                            without FILE, a storage daemon QMP configures\n"
"Environment: FERRY_TRACE=nbd traces every request.\n");
}

static int fail(GError *err)
{
    fprintf(stderr, "ferry nbd: %s\n", err ? err->message : "unknown error");
    g_clear_error(&err);
    return 1;
}

static int usage_error(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    g_autofree char *msg = NULL;

    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    fprintf(stderr, "ferry nbd: %s\nTry 'ferry nbd --help' for more "
            "information.\n", msg);
    return 1;
}

static NbdServer *the_server;

static void on_signal(int sig)
{
    if (the_server) {
        nbd_server_shutdown(the_server);
    }
}

static void raise_fd_limit(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* systemd socket activation: LISTEN_PID is us and LISTEN_FDS is 1. */
static int activation_fd(void)
{
    const char *pid = g_getenv("LISTEN_PID");
    const char *fds = g_getenv("LISTEN_FDS");

    if (!pid || !fds || strtol(pid, NULL, 10) != getpid()) {
        return -1;
    }
    if (strcmp(fds, "1")) {
        fprintf(stderr, "ferry nbd: socket activation with LISTEN_FDS=%s: "
                "only one socket is supported\n", fds);
        return -2;
    }
    g_unsetenv("LISTEN_PID");
    g_unsetenv("LISTEN_FDS");
    g_unsetenv("LISTEN_FDNAMES");
    return 3;
}

typedef struct NbdArgs {
    const char *port, *bind, *sockpath, *name, *description, *fmt;
    const char *pid_file, *cache, *discard, *detect_zeroes;
    const char *tls_cert, *tls_key, *tls_ca, *tls_psk, *tls_creds;
    GPtrArray *bitmaps, *create_bitmaps, *objects;
    GPtrArray *qmp;               /* --qmp addresses (tools/qmp/daemon.c) */
    uint64_t offset;
    bool has_offset, persistent, readonly, image_opts, fork, allocation_depth;
    int shared, handshake_limit, workers;
} NbdArgs;

static bool parse_int(const char *s, const char *what, int min, int max,
                      int *out)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max) {
        usage_error("invalid %s '%s'", what, s);
        return false;
    }
    *out = (int)v;
    return true;
}

static int parse_args(int argc, char **argv, NbdArgs *a)
{
    GError *err = NULL;
    int c;

    a->shared = 1;
    a->handshake_limit = 10;
    optind = 1;
    while ((c = getopt_long(argc, argv, "hVp:b:k:e:tvx:D:o:AB:f:rsl:n",
                            long_opts, NULL)) != -1) {
        switch (c) {
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("ferry nbd version %s (qemu-nbd compatible)\n",
                   PACKAGE_VERSION);
            return 0;
        case 'p': a->port = optarg; break;
        case 'b': a->bind = optarg; break;
        case 'k': a->sockpath = optarg; break;
        case 'e':
            if (!parse_int(optarg, "number of shared connections", 0,
                           INT32_MAX, &a->shared)) {
                return 1;
            }
            break;
        case 't': a->persistent = true; break;
        case 'v':
            if (ferry_log_level < FERRY_LOG_DEBUG) {
                ferry_log_level++;
            }
            break;
        case 'x': a->name = optarg; break;
        case 'D': a->description = optarg; break;
        case 'o':
            if (!ferry_parse_size(optarg, "offset", &a->offset, &err)) {
                return fail(err);
            }
            a->has_offset = true;
            break;
        case 'A': a->allocation_depth = true; break;
        case 'B': g_ptr_array_add(a->bitmaps, optarg); break;
        case 'f': a->fmt = optarg; break;
        case 'r': a->readonly = true; break;
        case 's':
        case 'l':
            return usage_error("-%c (snapshots) is not supported yet", c);
        case 'n': a->cache = "none"; break;
        case OPT_FORK: a->fork = true; break;
        case OPT_PID_FILE: a->pid_file = optarg; break;
        case OPT_CACHE: a->cache = optarg; break;
        case OPT_AIO:
            if (strcmp(optarg, "threads") && strcmp(optarg, "native") &&
                strcmp(optarg, "io_uring")) {
                return usage_error("invalid aio mode '%s' (threads, native "
                                   "or io_uring)", optarg);
            }
            break;
        case OPT_DISCARD: a->discard = optarg; break;
        case OPT_DETECT_ZEROES: a->detect_zeroes = optarg; break;
        case OPT_IMAGE_OPTS: a->image_opts = true; break;
        case OPT_TLS_CERT: a->tls_cert = optarg; break;
        case OPT_TLS_KEY: a->tls_key = optarg; break;
        case OPT_TLS_CA: a->tls_ca = optarg; break;
        case OPT_TLS_PSK: a->tls_psk = optarg; break;
        case OPT_OBJECT: g_ptr_array_add(a->objects, optarg); break;
        case OPT_TLS_CREDS: a->tls_creds = optarg; break;
        case OPT_HANDSHAKE_LIMIT:
            if (!parse_int(optarg, "handshake limit", 0, 86400,
                           &a->handshake_limit)) {
                return 1;
            }
            break;
        case OPT_X_WORKERS:
            if (!parse_int(optarg, "number of workers", 1, 256,
                           &a->workers)) {
                return 1;
            }
            break;
        case OPT_X_CREATE_BITMAP:
            g_ptr_array_add(a->create_bitmaps, optarg);
            break;
        case OPT_QMP: g_ptr_array_add(a->qmp, optarg); break;
        default:
            return usage_error("unknown option");
        }
    }
    if (optind == argc && a->qmp->len) {
        return -1;      /* storage daemon: QMP alone configures it */
    }
    if (optind != argc - 1) {
        return usage_error(optind >= argc ? "missing the image to export"
                                          : "too many arguments");
    }
    if (a->sockpath && (a->port || a->bind)) {
        return usage_error("-k (unix socket) and -p/-b (TCP) cannot go "
                           "together");
    }
    if (a->tls_creds && (a->tls_psk || a->tls_cert || a->tls_key ||
                         a->tls_ca)) {
        return usage_error("--tls-creds and --tls-cert/--tls-psk cannot go "
                           "together");
    }
    if (a->tls_psk && (a->tls_cert || a->tls_key || a->tls_ca)) {
        return usage_error("--tls-psk and X.509 certificates cannot go "
                           "together");
    }
    if ((a->tls_cert || a->tls_key || a->tls_ca) &&
        !(a->tls_cert && a->tls_key)) {
        return usage_error("X.509 TLS needs both --tls-cert and --tls-key");
    }
    if (a->has_offset && a->fmt && strcmp(a->fmt, "raw")) {
        return usage_error("--offset only works with raw images");
    }
    return -1;
}

static bool parse_detect_zeroes(const char *s, NbdDetectZeroes *out)
{
    if (!s || !strcmp(s, "off")) {
        *out = NBD_DETECT_ZEROES_OFF;
    } else if (!strcmp(s, "on")) {
        *out = NBD_DETECT_ZEROES_ON;
    } else if (!strcmp(s, "unmap")) {
        *out = NBD_DETECT_ZEROES_UNMAP;
    } else {
        return false;
    }
    return true;
}

/* Open the node with the options the flags ask for. */
static BlockBackend *open_export(NbdArgs *a, const char *spec, GError **errp)
{
    g_autoptr(json_t) extra = json_object();
    uint32_t flags = a->readonly ? 0 : BLOCK_O_RDWR;

    if (a->discard) {
        if (strcmp(a->discard, "ignore") && strcmp(a->discard, "unmap") &&
            strcmp(a->discard, "off") && strcmp(a->discard, "on")) {
            ferry_error_set(errp, FERRY_ERROR_INVALID,
                            "invalid discard mode '%s' (ignore or unmap)",
                            a->discard);
            return NULL;
        }
        json_object_set_new(extra, "discard", json_string(a->discard));
    }
    if (a->has_offset) {
        json_object_set_new(extra, "offset", json_integer(a->offset));
    }
    if (json_object_size(extra) == 0 && !a->image_opts) {
        return img_open(spec, a->has_offset ? "raw" : a->fmt, false, flags,
                        a->cache, errp);
    }
    {
        g_autoptr(json_t) opts = block_spec_to_opts(spec, a->image_opts, errp);
        g_autofree char *dump = NULL;
        g_autofree char *jspec = NULL;
        if (!opts) {
            return NULL;
        }
        ferry_opts_merge(opts, extra);
        if ((a->fmt || a->has_offset) && !json_object_get(opts, "driver")) {
            json_object_set_new(opts, "driver",
                                json_string(a->has_offset ? "raw" : a->fmt));
        }
        dump = json_dumps(opts, JSON_COMPACT);
        jspec = g_strdup_printf("json:%s", dump);
        return img_open(jspec, NULL, false, flags, a->cache, errp);
    }
}

static bool create_test_bitmaps(BlockBackend *blk, GPtrArray *specs,
                                GError **errp)
{
    for (guint i = 0; i < specs->len; i++) {
        g_auto(GStrv) parts = g_strsplit(specs->pdata[i], ":", 2);
        uint64_t gran = BLOCK_BITMAP_DEFAULT_GRANULARITY;
        if (parts[1] && !ferry_parse_size(parts[1], "bitmap granularity",
                                          &gran, errp)) {
            return false;
        }
        if (!block_dirty_bitmap_create(blk_node(blk), parts[0],
                                       (uint32_t)gran, errp)) {
            return false;
        }
    }
    return true;
}

static bool setup_listener(NbdServer *srv, NbdArgs *a, GError **errp)
{
    int afd = activation_fd();

    if (afd == -2) {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "bad socket activation");
        return false;
    }
    if (afd >= 0) {
        if (a->sockpath || a->port || a->bind) {
            ferry_error_set(errp, FERRY_ERROR_INVALID,
                            "socket activation cannot go with -k, -p or -b");
            return false;
        }
        return nbd_server_listen_fd(srv, afd, errp);
    }
    if (a->sockpath) {
        return nbd_server_listen_unix(srv, a->sockpath, errp);
    }
    return nbd_server_listen_tcp(srv, a->bind, a->port ? a->port : "10809",
                                 errp);
}

static bool write_pid_file(const char *path, pid_t pid, GError **errp)
{
    g_autofree char *text = g_strdup_printf("%d\n", (int)pid);

    if (!g_file_set_contents(path, text, -1, errp)) {
        g_prefix_error(errp, "cannot write the pid file: ");
        return false;
    }
    return true;
}

/* --fork: the parent leaves once the child owns the listening socket. */
static bool daemonize(const char *pid_file, GError **errp)
{
    pid_t pid = fork();
    int null;

    if (pid < 0) {
        ferry_error_setg_errno(errp, errno, "cannot fork");
        return false;
    }
    if (pid > 0) {
        if (pid_file && !write_pid_file(pid_file, pid, errp)) {
            kill(pid, SIGTERM);
            return false;
        }
        _exit(0);
    }
    setsid();
    null = open("/dev/null", O_RDWR);
    if (null >= 0) {
        dup2(null, STDIN_FILENO);
        dup2(null, STDOUT_FILENO);
        if (null > STDERR_FILENO) {
            close(null);
        }
    }
    return true;
}

int nbd_main(int argc, char **argv)
{
    NbdArgs a = {
        .bitmaps = g_ptr_array_new(),
        .create_bitmaps = g_ptr_array_new(),
        .objects = g_ptr_array_new(),
        .qmp = g_ptr_array_new(),
    };
    NbdExportConfig ecfg = { 0 };
    NbdServerConfig scfg = { 0 };
    GError *err = NULL;
    BlockBackend *blk;
    NbdExport *exp;
    NbdServer *srv;
    g_autofree char *node_name = NULL;
    int ret;

    ferry_log_init("ferry nbd");
    ret = parse_args(argc, argv, &a);
    if (ret >= 0) {
        return ret;
    }
    if (!parse_detect_zeroes(a.detect_zeroes, &ecfg.detect_zeroes)) {
        return usage_error("invalid detect-zeroes mode '%s' (off, on or "
                           "unmap)", a.detect_zeroes);
    }
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();
    if (a.qmp->len && optind == argc) {
        g_ptr_array_add(a.qmp, NULL);
        return qmp_daemon_run((const char *const *)a.qmp->pdata);
    }

    for (guint i = 0; i < a.objects->len; i++) {
        if (!qmp_object_add_cli(a.objects->pdata[i], &err)) {
            return fail(err);
        }
    }
    if (a.tls_creds) {
        scfg.tls = qmp_tls_creds(a.tls_creds, &err);
    } else if (a.tls_psk) {
        scfg.tls = nbd_tls_new_psk(a.tls_psk, &err);
    } else if (a.tls_cert) {
        scfg.tls = nbd_tls_new_x509(a.tls_cert, a.tls_key, a.tls_ca, &err);
    }
    if (err) {
        return fail(err);
    }
    blk = open_export(&a, argv[optind], &err);
    if (!blk) {
        nbd_tls_free(scfg.tls);
        return fail(err);
    }
    if (!create_test_bitmaps(blk, a.create_bitmaps, &err)) {
        blk_unref(blk);
        nbd_tls_free(scfg.tls);
        return fail(err);
    }
    g_ptr_array_add(a.bitmaps, NULL);
    ecfg.name = a.name ? a.name : "";
    ecfg.description = a.description;
    ecfg.readonly = a.readonly;
    ecfg.allocation_depth = a.allocation_depth;
    ecfg.bitmaps = (const char *const *)a.bitmaps->pdata;
    node_name = g_strdup(blk_node(blk)->node_name);
    exp = nbd_export_new(blk, &ecfg, &err);
    if (!exp) {
        blk_unref(blk);
        nbd_tls_free(scfg.tls);
        return fail(err);
    }

    scfg.max_connections = a.shared;
    scfg.persistent = a.persistent || a.qmp->len;
    scfg.handshake_limit_ms = a.handshake_limit * 1000;
    scfg.max_workers = a.workers;
    srv = nbd_server_new(&scfg);
    if (!nbd_server_add_export(srv, exp, &err) ||
        !setup_listener(srv, &a, &err)) {
        nbd_server_free(srv);
        return fail(err);
    }
    if (a.fork) {
        if (!daemonize(a.pid_file, &err)) {
            nbd_server_free(srv);
            return fail(err);
        }
    } else if (a.pid_file && !write_pid_file(a.pid_file, getpid(), &err)) {
        nbd_server_free(srv);
        return fail(err);
    }

    if (a.qmp->len) {
        /* the command line's export, then QMP on the main loop */
        qmp_nbd_adopt_server(srv);
        qmp_nbd_note_export(ecfg.name, ecfg.name, node_name);
        g_ptr_array_add(a.qmp, NULL);
        return qmp_daemon_run((const char *const *)a.qmp->pdata);
    }
    the_server = srv;
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGHUP, on_signal);
    ferry_info("serving export '%s' (%s)", ecfg.name,
               a.sockpath ? a.sockpath : a.port ? a.port : "port 10809");
    nbd_server_run(srv);
    the_server = NULL;
    nbd_server_free(srv);
    g_ptr_array_free(a.bitmaps, TRUE);
    g_ptr_array_free(a.create_bitmaps, TRUE);
    return 0;
}
