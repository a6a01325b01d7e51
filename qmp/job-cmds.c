/*
 * Block job commands: block-stream, block-commit, blockdev-mirror,
 * drive-mirror, blockdev-backup, drive-backup, the job-* and block-job-* verbs,
 * query-jobs and query-block-jobs (specs/qmp-block-jobs.md 2 and 3).
 * Arguments are mapped onto blockdev/jobs.h; job events go to QMP.
 */
#include "config.h"

#include <string.h>

#include "blockdev/driver.h"
#include "blockdev/job.h"
#include "blockdev/jobs.h"
#include "common/error.h"
#include "qmp/commands.h"
#include "qmp/internal.h"

#define COMMON_ARGS "job-id:str? speed:int? auto-finalize:bool? " \
                    "auto-dismiss:bool? filter-node-name:str? "

static bool parse_common(json_t *args, const char *device, BlockJobCommon *c,
                         GError **errp)
{
    const char *s;

    memset(c, 0, sizeof(*c));
    c->job_id = qmp_arg_str(args, "job-id");
    if (!c->job_id) {
        c->job_id = device;
    }
    c->speed = qmp_arg_int(args, "speed", 0);
    c->auto_finalize = qmp_arg_bool(args, "auto-finalize", true);
    c->auto_dismiss = qmp_arg_bool(args, "auto-dismiss", true);
    if (c->speed < 0) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Parameter 'speed' expects a non-negative value");
        return false;
    }
    if ((s = qmp_arg_str(args, "on-error")) &&
        !block_job_parse_on_error(s, &c->on_source_error, errp)) {
        return false;
    }
    if ((s = qmp_arg_str(args, "on-source-error")) &&
        !block_job_parse_on_error(s, &c->on_source_error, errp)) {
        return false;
    }
    if ((s = qmp_arg_str(args, "on-target-error")) &&
        !block_job_parse_on_error(s, &c->on_target_error, errp)) {
        return false;
    }
    return true;
}

/* A node of bs's backing chain whose filename is `file`. */
static BlockNode *chain_node_by_file(BlockNode *bs, const char *file)
{
    for (BlockNode *n = block_node_backing(bs); n; n = block_node_backing(n)) {
        if (!g_strcmp0(n->filename, file)) {
            return n;
        }
    }
    return NULL;
}

static json_t *cmd_block_stream(json_t *args, GError **errp)
{
    const char *device = qmp_arg_str(args, "device");
    BlockNode *top = qmp_find_node(device, errp), *base = NULL;
    const char *base_node = qmp_arg_str(args, "base-node");
    const char *base_file = qmp_arg_str(args, "base");
    const char *bottom = qmp_arg_str(args, "bottom");
    BlockJobCommon c;

    if (!top || !parse_common(args, device, &c, errp)) {
        return NULL;
    }
    if (!!base_node + !!base_file + !!bottom > 1) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "'base', 'base-node' and 'bottom' are mutually exclusive");
        return NULL;
    }
    if (base_node) {
        base = qmp_find_node(base_node, errp);
        if (!base) {
            return NULL;
        }
    } else if (base_file) {
        base = chain_node_by_file(top, base_file);
        if (!base) {
            g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                        "Base '%s' not found", base_file);
            return NULL;
        }
    } else if (bottom) {
        BlockNode *b = qmp_find_node(bottom, errp);
        if (!b) {
            return NULL;
        }
        base = block_node_backing(b);
    }
    return block_stream_start(&c, top, base, qmp_arg_str(args, "backing-file"),
                              errp) ? json_object() : NULL;
}

static json_t *cmd_block_commit(json_t *args, GError **errp)
{
    const char *device = qmp_arg_str(args, "device");
    BlockNode *active = qmp_find_node(device, errp), *top, *base;
    const char *s;
    BlockJobCommon c;

    if (!active || !parse_common(args, device, &c, errp)) {
        return NULL;
    }
    top = active;
    if ((s = qmp_arg_str(args, "top-node"))) {
        if (!(top = qmp_find_node(s, errp))) {
            return NULL;
        }
    } else if ((s = qmp_arg_str(args, "top"))) {
        top = chain_node_by_file(active, s);
        if (!top && !g_strcmp0(active->filename, s)) {
            top = active;
        }
        if (!top) {
            g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                        "Top image file %s not found", s);
            return NULL;
        }
    }
    if ((s = qmp_arg_str(args, "base-node"))) {
        if (!(base = qmp_find_node(s, errp))) {
            return NULL;
        }
    } else if ((s = qmp_arg_str(args, "base"))) {
        base = chain_node_by_file(active, s);
        if (!base) {
            g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                        "Can't find '%s' in the backing chain", s);
            return NULL;
        }
    } else {
        base = top;
        while (block_node_backing(base)) {
            base = block_node_backing(base);
        }
        if (base == top) {
            g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                        "Top image '%s' has no backing file", top->node_name);
            return NULL;
        }
    }
    if (top == base) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "cannot commit an image into itself");
        return NULL;
    }
    if (top != active && !qmp_arg_str(args, "job-id")) {
        c.job_id = device;
    }
    return block_commit_start(&c, top, base, qmp_arg_str(args, "backing-file"),
                              errp) ? json_object() : NULL;
}

