/*
 * The snapshot table qemu-img prints for "snapshot -l" and in "info", laid
 * out byte for byte as qemu-img 7.2 does (tests/unit/tools checks it against
 * qemu-img's own output).
 */
#include "config.h"

#include <time.h>

#include "common/units.h"
#include "tools/img/info.h"

/*
 * qemu-img's snapshot table: the header is laid out "%-10s%-17s%8s%20s%13s
 * %11s" and each row "%-9s %-16s %8s%20s%13s%11s" (so a long ID or tag
 * pushes the rest of its row right, as in qemu-img).
 */
void img_print_snapshot_table(GString *out, json_t *snapshots)
{
    size_t i;
    json_t *sn;

    g_string_append_printf(out, "%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG",
                           "VM SIZE", "DATE", "VM CLOCK", "ICOUNT");
    json_array_foreach(snapshots, i, sn) {
        time_t t = json_integer_value(json_object_get(sn, "date-sec"));
        uint64_t clock_sec = json_integer_value(json_object_get(sn, "vm-clock-sec"));
        uint64_t clock_nsec = json_integer_value(json_object_get(sn, "vm-clock-nsec"));
        json_t *icount = json_object_get(sn, "icount");
        g_autofree char *vmsize = ferry_size_to_str(
            json_integer_value(json_object_get(sn, "vm-state-size")));
        g_autofree char *ic = icount ? g_strdup_printf("%" JSON_INTEGER_FORMAT,
                                                       json_integer_value(icount))
                                     : g_strdup("");
        g_autofree char *clock = g_strdup_printf(
            "%02u:%02u:%02u.%03u", (unsigned)(clock_sec / 3600),
            (unsigned)(clock_sec / 60 % 60), (unsigned)(clock_sec % 60),
            (unsigned)(clock_nsec / 1000000 % 1000));
        char date[32];
        struct tm tm;

        localtime_r(&t, &tm);
        strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm);
        g_string_append_printf(out, "%-9s %-16s %8s%20s%13s%11s\n",
                               json_string_value(json_object_get(sn, "id")),
                               json_string_value(json_object_get(sn, "name")),
                               vmsize, date, clock, ic);
    }
}
