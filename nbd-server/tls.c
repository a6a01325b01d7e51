/*
 * TLS for the NBD server with OpenSSL (NBD spec, "TLS support"): X.509
 * (server certificate, and client certificates checked against a CA when
 * one is given) or pre-shared keys from a "username:hexkey" file, as
 * qemu-nbd and nbdkit read them.  After STARTTLS the socket is non-blocking
 * and every SSL call is made under the client's ssl_lock: the receiving
 * worker and the sending ones share one SSL object, which OpenSSL does not
 * let two threads use at once.  Waiting for the socket happens in io.c,
 * outside the lock.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "common/error.h"
#include "common/log.h"
#include "nbd-server/internal.h"

#define PSK_MAX_BYTES 256

struct NbdTls {
    SSL_CTX *ctx;
    GHashTable *psk;            /* username -> GBytes key; NULL for X.509 */
};

static char *ssl_errors(void)
{
    GString *s = g_string_new(NULL);
    unsigned long e;

    while ((e = ERR_get_error())) {
        char buf[256];
        ERR_error_string_n(e, buf, sizeof(buf));
        if (s->len) {
            g_string_append(s, "; ");
        }
        g_string_append(s, buf);
    }
    if (!s->len) {
        g_string_append(s, "unknown error");
    }
    return g_string_free(s, FALSE);
}

static SSL_CTX *new_ctx(GError **errp)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

    if (!ctx) {
        g_autofree char *why = ssl_errors();
        ferry_error_setg(errp, "cannot create a TLS context: %s", why);
        return NULL;
    }
    /* NBD spec, "TLS versions": 1.2 at least. */
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
                     SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ctx, 0);
    return ctx;
}

NbdTls *nbd_tls_new_x509(const char *cert_file, const char *key_file,
                         const char *ca_file, GError **errp)
{
    SSL_CTX *ctx;
    NbdTls *tls;

    if (!cert_file || !key_file) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "TLS with certificates needs both --tls-cert and "
                        "--tls-key");
        return NULL;
    }
    ctx = new_ctx(errp);
    if (!ctx) {
        return NULL;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        g_autofree char *why = ssl_errors();
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "cannot load the TLS certificate '%s': %s", cert_file,
                        why);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        g_autofree char *why = ssl_errors();
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "cannot load the TLS key '%s' (or it does not match "
                        "the certificate): %s", key_file, why);
        goto fail;
    }
    if (ca_file) {
        if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
            g_autofree char *why = ssl_errors();
            ferry_error_set(errp, FERRY_ERROR_INVALID,
                            "cannot load the TLS CA certificate '%s': %s",
                            ca_file, why);
            goto fail;
        }
        /* A CA given means clients must prove who they are. */
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER |
                           SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    }
    tls = g_new0(NbdTls, 1);
    tls->ctx = ctx;
    return tls;

fail:
    SSL_CTX_free(ctx);
    return NULL;
}

static unsigned int psk_server_cb(SSL *ssl, const char *identity,
                                  unsigned char *psk, unsigned int max_len)
{
    NbdTls *tls = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    GBytes *key = identity ? g_hash_table_lookup(tls->psk, identity) : NULL;
    gsize len;
    const void *data;

    if (!key) {
        ferry_debug("nbd: TLS-PSK client with unknown username '%s'",
                    identity ? identity : "");
        return 0;
    }
    data = g_bytes_get_data(key, &len);
    if (len > max_len) {
        return 0;
    }
    memcpy(psk, data, len);
    return (unsigned int)len;
}

static bool parse_psk_file(const char *path, GHashTable *keys, GError **errp)
{
    g_autofree char *text = NULL;
    g_auto(GStrv) lines = NULL;

    if (!g_file_get_contents(path, &text, NULL, errp)) {
        g_prefix_error(errp, "cannot read the TLS-PSK file: ");
        return false;
    }
    lines = g_strsplit(text, "\n", -1);
    for (int i = 0; lines[i]; i++) {
        char *line = g_strstrip(lines[i]);
        char *colon = strchr(line, ':');
        size_t hexlen;
        guint8 *key;

        if (!*line) {
            continue;
        }
        hexlen = colon ? strlen(colon + 1) : 0;
        if (!colon || colon == line || hexlen == 0 || hexlen % 2 ||
            hexlen / 2 > PSK_MAX_BYTES) {
            ferry_error_set(errp, FERRY_ERROR_INVALID,
                            "TLS-PSK file '%s' line %d: expected "
                            "'username:hexkey' with at most %d key bytes",
                            path, i + 1, PSK_MAX_BYTES);
            return false;
        }
        *colon = 0;
        key = g_malloc(hexlen / 2);
        for (size_t j = 0; j < hexlen / 2; j++) {
            int hi = g_ascii_xdigit_value(colon[1 + 2 * j]);
            int lo = g_ascii_xdigit_value(colon[2 + 2 * j]);
            if (hi < 0 || lo < 0) {
                g_free(key);
                ferry_error_set(errp, FERRY_ERROR_INVALID,
                                "TLS-PSK file '%s' line %d: the key is not "
                                "hexadecimal", path, i + 1);
                return false;
            }
            key[j] = (guint8)(hi << 4 | lo);
        }
        g_hash_table_replace(keys, g_strdup(line),
                             g_bytes_new_take(key, hexlen / 2));
    }
    if (g_hash_table_size(keys) == 0) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "TLS-PSK file '%s' has no keys", path);
        return false;
    }
    return true;
}

