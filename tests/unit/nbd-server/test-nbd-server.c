/*
 * The NBD server's pieces without peers: request parsing and checking,
 * NBD_OPT_INFO/GO and meta-context parsing, and one whole session over a
 * socketpair against an export on a temporary raw file.
 *
 *   client (this test) --socketpair--> nbd_server_serve_fd()
 *                                        --> BlockBackend --> [raw] --> [file]
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <glib.h>
#include <glib/gstdio.h>

#include "blockdev/backend.h"
#include "blockdev/bitmap.h"
#include "nbd-server/internal.h"

static char *tmpdir;

static void put_req(uint8_t *h, uint32_t magic, uint16_t flags, uint16_t type,
                    uint64_t cookie, uint64_t off, uint64_t len, bool ext)
{
    ferry_st_be32(h, magic);
    ferry_st_be16(h + 4, flags);
    ferry_st_be16(h + 6, type);
    ferry_st_be64(h + 8, cookie);
    ferry_st_be64(h + 16, off);
    if (ext) {
        ferry_st_be64(h + 24, len);
    } else {
        ferry_st_be32(h + 24, (uint32_t)len);
    }
}

static void test_parse_headers(void)
{
    uint8_t h[32];
    NbdRequest r;

    put_req(h, NBD_REQUEST_MAGIC, NBD_CMD_FLAG_FUA, NBD_CMD_WRITE, 77, 4096,
            512, false);
    g_assert_true(nbd_request_parse(h, false, &r));
    g_assert_cmpuint(r.cookie, ==, 77);
    g_assert_cmpuint(r.payload_len, ==, 512);
    g_assert_false(nbd_request_parse(h, true, &r));     /* wrong magic */

    put_req(h, NBD_EXTENDED_REQUEST_MAGIC, 0, NBD_CMD_TRIM, 1, 0,
            UINT64_C(1) << 40, true);
    g_assert_true(nbd_request_parse(h, true, &r));
    g_assert_cmpuint(r.len, ==, UINT64_C(1) << 40);
    g_assert_cmpuint(r.payload_len, ==, 0);
    put_req(h, NBD_EXTENDED_REQUEST_MAGIC, NBD_CMD_FLAG_PAYLOAD_LEN,
            NBD_CMD_WRITE, 1, 0, 100, true);
    g_assert_true(nbd_request_parse(h, true, &r));
    g_assert_cmpuint(r.payload_len, ==, 100);
}