static bool mirror_checks(json_t *args, BlockSyncMode *sync,
                          bool *write_blocking, GError **errp)
{
    const char *cm = qmp_arg_str(args, "copy-mode");

    if (!block_parse_sync_mode(qmp_arg_str(args, "sync"), sync, errp)) {
        return false;
    }
    if (cm && strcmp(cm, "background") && strcmp(cm, "write-blocking")) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Parameter 'copy-mode' does not accept value '%s'", cm);
        return false;
    }
    *write_blocking = cm && !strcmp(cm, "write-blocking");
    if (qmp_arg_has(args, "replaces")) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "'replaces' is not supported by ferry yet");
        return false;
    }
    return true;
}

static json_t *cmd_blockdev_mirror(json_t *args, GError **errp)
{
    const char *device = qmp_arg_str(args, "device");
    BlockNode *src = qmp_find_node(device, errp), *dst;
    BlockSyncMode sync;
    BlockJobCommon c;
    bool wb;

    if (!src || !parse_common(args, device, &c, errp) ||
        !mirror_checks(args, &sync, &wb, errp)) {
        return NULL;
    }
    dst = qmp_find_node(qmp_arg_str(args, "target"), errp);
    if (!dst) {
        return NULL;
    }
    return block_mirror_start(&c, src, dst, sync,
                              (uint32_t)qmp_arg_int(args, "granularity", 0),
                              qmp_arg_int(args, "buf-size", 0), wb, errp)
           ? json_object() : NULL;
}

BlockNode *qmp_open_new_image(const char *file, const char *fmt,
                              const char *mode, const char *node_name,
                              BlockNode *src, BlockNode *backing,
                              bool attach_backing, GError **errp)
{
    g_autoptr(json_t) extra = json_object();

    if (mode && strcmp(mode, "existing") && strcmp(mode, "absolute-paths")) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Parameter 'mode' does not accept value '%s'", mode);
        return NULL;
    }
    if (node_name && block_node_find(node_name)) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Node name '%s' is already in use", node_name);
        return NULL;
    }
    if (!mode || !strcmp(mode, "absolute-paths")) {
        g_autoptr(json_t) opts = json_object();
        int64_t len = block_node_getlength(src);
        json_object_set_new(opts, "size", json_integer(MAX(len, 0)));
        if (backing && backing->filename) {
            json_object_set_new(opts, "backing_file",
                                json_string(backing->filename));
            json_object_set_new(opts, "backing_fmt",
                                json_string(block_node_format(backing)));
        }
        if (!block_create(fmt, file, opts, errp)) {
            return NULL;
        }
    }
    if (attach_backing) {
        /* the caller attaches backing itself, not a second open of it */
        json_object_set_new(extra, "backing", json_null());
    }
    if (node_name) {
        json_object_set_new(extra, "node-name", json_string(node_name));
    }
    return block_node_open(file, fmt, extra, BLOCK_O_RDWR, 0, BLOCK_PERM_ALL,
                           errp);
}

/* drive-mirror's and drive-backup's target (format: src's by default). */
static BlockNode *open_new_target(json_t *args, BlockNode *src,
                                  BlockNode *backing, GError **errp)
{
    const char *fmt = qmp_arg_str(args, "format");

    return qmp_open_new_image(qmp_arg_str(args, "target"),
                              fmt ? fmt : block_node_format(src),
                              qmp_arg_str(args, "mode"),
                              qmp_arg_str(args, "node-name"), src, backing,
                              false, errp);
}

static json_t *cmd_drive_mirror(json_t *args, GError **errp)
{
    const char *device = qmp_arg_str(args, "device");
    BlockNode *src = qmp_find_node(device, errp), *dst, *backing;
    BlockSyncMode sync;
    BlockJobCommon c;
    BlockJob *job;
    bool wb;

    if (!src || !parse_common(args, device, &c, errp) ||
        !mirror_checks(args, &sync, &wb, errp)) {
        return NULL;
    }
    backing = sync == BLOCK_SYNC_NONE ? src
            : sync == BLOCK_SYNC_TOP ? block_node_backing(src) : NULL;
    dst = open_new_target(args, src, backing, errp);
    if (!dst) {
        return NULL;
    }
    job = block_mirror_start(&c, src, dst, sync,
                             (uint32_t)qmp_arg_int(args, "granularity", 0),
                             qmp_arg_int(args, "buf-size", 0), wb, errp);
    block_node_unref(dst);
    return job ? json_object() : NULL;
}

