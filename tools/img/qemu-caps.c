/*
 * What QEMU 7.2's drivers can do, by format name, so a subcommand can tell
 * "this format has no snapshots" (answer as qemu-img does) from "ferry's
 * driver for this format does not do snapshots yet" (say so, never pretend
 * there is nothing there).
 */
#include "config.h"

#include <string.h>

#include "tools/img/img.h"

static const struct {
    ImgQemuFeature feature;
    const char *const formats[8];
} qemu_caps[] = {
    { IMG_QEMU_CHECK, { "qcow2", "qed", "vdi", "vhdx", "vmdk", "parallels" } },
    { IMG_QEMU_SNAPSHOTS, { "qcow2", "rbd" } },
    { IMG_QEMU_BITMAPS, { "qcow2" } },
    { IMG_QEMU_AMEND, { "qcow2", "luks" } },
    { IMG_QEMU_BACKING, { "qcow2", "qed", "vmdk" } },
};

bool img_qemu_format_has(const char *fmt, ImgQemuFeature feature)
{
    for (size_t i = 0; i < G_N_ELEMENTS(qemu_caps); i++) {
        if (qemu_caps[i].feature != feature) {
            continue;
        }
        for (size_t j = 0; j < G_N_ELEMENTS(qemu_caps[i].formats) &&
                           qemu_caps[i].formats[j]; j++) {
            if (!strcmp(qemu_caps[i].formats[j], fmt)) {
                return true;
            }
        }
    }
    return false;
}