static void test_check_verdicts(void)
{
    const NbdTxInfo rw = { .size = 1 << 20, .min_block = 1,
                           .tx_flags = NBD_FLAG_HAS_FLAGS,
                           .structured = true, .meta_count = 1 };
    NbdTxInfo ro = rw, aligned = rw, nometa = rw;
    static const struct {
        uint16_t type, flags;
        uint64_t off, len, payload;
        int which;                  /* 0 rw, 1 ro, 2 aligned, 3 nometa */
        NbdReqVerdict v;
        uint32_t err;
    } cases[] = {
        { NBD_CMD_READ, 0, 0, 4096, 0, 0, NBD_REQ_OK, 0 },
        { NBD_CMD_READ, 0, (1 << 20) - 10, 11, 0, 0, NBD_REQ_ERROR,
          NBD_EINVAL },
        { NBD_CMD_READ, 0, UINT64_MAX, 2, 0, 0, NBD_REQ_ERROR, NBD_EINVAL },
        { NBD_CMD_READ, 0, 0, 64 << 20, 0, 0, NBD_REQ_ERROR, NBD_EINVAL },
        { NBD_CMD_READ, NBD_CMD_FLAG_DF, 0, 512, 0, 0, NBD_REQ_OK, 0 },
        { NBD_CMD_WRITE, 0, (1 << 20) - 1, 2, 2, 0, NBD_REQ_ERROR,
          NBD_ENOSPC },
        { NBD_CMD_WRITE, 0, 0, 512, 512, 1, NBD_REQ_ERROR, NBD_EPERM },
        { NBD_CMD_WRITE, 0, 0, 64 << 20, 64 << 20, 0, NBD_REQ_HANGUP, 0 },
        { NBD_CMD_WRITE, 0, 100, 512, 512, 2, NBD_REQ_ERROR, NBD_EINVAL },
        { NBD_CMD_WRITE_ZEROES, NBD_CMD_FLAG_FAST_ZERO | NBD_CMD_FLAG_NO_HOLE,
          0, 4096, 0, 0, NBD_REQ_OK, 0 },
        { NBD_CMD_WRITE_ZEROES, NBD_CMD_FLAG_DF, 0, 4096, 0, 0,
          NBD_REQ_ERROR, NBD_EINVAL },
        { NBD_CMD_TRIM, 0, 0, 4096, 0, 1, NBD_REQ_ERROR, NBD_EPERM },
        { NBD_CMD_FLUSH, 0, 123, 0, 0, 2, NBD_REQ_OK, 0 },
        { NBD_CMD_FLUSH, 1u << 12, 0, 0, 0, 0, NBD_REQ_ERROR, NBD_EINVAL },
        { NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_REQ_ONE, 0, 4096, 0, 0,
          NBD_REQ_OK, 0 },
        { NBD_CMD_BLOCK_STATUS, 0, 0, 4096, 0, 3, NBD_REQ_ERROR, NBD_EINVAL },
        { NBD_CMD_DISC, 0xffff, 5, 5, 0, 0, NBD_REQ_DISC, 0 },
        { 42, 0, 0, 0, 0, 0, NBD_REQ_ERROR, NBD_EINVAL },
    };

    ro.tx_flags |= NBD_FLAG_READ_ONLY;
    aligned.min_block = 4096;
    nometa.meta_count = 0;
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        const NbdTxInfo *tx[] = { &rw, &ro, &aligned, &nometa };
        NbdRequest r = { .type = cases[i].type, .flags = cases[i].flags,
                         .offset = cases[i].off, .len = cases[i].len,
                         .payload_len = cases[i].payload };
        uint32_t err;
        const char *why;
        NbdReqVerdict v = nbd_request_check(tx[cases[i].which], &r, &err,
                                            &why);
        g_test_message("case %zu", i);
        g_assert_cmpint(v, ==, cases[i].v);
        if (v == NBD_REQ_ERROR) {
            g_assert_cmpuint(err, ==, cases[i].err);
            g_assert_nonnull(why);
        }
    }
}

static void test_info_request(void)
{
    uint8_t d[64];
    NbdInfoRequest r;

    ferry_st_be32(d, 3);
    memcpy(d + 4, "abc", 3);
    ferry_st_be16(d + 7, 2);
    ferry_st_be16(d + 9, NBD_INFO_BLOCK_SIZE);
    ferry_st_be16(d + 11, 999);
    g_assert_cmpuint(nbd_parse_info_request(d, 13, &r), ==, 0);
    g_assert_cmpuint(r.name_len, ==, 3);
    g_assert_true(r.want_block_size);
    g_assert_false(r.want_name);
    /* a count that does not match the length, a name past the end */
    g_assert_cmpuint(nbd_parse_info_request(d, 12, &r), ==,
                     NBD_REP_ERR_INVALID);
    ferry_st_be32(d, 100);
    g_assert_cmpuint(nbd_parse_info_request(d, 13, &r), ==,
                     NBD_REP_ERR_INVALID);
    g_assert_cmpuint(nbd_parse_info_request(d, 2, &r), ==,
                     NBD_REP_ERR_INVALID);
}

/* -- a server with one export on a raw file ------------------------------- */

static NbdServer *new_server(char **path_out)
{
    g_autofree char *path = g_build_filename(tmpdir, "disk.raw", NULL);
    const char *bitmaps[] = { "dirty", NULL };
    NbdExportConfig ecfg = { .name = "disk", .bitmaps = bitmaps };
    NbdServerConfig scfg = { .max_connections = 0 };
    GError *err = NULL;
    BlockBackend *blk;
    NbdExport *exp;
    NbdServer *srv;
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);

    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(ftruncate(fd, 1 << 20), ==, 0);
    close(fd);
    blk = blk_open(path, "raw", NULL, BLOCK_O_RDWR, &err);
    g_assert_no_error(err);
    g_assert_nonnull(block_dirty_bitmap_create(blk_node(blk), "dirty", 4096,
                                               &err));
    exp = nbd_export_new(blk, &ecfg, &err);
    g_assert_no_error(err);
    srv = nbd_server_new(&scfg);
    g_assert_true(nbd_server_add_export(srv, exp, &err));
    *path_out = g_steal_pointer(&path);
    return srv;
}

