/*
 * How a device describes its migratable state: a versioned table of fields
 * (name, type, where in the device struct, since which version).  The
 * migration stream (migrate/) walks these tables; until it exists, the
 * save/load helpers here turn a table into bytes and back so each device's
 * table is exercised by tests.
 *
 * Encoding of one section: every field in table order, little-endian,
 * fixed width; arrays as count elements; a field newer than the reader's
 * version is absent from the stream and keeps its reset value on load.
 */
#ifndef FERRY_DEVICES_VMSTATE_H
#define FERRY_DEVICES_VMSTATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <glib.h>

typedef enum {
    VMSTATE_U8,
    VMSTATE_U16,
    VMSTATE_U32,
    VMSTATE_U64,
    VMSTATE_BOOL,     /* a C bool, one byte in the stream (0 or 1) */
    VMSTATE_BYTES,    /* count raw bytes */
} VmStateType;

typedef struct VmStateField {
    const char *name;        /* NULL ends the table */
    VmStateType type;
    size_t offset;           /* in the device struct */
    uint32_t count;          /* array elements; bytes for VMSTATE_BYTES */
    size_t stride;           /* bytes between elements (0: packed) */
    int since;               /* first version that carries it */
} VmStateField;

typedef struct VmStateDesc {
    const char *name;        /* "virtio-blk", "serial", ... */
    int version;             /* what this build writes */
    int min_version;         /* oldest stream it can load */
    const VmStateField *fields;
} VmStateDesc;

#define VMSTATE_FIELD_TYPE(st, f, t) \
    { #f, (t), G_STRUCT_OFFSET(st, f), 1, 0, 1 }
#define VMSTATE_U8_FIELD(st, f)   VMSTATE_FIELD_TYPE(st, f, VMSTATE_U8)
#define VMSTATE_U16_FIELD(st, f)  VMSTATE_FIELD_TYPE(st, f, VMSTATE_U16)
#define VMSTATE_U32_FIELD(st, f)  VMSTATE_FIELD_TYPE(st, f, VMSTATE_U32)
#define VMSTATE_U64_FIELD(st, f)  VMSTATE_FIELD_TYPE(st, f, VMSTATE_U64)
#define VMSTATE_BOOL_FIELD(st, f) VMSTATE_FIELD_TYPE(st, f, VMSTATE_BOOL)
#define VMSTATE_BYTES_FIELD(st, f, n) \
    { #f, VMSTATE_BYTES, G_STRUCT_OFFSET(st, f), (n), 0, 1 }
/* An array of n elements of type t, stride bytes apart (array of structs). */
#define VMSTATE_ARRAY_FIELD(name, st, f, t, n, stride) \
    { name, (t), G_STRUCT_OFFSET(st, f), (n), (stride), 1 }
#define VMSTATE_END { NULL, 0, 0, 0, 0, 0 }

/* Append obj's fields to out. */
void vmstate_save(const VmStateDesc *d, const void *obj, GByteArray *out);

/*
 * Load a section written at version into obj; consumes from *buf and *len.
 * Fails (errp) on a version out of range or a short section.
 */
bool vmstate_load(const VmStateDesc *d, void *obj, int version,
                  const uint8_t **buf, size_t *len, GError **errp);

/* Bytes a section of this table takes at a given version. */
size_t vmstate_size(const VmStateDesc *d, int version);

#endif
