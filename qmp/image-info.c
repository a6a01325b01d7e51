/*
 * ImageInfo and SnapshotInfo as JSON, shared by ferry img (info, check,
 * snapshot -l) and QMP's block queries.
 */
#include "config.h"

#include "common/error.h"
#include "qmp/image-info.h"

json_t *qmp_snapshot_info(const BlockSnapshotInfo *sn)
{
    json_t *o = json_object();

    json_object_set_new(o, "id", json_string(sn->id));
    json_object_set_new(o, "name", json_string(sn->name ? sn->name : ""));
    json_object_set_new(o, "vm-state-size", json_integer(sn->vm_state_size));
    json_object_set_new(o, "date-sec", json_integer(sn->date_sec));
    json_object_set_new(o, "date-nsec", json_integer(sn->date_nsec));
    json_object_set_new(o, "vm-clock-sec",
                        json_integer(sn->vm_clock_nsec / 1000000000));
    json_object_set_new(o, "vm-clock-nsec",
                        json_integer(sn->vm_clock_nsec % 1000000000));
    if (sn->icount != UINT64_MAX) {
        json_object_set_new(o, "icount", json_integer(sn->icount));
    }
    return o;
}

json_t *qmp_image_info(BlockNode *bs, const char *display_name,
                       GError **errp)
{
    json_t *info = json_object();
    int64_t size = block_node_getlength(bs);
    int64_t actual = block_node_allocated_size(bs);
    BlockImageInfo di = { 0 };
    BlockNode *backing = block_node_backing(bs);

    if (size < 0) {
        ferry_error_setg_errno(errp, (int)-size, "cannot get the size of '%s'",
                               display_name);
        json_decref(info);
        return NULL;
    }
    json_object_set_new(info, "virtual-size", json_integer(size));
    json_object_set_new(info, "filename", json_string(display_name));
    if (bs->drv->get_info) {
        if (!bs->drv->get_info(bs, &di, errp)) {
            json_decref(info);
            return NULL;
        }
        if (di.cluster_size > 0) {
            json_object_set_new(info, "cluster-size",
                                json_integer(di.cluster_size));
        }
    }
    json_object_set_new(info, "format", json_string(block_node_format(bs)));
    if (actual >= 0) {
        json_object_set_new(info, "actual-size", json_integer(actual));
    }
    if (di.encrypted) {
        json_object_set_new(info, "encrypted", json_true());
    }
    if (bs->backing_file) {
        g_autofree char *full = block_backing_path(bs->filename,
                                                   bs->backing_file);
        json_object_set_new(info, "backing-filename",
                            json_string(bs->backing_file));
        json_object_set_new(info, "full-backing-filename",
                            json_string(backing && backing->filename
                                        ? backing->filename : full));
        if (bs->backing_format) {
            json_object_set_new(info, "backing-filename-format",
                                json_string(bs->backing_format));
        }
    }
    if (bs->drv->snapshot_list) {
        BlockSnapshotInfo *list = NULL;
        int n = bs->drv->snapshot_list(bs, &list, errp);
        if (n < 0) {
            json_decref(info);
            json_decref(di.format_specific);
            return NULL;
        }
        if (n > 0) {
            json_t *arr = json_array();
            for (int i = 0; i < n; i++) {
                json_array_append_new(arr, qmp_snapshot_info(&list[i]));
                block_snapshot_info_clear(&list[i]);
            }
            json_object_set_new(info, "snapshots", arr);
        }
        g_free(list);
    }
    if (di.format_specific) {
        json_object_set_new(info, "format-specific", di.format_specific);
    }
    json_object_set_new(info, "dirty-flag", json_boolean(di.dirty_flag));
    return info;
}
