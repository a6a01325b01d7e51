/*
 * libFuzzer harness: the QMP input path.  Bytes go through the incremental
 * JSON stream splitter (size and depth limits, control-character resets)
 * and every value through the dispatcher's envelope and argument checks
 * into real handlers (core, dirty-bitmap and transaction commands on a
 * null-co node).
 * Commands that open files (blockdev-add) are not registered here.
 */
#include "config.h"

#include <stdint.h>
#include <string.h>

#include <glib.h>

#include "blockdev/backend.h"
#include "qmp/commands.h"
#include "qmp/qmp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static QmpSession session;

static void on_value(void *opaque, json_t *value, const char *error)
{
    json_t *resp;

    if (!value) {
        resp = qmp_error_response(QMP_ERROR_GENERIC, error);
    } else {
        resp = qmp_dispatch(&session, value);
        json_decref(value);
    }
    g_assert(json_object_get(resp, "return") || json_object_get(resp, "error"));
    json_decref(resp);
}

static void init_once(void)
{
    static BlockBackend *disk;
    GError *err = NULL;

    if (disk) {
        return;
    }
    qmp_register_core_commands();
    qmp_register_bitmap_commands();
    qmp_register_transaction_command();
    disk = blk_open("json:{\"driver\":\"null-co\",\"size\":1048576,"
                    "\"node-name\":\"n0\"}", NULL, NULL, BLOCK_O_RDWR, &err);
    g_assert_no_error(err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    QmpStream st;

    init_once();
    /* the first byte picks whether capabilities are negotiated already */
    session.negotiated = size > 0 && (data[0] & 1);
    qmp_stream_init(&st, 64 << 10, on_value, NULL);
    qmp_stream_feed(&st, (const char *)data, size);
    qmp_stream_destroy(&st);
    return 0;
}