typedef struct Collect {
    GPtrArray *names;
} Collect;

static void collect(void *opaque, uint32_t id, const char *name)
{
    g_ptr_array_add(((Collect *)opaque)->names,
                    g_strdup_printf("%u=%s", id, name));
}

static uint32_t meta_query(NbdServer *srv, const char *exp, bool set,
                           const char *const *q, GPtrArray *out,
                           NbdMetaSel *sel)
{
    GByteArray *b = g_byte_array_new();
    uint8_t n[4];
    Collect c = { out };
    uint32_t ret;
    unsigned count = 0;

    ferry_st_be32(n, strlen(exp));
    g_byte_array_append(b, n, 4);
    g_byte_array_append(b, (const uint8_t *)exp, strlen(exp));
    for (const char *const *p = q; *p; p++) {
        count++;
    }
    ferry_st_be32(n, count);
    g_byte_array_append(b, n, 4);
    for (const char *const *p = q; *p; p++) {
        ferry_st_be32(n, strlen(*p));
        g_byte_array_append(b, n, 4);
        g_byte_array_append(b, (const uint8_t *)*p, strlen(*p));
    }
    ret = nbd_meta_parse(srv, b->data, b->len, set ? sel : NULL, collect, &c);
    g_byte_array_free(b, TRUE);
    return ret;
}

static void test_meta_contexts(void)
{
    g_autofree char *path = NULL;
    NbdServer *srv = new_server(&path);
    g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func(g_free);
    NbdMetaSel sel = { 0 };

    g_assert_cmpuint(meta_query(srv, "disk", false,
                                (const char *[]){ NULL }, names, NULL), ==, 0);
    g_assert_cmpuint(names->len, ==, 2);
    g_assert_cmpstr(names->pdata[0], ==, "1=base:allocation");
    g_assert_cmpstr(names->pdata[1], ==, "3=qemu:dirty-bitmap:dirty");
    g_ptr_array_set_size(names, 0);
    /* allocation depth was not offered: asking for it finds nothing */
    g_assert_cmpuint(meta_query(srv, "disk", true,
                                (const char *[]){ "qemu:allocation-depth",
                                                  "qemu:dirty-bitmap:dirty",
                                                  NULL }, names, &sel), ==, 0);
    g_assert_cmpuint(sel.count, ==, 1);
    g_assert_true(sel.bitmaps[0]);
    g_assert_cmpstr(sel.export_name, ==, "disk");
    nbd_meta_clear(&sel);
    g_assert_cmpuint(meta_query(srv, "other", false,
                                (const char *[]){ NULL }, names, NULL), ==,
                     NBD_REP_ERR_UNKNOWN);
    nbd_server_free(srv);
}

/* Read exactly n bytes from fd. */
static void read_full(int fd, void *buf, size_t n)
{
    uint8_t *p = buf;

    while (n > 0) {
        ssize_t r = read(fd, p, n);
        g_assert_cmpint(r, >, 0);
        p += r;
        n -= r;
    }
}

static void write_full(int fd, const void *buf, size_t n)
{
    g_assert_cmpint(write(fd, buf, n), ==, (ssize_t)n);
}

static gpointer serve_thread(gpointer opaque)
{
    void **args = opaque;

    nbd_server_serve_fd(args[0], GPOINTER_TO_INT(args[1]));
    return NULL;
}

