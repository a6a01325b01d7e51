/*
 * Saving and loading a device's field table (devices/vmstate.h).
 */
#include "config.h"

#include <string.h>

#include "common/error.h"
#include "devices/vmstate.h"

static size_t type_width(VmStateType t)
{
    switch (t) {
    case VMSTATE_U8:
    case VMSTATE_BOOL:
    case VMSTATE_BYTES:
        return 1;
    case VMSTATE_U16:
        return 2;
    case VMSTATE_U32:
        return 4;
    case VMSTATE_U64:
        return 8;
    }
    return 0;
}

static size_t elem_stride(const VmStateField *f)
{
    return f->stride ? f->stride
           : f->type == VMSTATE_BOOL ? sizeof(bool) : type_width(f->type);
}

size_t vmstate_size(const VmStateDesc *d, int version)
{
    size_t n = 0;

    for (const VmStateField *f = d->fields; f->name; f++) {
        if (f->since <= version) {
            n += type_width(f->type) * f->count;
        }
    }
    return n;
}

void vmstate_save(const VmStateDesc *d, const void *obj, GByteArray *out)
{
    for (const VmStateField *f = d->fields; f->name; f++) {
        const uint8_t *p = (const uint8_t *)obj + f->offset;
        if (f->type == VMSTATE_BYTES) {
            g_byte_array_append(out, p, f->count);
            continue;
        }
        for (uint32_t i = 0; i < f->count; i++, p += elem_stride(f)) {
            uint8_t le[8];
            uint64_t v = 0;
            switch (f->type) {
            case VMSTATE_U8:   v = *p; break;
            case VMSTATE_BOOL: v = *(const bool *)p ? 1 : 0; break;
            case VMSTATE_U16:  { uint16_t x; memcpy(&x, p, 2); v = x; break; }
            case VMSTATE_U32:  { uint32_t x; memcpy(&x, p, 4); v = x; break; }
            case VMSTATE_U64:  memcpy(&v, p, 8); break;
            case VMSTATE_BYTES: break;
            }
            for (size_t b = 0; b < type_width(f->type); b++) {
                le[b] = (uint8_t)(v >> (8 * b));
            }
            g_byte_array_append(out, le, type_width(f->type));
        }
    }
}

bool vmstate_load(const VmStateDesc *d, void *obj, int version,
                  const uint8_t **buf, size_t *len, GError **errp)
{
    if (version < d->min_version || version > d->version) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "%s: state version %d not in [%d, %d]", d->name,
                        version, d->min_version, d->version);
        return false;
    }
    if (vmstate_size(d, version) > *len) {
        ferry_error_set(errp, FERRY_ERROR_CORRUPT,
                        "%s: state section is %zu bytes, need %zu", d->name,
                        *len, vmstate_size(d, version));
        return false;
    }
    for (const VmStateField *f = d->fields; f->name; f++) {
        uint8_t *p = (uint8_t *)obj + f->offset;
        size_t w = type_width(f->type);
        if (f->since > version) {
            continue;
        }
        if (f->type == VMSTATE_BYTES) {
            memcpy(p, *buf, f->count);
            *buf += f->count;
            *len -= f->count;
            continue;
        }
        for (uint32_t i = 0; i < f->count; i++, p += elem_stride(f)) {
            uint64_t v = 0;
            for (size_t b = 0; b < w; b++) {
                v |= (uint64_t)(*buf)[b] << (8 * b);
            }
            *buf += w;
            *len -= w;
            switch (f->type) {
            case VMSTATE_U8:   *p = (uint8_t)v; break;
            case VMSTATE_BOOL: *(bool *)p = v != 0; break;
            case VMSTATE_U16:  { uint16_t x = v; memcpy(p, &x, 2); break; }
            case VMSTATE_U32:  { uint32_t x = v; memcpy(p, &x, 4); break; }
            case VMSTATE_U64:  memcpy(p, &v, 8); break;
            case VMSTATE_BYTES: break;
            }
        }
    }
    return true;
}