/* Backup's checks of sync, bitmap and bitmap-mode, shared by both forms. */
static bool backup_checks(json_t *args, BlockSyncMode *sync,
                          BlockBitmapSyncMode *bmode, GError **errp)
{
    const char *bitmap = qmp_arg_str(args, "bitmap");
    const char *bm = qmp_arg_str(args, "bitmap-mode");

    *bmode = BLOCK_BITMAP_SYNC_ON_SUCCESS;
    if (!block_parse_sync_mode(qmp_arg_str(args, "sync"), sync, errp)) {
        return false;
    }
    if (bm && !block_parse_bitmap_sync_mode(bm, bmode, errp)) {
        return false;
    }
    if (*sync == BLOCK_SYNC_BITMAP && !bm) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "Bitmap sync mode must be given when providing a bitmap");
        return false;
    }
    if (bitmap && *sync == BLOCK_SYNC_NONE) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "a bitmap cannot be used with sync mode 'none'");
        return false;
    }
    if (qmp_arg_bool(args, "compress", false)) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC,
                    "compressed backup is not supported by ferry yet");
        return false;
    }
    return true;
}

/*
 * drive-backup: blockdev-backup into an image it creates first (QEMU
 * deprecates it in favour of blockdev-add + blockdev-backup, but scripts
 * and the transaction-less tools still use it).  As QEMU: sync=top backs
 * the new image by the source's backing file, sync=none by the source.
 */
static json_t *cmd_drive_backup(json_t *args, GError **errp)
{
    const char *device = qmp_arg_str(args, "device");
    BlockNode *src = qmp_find_node(device, errp), *dst, *backing = NULL;
    BlockBitmapSyncMode bmode;
    BlockSyncMode sync;
    BlockJobCommon c;
    BlockJob *job;

    if (!src || !parse_common(args, device, &c, errp) ||
        !backup_checks(args, &sync, &bmode, errp)) {
        return NULL;
    }
    if (sync == BLOCK_SYNC_TOP) {
        backing = block_node_backing(src);
        if (!backing) {
            sync = BLOCK_SYNC_FULL;
        }
    } else if (sync == BLOCK_SYNC_NONE) {
        backing = src;
    }
    dst = open_new_target(args, src, backing, errp);
    if (!dst) {
        return NULL;
    }
    job = block_backup_start(&c, src, dst, sync, qmp_arg_str(args, "bitmap"),
                             bmode, errp);
    block_node_unref(dst);
    return job ? json_object() : NULL;
}

static json_t *cmd_blockdev_backup(json_t *args, GError **errp)
{
    const char *device = qmp_arg_str(args, "device");
    BlockNode *src = qmp_find_node(device, errp), *dst;
    BlockBitmapSyncMode bmode;
    BlockSyncMode sync;
    BlockJobCommon c;

    if (!src || !parse_common(args, device, &c, errp) ||
        !backup_checks(args, &sync, &bmode, errp)) {
        return NULL;
    }
    dst = qmp_find_node(qmp_arg_str(args, "target"), errp);
    if (!dst) {
        return NULL;
    }
    return block_backup_start(&c, src, dst, sync, qmp_arg_str(args, "bitmap"),
                              bmode, errp) ? json_object() : NULL;
}

/* -- verbs ------------------------------------------------------------------ */

static BlockJob *find_job(const char *id, bool legacy, GError **errp)
{
    BlockJob *job = block_job_find(id);

    if (!job) {
        if (legacy) {
            g_set_error(errp, QMP_ERROR, QMP_ERROR_DEVICE_NOT_ACTIVE,
                        "Block job '%s' not found", id);
        } else {
            g_set_error(errp, QMP_ERROR, QMP_ERROR_GENERIC, "Job not found");
        }
    }
    return job;
}

#define VERB(fname, key, legacy, call)                                     \
    static json_t *fname(json_t *args, GError **errp)                      \
    {                                                                      \
        BlockJob *job = find_job(qmp_arg_str(args, key), legacy, errp);    \
        return job && (call) ? json_object() : NULL;                       \
    }

