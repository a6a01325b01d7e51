/*
 * ferry img: qemu-img's subcommands with qemu-img's flags and output names.
 * One file per subcommand; this header has the helpers they share.
 */
#ifndef FERRY_TOOLS_IMG_IMG_H
#define FERRY_TOOLS_IMG_IMG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <glib.h>
#include <jansson.h>

#include "blockdev/backend.h"
#include "blockdev/block.h"
#include "blockdev/driver.h"
#include "common/progress.h"

/* Exit codes shared by the subcommands (check and compare add their own). */
#define IMG_EXIT_OK     0
#define IMG_EXIT_ERROR  1

typedef struct ImgCommand {
    const char *name;
    int (*run)(int argc, char **argv);    /* argv[0] is the subcommand */
    const char *synopsis;
} ImgCommand;

int img_create(int argc, char **argv);
int img_info(int argc, char **argv);
int img_convert(int argc, char **argv);
int img_check(int argc, char **argv);
int img_map(int argc, char **argv);
int img_compare(int argc, char **argv);
int img_resize(int argc, char **argv);
int img_measure(int argc, char **argv);
int img_commit(int argc, char **argv);
int img_rebase(int argc, char **argv);
int img_snapshot(int argc, char **argv);
int img_bitmap(int argc, char **argv);
int img_amend(int argc, char **argv);

/* Print "ferry img: <message>" for err (and free it); returns IMG_EXIT_ERROR. */
int img_fail(GError *err);
/* Print "ferry img: <printf>" to stderr. */
void img_error(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
/* Usage error for a subcommand: message, then a hint to --help. */
int img_usage_error(const char *cmd, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

/* "none", "writeback", "unsafe", "directsync", "writethrough" -> flags. */
bool img_parse_cache(const char *mode, uint32_t *flags, GError **errp);

/* "human" or "json". */
bool img_parse_output(const char *s, bool *json, GError **errp);

/*
 * Open an image for a subcommand.  spec: filename, URI, json: or (with
 * image_opts) key=value options.  flags: BLOCK_O_*; cache: -t/-T value or
 * NULL for writeback.
 */
BlockBackend *img_open(const char *spec, const char *fmt, bool image_opts,
                       uint32_t flags, const char *cache, GError **errp);

/*
 * Parse and merge -o option strings for format fmt; NULL with errp set on
 * bad input.  Sets *help if any of them was "help" or "?".
 */
json_t *img_parse_create_opts(GPtrArray *o_args, GError **errp);
bool img_opts_wants_help(GPtrArray *o_args);
void img_print_create_opts_help(const char *fmt);
/* Reject options the format does not know: "qcow2 does not support 'x'". */
bool img_check_create_opts(const char *fmt, json_t *opts, GError **errp);

/* Pretty JSON as qemu-img prints it (4-space indent), then a newline. */
void img_print_json(FILE *out, json_t *json);

/*
 * json-out.c: a deep copy of json whose object keys are in the order QEMU's
 * QDict iterates them, and the whole text as qemu-img prints it (key order,
 * 4-space layout, escapes).  img_print_json prints the latter.
 */
json_t *img_json_qemu_order(json_t *json);
char *img_json_to_qemu_text(json_t *json);

/*
 * chain.c: the node in bs's backing chain (below bs) that `name` names, as
 * qemu-img's -b does: the name as written in the overlay's header, the
 * node's filename, or the same file by path.  NULL if none.
 */
BlockNode *img_find_backing_image(BlockNode *bs, const char *name);

/* qemu-caps.c: does QEMU 7.2's driver for fmt have this feature? */
typedef enum {
    IMG_QEMU_CHECK,
    IMG_QEMU_SNAPSHOTS,
    IMG_QEMU_BITMAPS,
    IMG_QEMU_AMEND,
    IMG_QEMU_BACKING,
} ImgQemuFeature;
bool img_qemu_format_has(const char *fmt, ImgQemuFeature feature);

/* Human progress (-p) or JSON (--progress=json) from the common flags. */
FerryProgress *img_progress_new(bool enabled, FerryProgressMode mode,
                                const char *op, uint64_t total);

/* getopt long options every subcommand accepts. */
#define IMG_OPT_IMAGE_OPTS   0x100
#define IMG_OPT_OUTPUT       0x101
#define IMG_OPT_FORCE_SHARE  'U'
#define IMG_OPT_PROGRESS     0x102
#define IMG_OPT_OBJECT       0x103
#define IMG_OPT_BACKING_CHAIN 0x104
#define IMG_OPT_SHRINK       0x105
#define IMG_OPT_TARGET_IS_ZERO 0x106
#define IMG_OPT_SALVAGE      0x107
#define IMG_OPT_TARGET_IMAGE_OPTS 0x108
#define IMG_OPT_BITMAPS      0x109
#define IMG_OPT_SKIP_BROKEN  0x10a
#define IMG_OPT_START_OFFSET 0x10b
#define IMG_OPT_MAX_LENGTH   0x10c
#define IMG_OPT_ADD          0x10d
#define IMG_OPT_REMOVE       0x10e
#define IMG_OPT_CLEAR        0x10f
#define IMG_OPT_ENABLE       0x110
#define IMG_OPT_DISABLE      0x111
#define IMG_OPT_MERGE        0x112
#define IMG_OPT_GRANULARITY  0x113
#define IMG_OPT_SOURCE_FORMAT 0x114
#define IMG_OPT_FORCE        0x115
#define IMG_OPT_LIMITS       0x116

#endif
