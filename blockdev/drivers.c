/*
 * The driver registry (one array, no constructors), format probing, and
 * image creation entry points.
 */
#include "config.h"

#include <string.h>

#include "blockdev/driver.h"
#include "common/error.h"
#include "common/opts.h"

extern const BlockDriver file_driver;
extern const BlockDriver raw_driver;
extern const BlockDriver qcow2_driver;
extern const BlockDriver null_co_driver;
extern const BlockDriver null_aio_driver;
#ifdef HAVE_LIBNBD
extern const BlockDriver nbd_driver;
#endif

const BlockDriver *const block_drivers[] = {
    &file_driver,
    &raw_driver,
    &qcow2_driver,
    &null_co_driver,
    &null_aio_driver,
#ifdef HAVE_LIBNBD
    &nbd_driver,
#endif
    NULL,
};

const BlockDriver *block_driver_find(const char *name)
{
    for (const BlockDriver *const *d = block_drivers; *d; d++) {
        if (!strcmp((*d)->name, name)) {
            return *d;
        }
    }
    /* QEMU's names for the file driver on devices. */
    if (!strcmp(name, "host_device") || !strcmp(name, "host_cdrom")) {
        return &file_driver;
    }
    return NULL;
}

const BlockDriver *block_driver_for_filename(const char *filename)
{
    for (const BlockDriver *const *d = block_drivers; *d; d++) {
        for (const char *const *p = (*d)->protocols; p && *p; p++) {
            if (g_str_has_prefix(filename, *p)) {
                return *d;
            }
        }
    }
    return &file_driver;
}

/* Formats we recognise but do not implement: a clear error beats "raw". */
static const struct {
    const char *magic;
    size_t len;
    size_t off;
    const char *name;
} foreign_formats[] = {
    { "KDMV", 4, 0, "vmdk" },
    { "# Disk DescriptorFile", 21, 0, "vmdk" },
    { "QFI\xfb\0\0\0\1", 8, 0, "qcow (version 1)" },
    { "QED\0", 4, 0, "qed" },
    { "LUKS\xba\xbe", 6, 0, "luks" },
    { "vhdxfile", 8, 0, "vhdx" },
    { "conectix", 8, 0, "vpc" },
    { "<<< Oracle VM VirtualBox Disk Image >>>", 39, 0, "vdi" },
    { "<<< Sun xVM VirtualBox Disk Image >>>", 37, 0, "vdi" },
    { "<<< innotek VirtualBox Disk Image >>>", 37, 0, "vdi" },
    { "WithoutFreeSpace", 16, 0, "parallels" },
    { "cloop", 5, 0, "cloop" },
    { "bochs", 5, 4, "bochs" },
};

const BlockDriver *block_driver_probe(BlockNode *file, GError **errp)
{
    uint8_t buf[2048] = { 0 };
    int64_t len = block_node_getlength(file);
    const BlockDriver *best = block_driver_find("raw");
    int best_score = 1;
    int ret;

    if (len < 0) {
        ferry_error_setg_errno(errp, (int)-len, "cannot get the size of '%s'",
                               file->filename);
        return NULL;
    }
    ret = block_node_pread(file, 0, MIN(len, (int64_t)sizeof(buf)), buf, 0);
    if (ret < 0) {
        ferry_error_setg_errno(errp, -ret, "cannot read '%s' to probe its "
                               "format", file->filename);
        return NULL;
    }
    for (const BlockDriver *const *d = block_drivers; *d; d++) {
        if ((*d)->probe) {
            int score = (*d)->probe(buf, sizeof(buf), file->filename);
            if (score > best_score) {
                best = *d;
                best_score = score;
            }
        }
    }
    if (best_score > 1) {
        return best;
    }
    if (!memcmp(buf, "QFI\xfb", 4) && buf[7] != 1) {
        /* qcow2's magic, but a version its probe did not accept */
        ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED,
                        "'%s' is a qcow2 image of version %u, which ferry "
                        "does not support (versions 2 and 3 are)",
                        file->filename,
                        (unsigned)(buf[4] << 24 | buf[5] << 16 | buf[6] << 8 | buf[7]));
        return NULL;
    }
    for (size_t i = 0; i < G_N_ELEMENTS(foreign_formats); i++) {
        if (!memcmp(buf + foreign_formats[i].off, foreign_formats[i].magic,
                    foreign_formats[i].len)) {
            ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED,
                            "'%s' is a %s image, which ferry cannot open "
                            "(convert it with qemu-img, or name its format "
                            "with -f raw to read the bytes as they are)",
                            file->filename, foreign_formats[i].name);
            return NULL;
        }
    }
    return best;
}

bool block_create_file(const char *filename, json_t *opts, GError **errp)
{
    const BlockDriver *drv = block_driver_for_filename(filename);

    if (!drv->create) {
        ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED,
                        "protocol '%s' cannot create images", drv->name);
        return false;
    }
    return drv->create(filename, opts, errp);
}

bool block_create(const char *fmt, const char *filename, json_t *opts,
                  GError **errp)
{
    const BlockDriver *drv = block_driver_find(fmt);

    if (!drv) {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "unknown format '%s'", fmt);
        return false;
    }
    if (!drv->create) {
        ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED,
                        "format '%s' does not support image creation", fmt);
        return false;
    }
    if (!json_object_get(opts, "size")) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "image size is required to create '%s'", filename);
        return false;
    }
    return drv->create(filename, opts, errp);
}
