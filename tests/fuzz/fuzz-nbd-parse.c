/*
 * libFuzzer harness: the NBD server's parsers of client bytes, called
 * directly: NBD_OPT_INFO/GO data, LIST/SET_META_CONTEXT data (against an
 * export offering every context), and request headers (compact and
 * extended) with the checks made against several negotiated states.
 * The first input byte picks the parser; the rest is its input.
 */
#include "config.h"

#include <stdint.h>
#include <string.h>

#include <glib.h>

#include "blockdev/backend.h"
#include "blockdev/bitmap.h"
#include "nbd-server/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static NbdServer *server;

static void setup(void)
{
    const char *bitmaps[] = { "b0", "b1", NULL };
    NbdExportConfig ecfg = { .name = "", .allocation_depth = true,
                             .bitmaps = bitmaps };
    NbdServerConfig scfg = { .max_connections = 0 };
    BlockBackend *blk = blk_open("driver=null-co,size=1M", NULL, NULL,
                                 BLOCK_O_RDWR, NULL);
    NbdExport *exp;

    g_assert(blk);
    g_assert(block_dirty_bitmap_create(blk_node(blk), "b0", 65536, NULL));
    g_assert(block_dirty_bitmap_create(blk_node(blk), "b1", 512, NULL));
    exp = nbd_export_new(blk, &ecfg, NULL);
    g_assert(exp);
    server = nbd_server_new(&scfg);
    g_assert(nbd_server_add_export(server, exp, NULL));
}

static void emit(void *opaque, uint32_t id, const char *name)
{
    size_t *n = opaque;

    g_assert(name && strlen(name) > 5);
    (*n)++;
}

static void fuzz_request(const uint8_t *data, size_t size, bool extended)
{
    static const NbdTxInfo tx[] = {
        { .size = 1 << 20, .min_block = 1, .tx_flags = 0x0d6d,
          .structured = true, .meta_count = 2 },
        { .size = 1 << 20, .min_block = 4096, .tx_flags = 0x0003 },
        { .size = INT64_MAX, .min_block = 512, .tx_flags = 0x0fff,
          .structured = true, .extended = true, .meta_count = 1 },
        { .size = 0, .min_block = 1, .tx_flags = 0x0001 },
    };
    uint8_t hdr[32] = { 0 };
    NbdRequest req;

    memcpy(hdr, data, MIN(size, sizeof(hdr)));
    nbd_request_parse(hdr, extended, &req);
    for (size_t i = 0; i < G_N_ELEMENTS(tx); i++) {
        NbdTxInfo t = tx[i];
        uint32_t err;
        const char *why;
        NbdReqVerdict v;
        t.extended = extended;
        v = nbd_request_check(&t, &req, &err, &why);
        /* The verdict must be consistent with what the server relies on. */
        if (v == NBD_REQ_OK) {
            g_assert(req.payload_len <= NBD_MAX_PAYLOAD);
            if (req.type == NBD_CMD_READ) {
                g_assert(req.len <= NBD_MAX_PAYLOAD);
                g_assert(req.offset + req.len <= (uint64_t)t.size);
            }
            if (req.type == NBD_CMD_WRITE) {
                g_assert(req.offset + req.len <= (uint64_t)t.size);
                g_assert(!(t.tx_flags & NBD_FLAG_READ_ONLY));
            }
        } else if (v == NBD_REQ_ERROR) {
            g_assert(err != 0 && why != NULL);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    NbdInfoRequest info;
    NbdMetaSel sel = { 0 };
    size_t n = 0;

    if (!server) {
        setup();
    }
    if (size < 1) {
        return 0;
    }
    switch (data[0] % 5) {
    case 0:
        if (nbd_parse_info_request(data + 1, size - 1, &info) == 0) {
            g_assert(info.name_len <= size - 7);
        }
        break;
    case 1:
        nbd_meta_parse(server, data + 1, size - 1, NULL, emit, &n);
        break;
    case 2:
        if (nbd_meta_parse(server, data + 1, size - 1, &sel, emit, &n) == 0) {
            g_assert(sel.count == n);
        }
        nbd_meta_clear(&sel);
        break;
    case 3:
        fuzz_request(data + 1, size - 1, false);
        break;
    case 4:
        fuzz_request(data + 1, size - 1, true);
        break;
    }
    return 0;
}
