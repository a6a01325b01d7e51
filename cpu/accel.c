/*
 * The table of vCPU backends.  "jit" is a name ferry reserves: its backend
 * (cpu/jit/) plugs in here with the same AccelOps.
 */
#include "config.h"

#include <string.h>

#include "common/error.h"
#include "cpu/vcpu.h"

static const AccelOps *const accels[] = {
    &kvm_accel_ops,
    &qtest_accel_ops,
};

const AccelOps *accel_find(const char *name, GError **errp)
{
    for (size_t i = 0; i < G_N_ELEMENTS(accels); i++) {
        if (!strcmp(accels[i]->name, name)) {
            return accels[i];
        }
    }
    if (!strcmp(name, "jit")) {
        ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED,
                        "accelerator 'jit' is not built yet: use kvm or qtest");
    } else {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "unknown accelerator '%s' (kvm, qtest)", name);
    }
    return NULL;
}