NbdTls *nbd_tls_new_psk(const char *psk_file, GError **errp)
{
    GHashTable *keys = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                             (GDestroyNotify)g_bytes_unref);
    SSL_CTX *ctx;
    NbdTls *tls;

    if (!parse_psk_file(psk_file, keys, errp)) {
        g_hash_table_unref(keys);
        return NULL;
    }
    ctx = new_ctx(errp);
    if (!ctx) {
        g_hash_table_unref(keys);
        return NULL;
    }
    /* No certificate: only PSK key exchanges can work. */
    if (SSL_CTX_set_cipher_list(ctx, "PSK:!aNULL:!eNULL:@SECLEVEL=0") != 1) {
        g_autofree char *why = ssl_errors();
        ferry_error_setg(errp, "cannot enable TLS-PSK ciphers: %s", why);
        SSL_CTX_free(ctx);
        g_hash_table_unref(keys);
        return NULL;
    }
    tls = g_new0(NbdTls, 1);
    tls->ctx = ctx;
    tls->psk = keys;
    SSL_CTX_set_app_data(ctx, tls);
    SSL_CTX_set_psk_server_callback(ctx, psk_server_cb);
    return tls;
}

void nbd_tls_free(NbdTls *tls)
{
    if (tls) {
        SSL_CTX_free(tls->ctx);
        if (tls->psk) {
            g_hash_table_unref(tls->psk);
        }
        g_free(tls);
    }
}

/* -- per connection -------------------------------------------------------- */

static int wait_ready(NbdClient *c, short events)
{
    struct pollfd pfd = { .fd = c->fd, .events = events };
    int timeout = -1, ret;

    if (c->deadline_us) {
        int64_t left = c->deadline_us - g_get_monotonic_time();
        if (left <= 0) {
            return -ETIMEDOUT;
        }
        timeout = (int)MIN(left / 1000 + 1, INT32_MAX);
    }
    do {
        ret = poll(&pfd, 1, timeout);
    } while (ret < 0 && errno == EINTR);
    return ret < 0 ? -errno : ret == 0 ? -ETIMEDOUT : 0;
}

bool nbd_tls_accept(NbdClient *c, NbdTls *tls)
{
    SSL *ssl = SSL_new(tls->ctx);
    int flags = fcntl(c->fd, F_GETFL);

    if (!ssl || flags < 0 || fcntl(c->fd, F_SETFL, flags | O_NONBLOCK) < 0 ||
        SSL_set_fd(ssl, c->fd) != 1) {
        g_autofree char *why = ssl_errors();
        ferry_warn("nbd client %s: cannot start TLS: %s", c->peer, why);
        SSL_free(ssl);
        return false;
    }
    for (;;) {
        int ret, err;
        ERR_clear_error();
        ret = SSL_accept(ssl);
        if (ret == 1) {
            break;
        }
        err = SSL_get_error(ssl, ret);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
            ret = wait_ready(c, err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT);
            if (ret == 0) {
                continue;
            }
            ferry_warn("nbd client %s: TLS handshake failed: %s", c->peer,
                       g_strerror(-ret));
        } else {
            g_autofree char *why = ssl_errors();
            ferry_warn("nbd client %s: TLS handshake failed: %s", c->peer,
                       why);
        }
        SSL_free(ssl);
        return false;
    }
    c->ssl = ssl;
    FERRY_TRACE_POINT(NBD, "client=%s tls=%s cipher=%s", c->peer,
                      SSL_get_version(ssl), SSL_get_cipher_name(ssl));
    return true;
}

void nbd_tls_close(NbdClient *c)
{
    if (c->ssl) {
        ERR_clear_error();
        SSL_shutdown(c->ssl);       /* best effort: non-blocking */
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
}

static ssize_t ssl_result(NbdClient *c, int n, int *want)
{
    int err = SSL_get_error(c->ssl, n);

    switch (err) {
    case SSL_ERROR_WANT_READ:
        *want = POLLIN;
        return -EAGAIN;
    case SSL_ERROR_WANT_WRITE:
        *want = POLLOUT;
        return -EAGAIN;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        return errno ? -errno : 0;
    default: {
        g_autofree char *why = ssl_errors();
        ferry_debug("nbd client %s: TLS error: %s", c->peer, why);
        return -EIO;
    }
    }
}

ssize_t nbd_tls_read(NbdClient *c, void *buf, size_t len, int *want)
{
    ssize_t ret;
    int n;

    g_mutex_lock(&c->ssl_lock);
    ERR_clear_error();
    errno = 0;
    n = SSL_read(c->ssl, buf, (int)MIN(len, INT32_MAX));
    ret = n > 0 ? n : ssl_result(c, n, want);
    g_mutex_unlock(&c->ssl_lock);
    return ret;
}

ssize_t nbd_tls_write(NbdClient *c, const void *buf, size_t len, int *want)
{
    ssize_t ret;
    int n;

    g_mutex_lock(&c->ssl_lock);
    ERR_clear_error();
    errno = 0;
    n = SSL_write(c->ssl, buf, (int)MIN(len, INT32_MAX));
    ret = n > 0 ? n : ssl_result(c, n, want);
    if (ret == 0) {
        ret = -EPIPE;
    }
    g_mutex_unlock(&c->ssl_lock);
    return ret;
}