static void test_session_over_socketpair(void)
{
    g_autofree char *path = NULL;
    NbdServer *srv = new_server(&path);
    uint8_t buf[256], data[4096];
    g_autofree char *contents = NULL;
    gsize len;
    void *args[2];
    GThread *t;
    int sv[2];
    uint64_t served;
    unsigned connected;

    g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), ==, 0);
    args[0] = srv;
    args[1] = GINT_TO_POINTER(sv[0]);
    t = g_thread_new("serve", serve_thread, args);

    read_full(sv[1], buf, 18);
    g_assert_cmpuint(ferry_ld_be64(buf), ==, NBD_MAGIC);
    g_assert_cmpuint(ferry_ld_be16(buf + 16), ==,
                     NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    ferry_st_be32(buf, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    write_full(sv[1], buf, 4);

    /* NBD_OPT_GO "disk", no info requests */
    ferry_st_be64(buf, NBD_OPTS_MAGIC);
    ferry_st_be32(buf + 8, NBD_OPT_GO);
    ferry_st_be32(buf + 12, 10);
    ferry_st_be32(buf + 16, 4);
    memcpy(buf + 20, "disk", 4);
    ferry_st_be16(buf + 24, 0);
    write_full(sv[1], buf, 26);
    for (;;) {
        uint32_t type, rlen;
        read_full(sv[1], buf, 20);
        type = ferry_ld_be32(buf + 12);
        rlen = ferry_ld_be32(buf + 16);
        g_assert_cmpuint(rlen, <=, sizeof(buf));
        read_full(sv[1], buf, rlen);
        if (type == NBD_REP_ACK) {
            break;
        }
        g_assert_cmpuint(type, ==, NBD_REP_INFO);
        if (ferry_ld_be16(buf) == NBD_INFO_EXPORT) {
            g_assert_cmpuint(ferry_ld_be64(buf + 2), ==, 1 << 20);
        }
    }

    /* a write with FUA, then a read of it, with simple replies */
    memset(data, 0x5c, sizeof(data));
    put_req(buf, NBD_REQUEST_MAGIC, NBD_CMD_FLAG_FUA, NBD_CMD_WRITE, 1, 8192,
            sizeof(data), false);
    write_full(sv[1], buf, 28);
    write_full(sv[1], data, sizeof(data));
    read_full(sv[1], buf, 16);
    g_assert_cmpuint(ferry_ld_be32(buf), ==, NBD_SIMPLE_REPLY_MAGIC);
    g_assert_cmpuint(ferry_ld_be32(buf + 4), ==, 0);
    g_assert_cmpuint(ferry_ld_be64(buf + 8), ==, 1);

    put_req(buf, NBD_REQUEST_MAGIC, 0, NBD_CMD_READ, 2, 8192 - 16, 32, false);
    write_full(sv[1], buf, 28);
    read_full(sv[1], buf, 16 + 32);
    g_assert_cmpuint(ferry_ld_be32(buf + 4), ==, 0);
    g_assert_cmpuint(buf[16], ==, 0);
    g_assert_cmpuint(buf[16 + 16], ==, 0x5c);

    put_req(buf, NBD_REQUEST_MAGIC, 0, NBD_CMD_DISC, 3, 0, 0, false);
    write_full(sv[1], buf, 28);
    g_assert_cmpint(read(sv[1], buf, 1), ==, 0);     /* server hung up */
    g_thread_join(t);
    close(sv[1]);

    nbd_server_stats(srv, &served, &connected);
    g_assert_cmpuint(served, ==, 1);
    g_assert_cmpuint(connected, ==, 0);
    nbd_server_free(srv);
    g_assert_true(g_file_get_contents(path, &contents, &len, NULL));
    g_assert_cmpuint(len, ==, 1 << 20);
    g_assert_cmpuint((uint8_t)contents[8192], ==, 0x5c);
    g_assert_cmpuint((uint8_t)contents[8192 + 4095], ==, 0x5c);
    g_assert_cmpuint((uint8_t)contents[8192 + 4096], ==, 0);
}

int main(int argc, char **argv)
{
    int ret;

    g_test_init(&argc, &argv, NULL);
    tmpdir = g_dir_make_tmp("ferry-nbd-XXXXXX", NULL);
    g_test_add_func("/nbd-server/request/parse-compact-and-extended",
                    test_parse_headers);
    g_test_add_func("/nbd-server/request/check-verdicts",
                    test_check_verdicts);
    g_test_add_func("/nbd-server/negotiate/info-request",
                    test_info_request);
    g_test_add_func("/nbd-server/meta-context/list-and-set",
                    test_meta_contexts);
    g_test_add_func("/nbd-server/server/session-over-socketpair",
                    test_session_over_socketpair);
    ret = g_test_run();
    {
        g_autofree char *p = g_build_filename(tmpdir, "disk.raw", NULL);
        g_unlink(p);
        g_rmdir(tmpdir);
    }
    return ret;
}