VERB(cmd_job_pause, "id", false, block_job_user_pause(job, errp))
VERB(cmd_job_resume, "id", false, block_job_user_resume(job, errp))
VERB(cmd_job_cancel, "id", false, block_job_user_cancel(job, true, errp))
VERB(cmd_job_complete, "id", false, block_job_user_complete(job, errp))
VERB(cmd_job_finalize, "id", false, block_job_finalize(job, errp))
VERB(cmd_job_dismiss, "id", false, block_job_dismiss(job, errp))
VERB(cmd_bj_pause, "device", true, block_job_user_pause(job, errp))
VERB(cmd_bj_resume, "device", true, block_job_user_resume(job, errp))
VERB(cmd_bj_complete, "device", true, block_job_user_complete(job, errp))
VERB(cmd_bj_cancel, "device", true,
     block_job_user_cancel(job, qmp_arg_bool(args, "force", false), errp))
VERB(cmd_bj_set_speed, "device", true,
     block_job_set_speed(job, qmp_arg_int(args, "speed", 0), errp))
VERB(cmd_bj_finalize, "id", true, block_job_finalize(job, errp))
VERB(cmd_bj_dismiss, "id", true, block_job_dismiss(job, errp))

static json_t *cmd_query_jobs(json_t *args, GError **errp)
{
    g_autoptr(GPtrArray) list = block_job_list();
    json_t *out = json_array();

    for (guint i = 0; i < list->len; i++) {
        json_array_append_new(out, block_job_info(list->pdata[i]));
    }
    return out;
}

static json_t *cmd_query_block_jobs(json_t *args, GError **errp)
{
    g_autoptr(GPtrArray) list = block_job_list();
    json_t *out = json_array();

    for (guint i = 0; i < list->len; i++) {
        json_array_append_new(out, block_job_block_info(list->pdata[i]));
    }
    return out;
}

void qmp_register_job_commands(void)
{
    static const QmpCommand cmds[] = {
        { "block-stream", COMMON_ARGS "device:str base:str? base-node:str? "
          "bottom:str? backing-file:str? backing-mask-protocol:bool? "
          "on-error:str?", cmd_block_stream },
        { "block-commit", COMMON_ARGS "device:str base-node:str? base:str? "
          "top-node:str? top:str? backing-file:str? "
          "backing-mask-protocol:bool? on-error:str?", cmd_block_commit },
        { "blockdev-mirror", COMMON_ARGS "device:str target:str replaces:str? "
          "sync:str granularity:int? buf-size:int? on-source-error:str? "
          "on-target-error:str? copy-mode:str? target-is-zero:bool?",
          cmd_blockdev_mirror },
        { "drive-mirror", "job-id:str? speed:int? auto-finalize:bool? "
          "auto-dismiss:bool? device:str target:str format:str? "
          "node-name:str? replaces:str? sync:str mode:str? granularity:int? "
          "buf-size:int? on-source-error:str? on-target-error:str? "
          "unmap:bool? copy-mode:str?", cmd_drive_mirror },
        { "blockdev-backup", COMMON_ARGS "device:str target:str sync:str "
          "bitmap:str? bitmap-mode:str? compress:bool? on-source-error:str? "
          "on-target-error:str? on-cbw-error:str? discard-source:bool? "
          "x-perf:object?", cmd_blockdev_backup },
        { "drive-backup", COMMON_ARGS "device:str target:str format:str? "
          "mode:str? sync:str bitmap:str? bitmap-mode:str? compress:bool? "
          "on-source-error:str? on-target-error:str? x-perf:object?",
          cmd_drive_backup },
        { "job-pause", "id:str", cmd_job_pause },
        { "job-resume", "id:str", cmd_job_resume },
        { "job-cancel", "id:str", cmd_job_cancel },
        { "job-complete", "id:str", cmd_job_complete },
        { "job-finalize", "id:str", cmd_job_finalize },
        { "job-dismiss", "id:str", cmd_job_dismiss },
        { "block-job-pause", "device:str", cmd_bj_pause },
        { "block-job-resume", "device:str", cmd_bj_resume },
        { "block-job-complete", "device:str", cmd_bj_complete },
        { "block-job-cancel", "device:str force:bool?", cmd_bj_cancel },
        { "block-job-set-speed", "device:str speed:int", cmd_bj_set_speed },
        { "block-job-finalize", "id:str", cmd_bj_finalize },
        { "block-job-dismiss", "id:str", cmd_bj_dismiss },
        { "query-jobs", "", cmd_query_jobs },
        { "query-block-jobs", "", cmd_query_block_jobs },
    };
    qmp_register_commands(cmds, G_N_ELEMENTS(cmds));
    block_job_set_event_sink(qmp_event_emit);
}
