/*
 * Helpers for the subcommands that walk a backing chain (commit -b,
 * rebase onto an image already in the chain).
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "tools/img/img.h"

/* Same file on disk?  Both must exist; names that do not resolve differ. */
static bool same_file(const char *a, const char *b)
{
    g_autofree char *ra = NULL, *rb = NULL;

    if (!a || !b) {
        return false;
    }
    ra = realpath(a, NULL);
    rb = realpath(b, NULL);
    return ra && rb && !strcmp(ra, rb);
}

BlockNode *img_find_backing_image(BlockNode *bs, const char *name)
{
    BlockNode *cur = bs;

    if (!name || !*name) {
        return NULL;
    }
    while (cur) {
        BlockNode *below = block_node_backing(cur);
        if (!below) {
            break;
        }
        if ((cur->backing_file && !strcmp(cur->backing_file, name)) ||
            (below->filename && !strcmp(below->filename, name))) {
            return below;
        }
        {
            /* Relative names are relative to the overlay, as in headers. */
            g_autofree char *rel = block_backing_path(cur->filename, name);
            if (same_file(name, below->filename) ||
                same_file(rel, below->filename)) {
                return below;
            }
        }
        cur = below;
    }
    return NULL;
}
