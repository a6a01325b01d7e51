/*
 * The block graph: opening nodes from specs, children and permissions, and
 * the request wrappers that check a request once before any driver sees it
 * (range, alignment, permissions), track it for drain, and mark bitmaps.
 * Backing-chain status lives here too; formats report only their own layer.
 */
#include "config.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "blockdev/bitmap.h"
#include "blockdev/block.h"
#include "blockdev/driver.h"
#include "common/error.h"
#include "common/log.h"
#include "common/opts.h"

static GMutex graph_mutex;
static GHashTable *named_nodes;        /* node_name -> BlockNode*; graph lock */
static unsigned auto_name_counter;     /* graph lock */

/* Options every node accepts, whatever its driver. */
static const char *const generic_open_opts[] = {
    "driver", "node-name", "read-only", "auto-read-only", "cache",
    "discard", "force-share", "detect-zeroes", NULL,
};

void block_graph_lock(void)
{
    g_mutex_lock(&graph_mutex);
}

void block_graph_unlock(void)
{
    g_mutex_unlock(&graph_mutex);
}

/* -- specs ---------------------------------------------------------------- */

/*
 * "driver=qcow2,file.filename=x" is options; "disk.img" is a filename.  A
 * spec is taken as options only if its first key is an option name we know
 * can start a node spec, so filenames with '=' in them still work.
 */
static bool looks_like_opts(const char *spec)
{
    static const char *const starters[] = {
        "driver=", "file=", "file.", "filename=", "node-name=", "backing",
        "read-only=", NULL,
    };
    for (const char *const *s = starters; *s; s++) {
        if (g_str_has_prefix(spec, *s)) {
            return true;
        }
    }
    return false;
}

json_t *block_spec_to_opts(const char *spec, bool is_image_opts, GError **errp)
{
    json_t *opts;

    if (!spec || !*spec) {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "empty image name");
        return NULL;
    }
    if (g_str_has_prefix(spec, "json:")) {
        return ferry_opts_parse_json(spec + 5, errp);
    }
    if (is_image_opts || looks_like_opts(spec)) {
        return ferry_opts_parse(spec, NULL, errp);
    }
    opts = json_object();
    json_object_set_new(opts, "filename", json_string(spec));
    return opts;
}

/* -- permissions ---------------------------------------------------------- */

static const char *perm_name(uint32_t bit)
{
    switch (bit) {
    case BLOCK_PERM_CONSISTENT_READ: return "consistent read";
    case BLOCK_PERM_WRITE: return "write";
    case BLOCK_PERM_WRITE_UNCHANGED: return "write unchanged";
    case BLOCK_PERM_RESIZE: return "resize";
    default: return "unknown";
    }
}

void block_default_child_perm(BlockNode *bs, BlockChildRole role,
                              uint32_t perm, uint32_t shared,
                              uint32_t *nperm, uint32_t *nshared)
{
    bool writable = bs->open_flags & BLOCK_O_RDWR;

    if (role == BLOCK_CHILD_BACKING) {
        *nperm = perm & BLOCK_PERM_CONSISTENT_READ;
        *nshared = BLOCK_PERM_CONSISTENT_READ | BLOCK_PERM_WRITE_UNCHANGED;
        if (shared & BLOCK_PERM_WRITE) {
            /* users that cope with changing data cope with a changing base */
            *nshared |= BLOCK_PERM_WRITE | BLOCK_PERM_RESIZE;
        }
    } else if (role == BLOCK_CHILD_FILTERED) {
        block_filter_child_perm(bs, role, perm, shared, nperm, nshared);
        return;
    } else {
        *nperm = perm;
        if (writable) {
            /* metadata is written even when no user writes */
            *nperm |= BLOCK_PERM_WRITE | BLOCK_PERM_RESIZE;
        }
        if (!(bs->open_flags & BLOCK_O_NO_IO)) {
            *nperm |= BLOCK_PERM_CONSISTENT_READ;
        }
        *nshared = shared & ~(BLOCK_PERM_WRITE | BLOCK_PERM_RESIZE);
    }
    if (bs->open_flags & BLOCK_O_FORCE_SHARE) {
        *nshared = BLOCK_PERM_ALL;
    }
}

void block_filter_child_perm(BlockNode *bs, BlockChildRole role,
                             uint32_t perm, uint32_t shared,
                             uint32_t *nperm, uint32_t *nshared)
{
    *nperm = perm;
    *nshared = shared;
    if (bs->open_flags & BLOCK_O_FORCE_SHARE) {
        *nshared = BLOCK_PERM_ALL;
    }
}

static void child_perm(BlockNode *bs, BlockChild *c, uint32_t perm,
                       uint32_t shared, uint32_t *nperm, uint32_t *nshared)
{
    if (bs->drv->child_perm) {
        bs->drv->child_perm(bs, c->role, perm, shared, nperm, nshared);
    } else {
        block_default_child_perm(bs, c->role, perm, shared, nperm, nshared);
    }
    if (!(c->node->open_flags & BLOCK_O_RDWR)) {
        *nperm &= ~(BLOCK_PERM_WRITE | BLOCK_PERM_RESIZE);
    }
}

/* Graph lock held. */
static void recompute_perm_locked(BlockNode *bs, uint32_t *perm,
                                  uint32_t *shared)
{
    *perm = 0;
    *shared = BLOCK_PERM_ALL;
    for (guint i = 0; i < bs->users->len; i++) {
        BlockUser *u = bs->users->pdata[i];
        *perm |= u->perm;
        *shared &= u->shared;
    }
}

/* Graph lock held.  Check `perm/shared` against every user but `skip`. */
static bool check_conflicts_locked(BlockNode *bs, const char *what,
                                   uint32_t perm, uint32_t shared,
                                   BlockUser *skip, GError **errp)
{
    for (guint i = 0; i < bs->users->len; i++) {
        BlockUser *u = bs->users->pdata[i];
        uint32_t bad;
        if (u == skip) {
            continue;
        }
        bad = perm & ~u->shared;
        if (bad) {
            ferry_error_set(errp, FERRY_ERROR_LOCKED,
                            "node '%s': %s needs '%s' permission, but %s "
                            "does not share it", bs->node_name, what,
                            perm_name(bad & -bad), u->what);
            return false;
        }
        bad = u->perm & ~shared;
        if (bad) {
            ferry_error_set(errp, FERRY_ERROR_LOCKED,
                            "node '%s': %s does not share '%s' permission, "
                            "which %s holds", bs->node_name, what,
                            perm_name(bad & -bad), u->what);
            return false;
        }
    }
    return true;
}

static bool set_user_perm_locked(BlockNode *bs, BlockUser *user,
                                 uint32_t perm, uint32_t shared,
                                 GError **errp);

/*
 * Graph lock held.  Make bs's effective perm/shared the union of its
 * users', tell the driver (file: OFD locks) and push the consequences down
 * to its children.  On failure bs and its subtree are as they were.
 */
static bool apply_perm_locked(BlockNode *bs, GError **errp)
{
    uint32_t perm, shared, old_perm = bs->perm, old_shared = bs->shared;
    BlockChild *kids[3] = { bs->file, bs->data_file, bs->backing };
    int done = 0;

    recompute_perm_locked(bs, &perm, &shared);
    if (bs->users->len == 0 || (perm == bs->perm && shared == bs->shared)) {
        return true;
    }
    if (bs->drv->set_perm && !bs->drv->set_perm(bs, perm, shared, errp)) {
        return false;
    }
    bs->perm = perm;
    bs->shared = shared;
    for (; done < 3; done++) {
        uint32_t np, ns;
        if (!kids[done]) {
            continue;
        }
        child_perm(bs, kids[done], perm, shared, &np, &ns);
        if (!set_user_perm_locked(kids[done]->node, &kids[done]->user, np, ns,
                                  errp)) {
            goto rollback;
        }
    }
    return true;

rollback:
    for (int i = 0; i < done; i++) {
        uint32_t np, ns;
        if (kids[i]) {
            child_perm(bs, kids[i], old_perm, old_shared, &np, &ns);
            set_user_perm_locked(kids[i]->node, &kids[i]->user, np, ns, NULL);
        }
    }
    if (bs->drv->set_perm) {
        bs->drv->set_perm(bs, old_perm, old_shared, NULL);
    }
    bs->perm = old_perm;
    bs->shared = old_shared;
    return false;
}

static bool set_user_perm_locked(BlockNode *bs, BlockUser *user,
                                 uint32_t perm, uint32_t shared,
                                 GError **errp)
{
    uint32_t old_perm = user->perm, old_shared = user->shared;

    if (perm == old_perm && shared == old_shared) {
        return true;
    }
    if (!check_conflicts_locked(bs, user->what, perm, shared, user, errp)) {
        return false;
    }
    user->perm = perm;
    user->shared = shared;
    if (!apply_perm_locked(bs, errp)) {
        user->perm = old_perm;
        user->shared = old_shared;
        return false;
    }
    return true;
}

bool block_node_add_user(BlockNode *bs, BlockUser *user, GError **errp)
{
    bool ok;

    block_graph_lock();
    ok = check_conflicts_locked(bs, user->what, user->perm, user->shared,
                                NULL, errp);
    if (ok) {
        g_ptr_array_add(bs->users, user);
        ok = apply_perm_locked(bs, errp);
        if (!ok) {
            g_ptr_array_remove(bs->users, user);
        }
    }
    block_graph_unlock();
    return ok;
}

void block_node_remove_user(BlockNode *bs, BlockUser *user)
{
    block_graph_lock();
    if (g_ptr_array_remove(bs->users, user) && bs->users->len) {
        /* Dropping permissions cannot conflict; a lock error is harmless. */
        apply_perm_locked(bs, NULL);
    }
    block_graph_unlock();
}

bool block_node_update_user(BlockNode *bs, BlockUser *user, uint32_t perm,
                            uint32_t shared, GError **errp)
{
    bool ok;

    block_graph_lock();
    ok = set_user_perm_locked(bs, user, perm, shared, errp);
    block_graph_unlock();
    return ok;
}

/* -- nodes ---------------------------------------------------------------- */

static BlockNode *node_new(const BlockDriver *drv)
{
    BlockNode *bs = g_new0(BlockNode, 1);

    bs->drv = drv;
    bs->opaque = g_malloc0(MAX(drv->state_size, 1));
    bs->refcnt = 1;
    bs->request_alignment = 1;
    bs->users = g_ptr_array_new();
    g_mutex_init(&bs->drain_lock);
    g_cond_init(&bs->drain_cond);
    g_mutex_init(&bs->rmw_lock);
    g_mutex_init(&bs->bitmaps_lock);
    return bs;
}

static void node_free(BlockNode *bs)
{
    g_ptr_array_free(bs->users, TRUE);
    g_mutex_clear(&bs->drain_lock);
    g_cond_clear(&bs->drain_cond);
    g_mutex_clear(&bs->rmw_lock);
    g_mutex_clear(&bs->bitmaps_lock);
    json_decref(bs->options);
    g_free(bs->opaque);
    g_free(bs->node_name);
    g_free(bs->filename);
    g_free(bs->backing_file);
    g_free(bs->backing_format);
    g_free(bs);
}

static bool register_name(BlockNode *bs, const char *name, GError **errp)
{
    bool ok = true;

    block_graph_lock();
    if (!named_nodes) {
        named_nodes = g_hash_table_new(g_str_hash, g_str_equal);
    }
    if (name) {
        if (g_hash_table_contains(named_nodes, name)) {
            ferry_error_set(errp, FERRY_ERROR_INVALID,
                            "duplicate node name '%s'", name);
            ok = false;
        } else {
            bs->node_name = g_strdup(name);
        }
    } else {
        do {
            g_free(bs->node_name);
            bs->node_name = g_strdup_printf("#block%u", auto_name_counter++);
        } while (g_hash_table_contains(named_nodes, bs->node_name));
    }
    if (ok) {
        g_hash_table_insert(named_nodes, bs->node_name, bs);
    }
    block_graph_unlock();
    return ok;
}

static bool valid_node_name(const char *name)
{
    if (!g_ascii_isalpha(name[0]) || strlen(name) > 31) {
        return false;
    }
    for (const char *p = name; *p; p++) {
        if (!g_ascii_isalnum(*p) && *p != '-' && *p != '_' && *p != '.') {
            return false;
        }
    }
    return true;
}

BlockNode *block_node_find(const char *node_name)
{
    BlockNode *bs = NULL;

    block_graph_lock();
    if (named_nodes) {
        bs = g_hash_table_lookup(named_nodes, node_name);
    }
    block_graph_unlock();
    return bs;
}

GPtrArray *block_node_list(void)
{
    GPtrArray *list = g_ptr_array_new();
    GHashTableIter it;
    gpointer value;

    block_graph_lock();
    if (named_nodes) {
        g_hash_table_iter_init(&it, named_nodes);
        while (g_hash_table_iter_next(&it, NULL, &value)) {
            BlockNode *bs = value;
            bs->refcnt++;
            g_ptr_array_add(list, bs);
        }
    }
    block_graph_unlock();
    return list;
}

void block_node_ref(BlockNode *bs)
{
    block_graph_lock();
    bs->refcnt++;
    block_graph_unlock();
}

void block_node_unref(BlockNode *bs)
{
    bool last;

    if (!bs) {
        return;
    }
    block_graph_lock();
    last = --bs->refcnt == 0;
    if (last && bs->node_name && named_nodes) {
        g_hash_table_remove(named_nodes, bs->node_name);
    }
    block_graph_unlock();
    if (!last) {
        return;
    }
    block_node_drain_begin(bs);
    if (bs->drv->close) {
        bs->drv->close(bs);
    }
    block_dirty_bitmaps_release(bs);
    if (bs->backing) {
        block_node_detach_child(bs, bs->backing);
    }
    if (bs->data_file) {
        block_node_detach_child(bs, bs->data_file);
    }
    if (bs->file) {
        block_node_detach_child(bs, bs->file);
    }
    block_node_drain_end(bs);
    node_free(bs);
}

/* Take the options every node understands out of opts. */
static bool consume_generic_opts(json_t *opts, uint32_t *flags, GError **errp)
{
    bool ro, force_share, direct, no_flush;
    const char *discard;
    json_t *cache = json_object_get(opts, "cache");

    if (!ferry_opt_bool(opts, "read-only", !(*flags & BLOCK_O_RDWR), &ro, errp) ||
        !ferry_opt_bool(opts, "force-share", !!(*flags & BLOCK_O_FORCE_SHARE),
                        &force_share, errp) ||
        !ferry_opt_bool(cache, "direct", !!(*flags & BLOCK_O_NOCACHE), &direct,
                        errp) ||
        !ferry_opt_bool(cache, "no-flush", !!(*flags & BLOCK_O_NO_FLUSH),
                        &no_flush, errp)) {
        return false;
    }
    if (cache && !ferry_opts_check_known(cache, (const char *const[]){
                "direct", "no-flush", NULL }, "option 'cache'", errp)) {
        return false;
    }
    *flags = ro ? *flags & ~BLOCK_O_RDWR : *flags | BLOCK_O_RDWR;
    *flags = force_share ? *flags | BLOCK_O_FORCE_SHARE
                         : *flags & ~BLOCK_O_FORCE_SHARE;
    *flags = direct ? *flags | BLOCK_O_NOCACHE : *flags & ~BLOCK_O_NOCACHE;
    *flags = no_flush ? *flags | BLOCK_O_NO_FLUSH : *flags & ~BLOCK_O_NO_FLUSH;
    if (force_share && (*flags & BLOCK_O_RDWR)) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "force-share (-U) is only allowed read-only");
        return false;
    }
    discard = ferry_opt_str(opts, "discard");
    if (discard) {
        if (!strcmp(discard, "unmap") || !strcmp(discard, "on")) {
            *flags |= BLOCK_O_UNMAP;
        } else if (!strcmp(discard, "ignore") || !strcmp(discard, "off")) {
            *flags &= ~BLOCK_O_UNMAP;
        } else {
            ferry_error_set(errp, FERRY_ERROR_INVALID,
                            "discard must be 'unmap' or 'ignore', not '%s'",
                            discard);
            return false;
        }
    }
    return true;
}

static bool check_driver_opts(const BlockDriver *drv, json_t *opts,
                              GError **errp)
{
    const char *key;
    json_t *val;

    json_object_foreach(opts, key, val) {
        bool known = false;
        for (const char *const *k = generic_open_opts; *k && !known; k++) {
            known = !strcmp(*k, key);
        }
        for (const char *const *k = drv->open_opts; k && *k && !known; k++) {
            known = !strcmp(*k, key);
        }
        if (!known) {
            ferry_error_set(errp, FERRY_ERROR_INVALID,
                            "block %s '%s' does not support the option '%s'",
                            drv->kind == BLOCK_DRIVER_PROTOCOL ? "protocol"
                                                               : "format",
                            drv->name, key);
            return false;
        }
    }
    return true;
}

/*
 * Open exactly the driver named in opts (no probing).  opts is owned by
 * the new node on success.
 */
static BlockNode *open_with_driver(const BlockDriver *drv, json_t *opts,
                                   uint32_t flags, uint32_t perm,
                                   uint32_t shared, GError **errp)
{
    const char *name = ferry_opt_str(opts, "node-name");
    BlockNode *bs;

    if (name && !valid_node_name(name)) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "invalid node name '%s': it must start with a letter "
                        "and have at most 31 letters, digits, '-', '_', '.'",
                        name);
        return NULL;
    }
    if (!consume_generic_opts(opts, &flags, errp) ||
        !check_driver_opts(drv, opts, errp)) {
        return NULL;
    }
    if (!(flags & BLOCK_O_RDWR)) {
        perm &= ~(BLOCK_PERM_WRITE | BLOCK_PERM_RESIZE);
    }
    bs = node_new(drv);
    bs->open_flags = flags;
    bs->perm = perm;
    bs->shared = shared;
    bs->options = json_incref(opts);
    if (ferry_opt_str(opts, "filename")) {
        bs->filename = g_strdup(ferry_opt_str(opts, "filename"));
    }
    if (!register_name(bs, name, errp)) {
        node_free(bs);
        return NULL;
    }
    FERRY_TRACE_POINT(BLOCKDEV, "open node=%s driver=%s flags=0x%x",
                      bs->node_name, drv->name, flags);
    if (!drv->open(bs, opts, errp)) {
        /* Unregister, detach what open attached, free. */
        block_graph_lock();
        g_hash_table_remove(named_nodes, bs->node_name);
        block_graph_unlock();
        block_dirty_bitmaps_release(bs);
        if (bs->backing) {
            block_node_detach_child(bs, bs->backing);
        }
        if (bs->data_file) {
            block_node_detach_child(bs, bs->data_file);
        }
        if (bs->file) {
            block_node_detach_child(bs, bs->file);
        }
        node_free(bs);
        return NULL;
    }
    if (!bs->filename && bs->file && bs->file->node->filename) {
        bs->filename = g_strdup(bs->file->node->filename);
    }
    return bs;
}

BlockNode *block_node_open_opts(json_t *in_opts, uint32_t flags, uint32_t perm,
                                uint32_t shared, GError **errp)
{
    g_autoptr(json_t) opts = json_deep_copy(in_opts);
    const char *driver = ferry_opt_str(opts, "driver");
    /* A copy: "filename" is deleted from opts before the last use. */
    g_autofree char *filename = g_strdup(ferry_opt_str(opts, "filename"));
    const BlockDriver *drv, *proto;
    BlockNode *file, *bs;
    json_t *fopts;

    if (driver) {
        drv = block_driver_find(driver);
        if (!drv) {
            ferry_error_set(errp, FERRY_ERROR_INVALID,
                            "unknown driver '%s' (see 'ferry img --help' for "
                            "the formats ferry knows)", driver);
            return NULL;
        }
        /* A protocol URI under a format: "driver=raw,filename=nbd://…" */
        return open_with_driver(drv, opts, flags, perm, shared, errp);
    }
    if (!filename) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "a node needs a 'driver' or a 'filename'");
        return NULL;
    }

    /*
     * Filename only: open the protocol node, probe its format, and stack
     * the format node over it.  Options other than the generic ones belong
     * to the format node.
     */
    proto = block_driver_for_filename(filename);
    fopts = json_object();
    json_object_set_new(fopts, "driver", json_string(proto->name));
    json_object_set_new(fopts, "filename", json_string(filename));
    {
        uint32_t fflags = flags, fperm, fshared;
        json_t *v;
        if ((v = json_object_get(opts, "cache"))) {
            json_object_set(fopts, "cache", v);
        }
        if ((v = json_object_get(opts, "read-only"))) {
            json_object_set(fopts, "read-only", v);
        }
        if ((v = json_object_get(opts, "force-share"))) {
            json_object_set(fopts, "force-share", v);
        }
        if (!consume_generic_opts(opts, &fflags, errp)) {
            json_decref(fopts);
            return NULL;
        }
        /*
         * No locks yet: attaching it under the format node applies the
         * permissions that node's users really need.
         */
        fflags |= BLOCK_O_UNMAP;
        fperm = 0;
        fshared = BLOCK_PERM_ALL;
        file = open_with_driver(proto, fopts, fflags, fperm, fshared, errp);
    }
    json_decref(fopts);
    if (!file) {
        return NULL;
    }
    drv = block_driver_probe(file, errp);
    if (!drv) {
        block_node_unref(file);
        return NULL;
    }
    if (!strcmp(drv->name, "raw")) {
        flags |= BLOCK_O_PROBED;
    }
    json_object_set_new(opts, "driver", json_string(drv->name));
    json_object_set_new(opts, "file", json_string(file->node_name));
    json_object_del(opts, "filename");
    bs = open_with_driver(drv, opts, flags, perm, shared, errp);
    if (bs) {
        g_free(bs->filename);
        bs->filename = g_strdup(filename);
        /* The probed format is what the user would have typed. */
        json_object_set_new(bs->options, "file", json_deep_copy(file->options));
        json_object_set_new(bs->options, "driver", json_string(drv->name));
    } else if (g_error_matches(errp ? *errp : NULL, FERRY_ERROR, FERRY_ERROR_INVALID) &&
               strstr((*errp)->message, "does not support the option")) {
        g_prefix_error(errp, "'%s' probed as %s: ", filename, drv->name);
    }
    block_node_unref(file);    /* the format node holds its own reference */
    return bs;
}

BlockNode *block_node_open(const char *spec, const char *fmt, json_t *extra,
                           uint32_t flags, uint32_t perm, uint32_t shared,
                           GError **errp)
{
    g_autoptr(json_t) opts = block_spec_to_opts(spec, false, errp);

    if (!opts) {
        return NULL;
    }
    if (extra) {
        ferry_opts_merge(opts, extra);
    }
    if (fmt && !json_object_get(opts, "driver")) {
        json_object_set_new(opts, "driver", json_string(fmt));
    }
    return block_node_open_opts(opts, flags, perm, shared, errp);
}

/* -- children ------------------------------------------------------------- */

/* A parent's requests reach the child only inside its own: drain the parent. */
static void child_edge_quiesce(BlockUser *u, bool begin)
{
    BlockChild *c = (BlockChild *)((char *)u - offsetof(BlockChild, user));

    if (begin) {
        block_node_drain_begin(c->parent);
    } else {
        block_node_drain_end(c->parent);
    }
}

BlockChild *block_node_attach_child(BlockNode *parent, BlockNode *child,
                                    const char *name, BlockChildRole role,
                                    GError **errp)
{
    BlockChild *c = g_new0(BlockChild, 1);

    c->name = g_strdup(name);
    c->role = role;
    c->parent = parent;
    c->node = child;
    c->user.what = g_strdup_printf("node '%s' (as its %s)", parent->node_name,
                                   name);
    c->user.slot = &c->node;
    c->user.quiesce = child_edge_quiesce;
    child_perm(parent, c, parent->perm, parent->shared, &c->user.perm,
               &c->user.shared);
    if (!block_node_add_user(child, &c->user, errp)) {
        g_free(c->user.what);
        g_free(c->name);
        g_free(c);
        return NULL;
    }
    block_node_ref(child);
    switch (role) {
    case BLOCK_CHILD_BACKING:
        parent->backing = c;
        break;
    case BLOCK_CHILD_DATA_FILE:
        parent->data_file = c;
        break;
    default:
        parent->file = c;
        break;
    }
    return c;
}

void block_node_detach_child(BlockNode *parent, BlockChild *c)
{
    if (parent->backing == c) {
        parent->backing = NULL;
    } else if (parent->data_file == c) {
        parent->data_file = NULL;
    } else if (parent->file == c) {
        parent->file = NULL;
    }
    block_node_remove_user(c->node, &c->user);
    block_node_unref(c->node);
    g_free(c->user.what);
    g_free(c->name);
    g_free(c);
}

/*
 * The files of the backing chain being opened by this thread, top first:
 * a backing file already on it is a loop (a.qcow2 -> b.qcow2 -> a.qcow2).
 */
#define BLOCK_MAX_CHAIN_DEPTH 1000
static __thread GPtrArray *opening_chain;

/* A name that is the same for every spelling of one local file. */
static char *chain_key(const char *filename)
{
    char *real = filename ? realpath(filename, NULL) : NULL;
    char *key = g_strdup(real ? real : filename ? filename : "");

    free(real);
    return key;
}

static bool chain_push(BlockNode *parent, json_t *copts, GError **errp)
{
    BlockNode *bottom = block_node_bottom(parent);
    const char *next = ferry_opt_str(copts, "filename");
    json_t *file = json_object_get(copts, "file");
    g_autofree char *next_key = NULL;

    if (!next && json_is_object(file)) {
        next = ferry_opt_str(file, "filename");
    }
    if (!opening_chain) {
        opening_chain = g_ptr_array_new_with_free_func(g_free);
    }
    if (opening_chain->len == 0 || bottom != parent) {
        g_ptr_array_add(opening_chain, chain_key(bottom->filename));
    } else {
        g_ptr_array_add(opening_chain, chain_key(parent->filename));
    }
    if (opening_chain->len > BLOCK_MAX_CHAIN_DEPTH) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "backing chain of '%s' is deeper than %d images",
                        (char *)opening_chain->pdata[0], BLOCK_MAX_CHAIN_DEPTH);
        return false;
    }
    if (!next) {
        return true;
    }
    next_key = chain_key(next);
    for (guint i = 0; i < opening_chain->len; i++) {
        if (!strcmp(opening_chain->pdata[i], next_key)) {
            ferry_error_set(errp, FERRY_ERROR_CORRUPT,
                            "backing file '%s' of '%s' makes a loop in the "
                            "backing chain", next,
                            (char *)opening_chain->pdata[opening_chain->len - 1]);
            return false;
        }
    }
    return true;
}

static void chain_pop(void)
{
    g_ptr_array_remove_index(opening_chain, opening_chain->len - 1);
    if (opening_chain->len == 0) {
        g_ptr_array_free(opening_chain, TRUE);
        opening_chain = NULL;
    }
}

BlockChild *block_node_open_child(BlockNode *parent, json_t *options,
                                  const char *name, BlockChildRole role,
                                  const char *def_filename,
                                  const char *def_format, GError **errp)
{
    json_t *val = json_object_get(options, name);
    g_autoptr(json_t) copts = NULL;
    uint32_t flags = parent->open_flags & ~(BLOCK_O_PROBED | BLOCK_O_CHECK);
    uint32_t perm, shared;
    BlockNode *child = NULL;
    BlockChild *c;

    if (role == BLOCK_CHILD_BACKING) {
        /* Backing files are read-only unless a job reopens them. */
        flags &= ~BLOCK_O_RDWR;
    }
    if (role == BLOCK_CHILD_FILE || role == BLOCK_CHILD_DATA_FILE) {
        /* As QEMU: a format decides what it discards (qcow2's pass-discard-*
         * options); the layer below it carries that out. */
        flags |= BLOCK_O_UNMAP;
    }
    if (val && json_is_null(val)) {
        return NULL;
    }
    if (json_is_string(val)) {
        child = block_node_find(json_string_value(val));
        if (child) {
            return block_node_attach_child(parent, child, name, role, errp);
        }
        copts = json_object();
        json_object_set(copts, "filename", val);
    } else if (json_is_object(val)) {
        copts = json_deep_copy(val);
    } else if (val) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "option '%s' must be a node name or an object", name);
        return NULL;
    } else if (def_filename) {
        copts = json_object();
        json_object_set_new(copts, "filename", json_string(def_filename));
        if (def_format) {
            json_object_set_new(copts, "driver", json_string(def_format));
        }
    } else {
        return NULL;
    }

    /* A format's file is a protocol node: never probe it. */
    if (role != BLOCK_CHILD_BACKING) {
        /* Protocol nodes under a format pass discards through. */
        flags |= BLOCK_O_UNMAP;
    }
    if (role != BLOCK_CHILD_BACKING && !json_object_get(copts, "driver") &&
        ferry_opt_str(copts, "filename")) {
        const BlockDriver *proto =
            block_driver_for_filename(ferry_opt_str(copts, "filename"));
        json_object_set_new(copts, "driver", json_string(proto->name));
    }
    /* Open unlocked; attaching applies what the parent needs. */
    perm = 0;
    shared = BLOCK_PERM_ALL;
    if (role == BLOCK_CHILD_BACKING) {
        if (!chain_push(parent, copts, errp)) {
            chain_pop();
            return NULL;
        }
        child = block_node_open_opts(copts, flags, perm, shared, errp);
        chain_pop();
    } else {
        child = block_node_open_opts(copts, flags, perm, shared, errp);
    }
    if (!child) {
        return NULL;
    }
    c = block_node_attach_child(parent, child, name, role, errp);
    block_node_unref(child);
    return c;
}

bool block_node_set_backing(BlockNode *bs, BlockNode *backing, GError **errp)
{
    if (bs->backing) {
        block_node_detach_child(bs, bs->backing);
    }
    if (backing &&
        !block_node_attach_child(bs, backing, "backing", BLOCK_CHILD_BACKING,
                                 errp)) {
        return false;
    }
    return true;
}

bool block_node_reopen(BlockNode *bs, uint32_t new_flags, GError **errp)
{
    uint32_t old_flags = bs->open_flags;
    bool rw_change = (old_flags ^ new_flags) & BLOCK_O_RDWR;
    BlockChild *kids[2] = { bs->file, bs->data_file };
    bool ok = true;

    if (new_flags == old_flags) {
        return true;
    }
    if ((new_flags & BLOCK_O_RDWR) && (old_flags & BLOCK_O_FORCE_SHARE)) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "node '%s' was opened with force-share and cannot "
                        "become writable", bs->node_name);
        return false;
    }
    if (!(new_flags & BLOCK_O_RDWR) && (old_flags & BLOCK_O_RDWR)) {
        /* before the drain: a flush is a request and would wait for it */
        block_node_flush(bs);
    }
    block_node_drain_begin(bs);
    for (int i = 0; i < 2 && ok; i++) {
        if (kids[i] && rw_change) {
            uint32_t cf = (kids[i]->node->open_flags & ~BLOCK_O_RDWR) |
                          (new_flags & BLOCK_O_RDWR);
            ok = block_node_reopen(kids[i]->node, cf, errp);
        }
    }
    if (ok && bs->drv->reopen) {
        ok = bs->drv->reopen(bs, new_flags, errp);
    }
    if (ok) {
        bs->open_flags = new_flags;
        for (int i = 0; i < 2 && ok; i++) {
            uint32_t perm, shared;
            if (!kids[i]) {
                continue;
            }
            child_perm(bs, kids[i], bs->perm, bs->shared, &perm, &shared);
            ok = block_node_update_user(kids[i]->node, &kids[i]->user, perm,
                                        shared, errp);
        }
    }
    block_node_drain_end(bs);
    if (!ok) {
        g_prefix_error(errp, "cannot reopen node '%s' %s: ", bs->node_name,
                       new_flags & BLOCK_O_RDWR ? "read-write" : "read-only");
    }
    return ok;
}

int block_node_read_uncached_if_cold(BlockNode *bs)
{
    BlockChild *kids[3] = { bs->file, bs->backing, bs->data_file };
    int n = 0;

    for (int i = 0; i < 3; i++) {
        if (kids[i]) {
            n += block_node_read_uncached_if_cold(kids[i]->node);
        }
    }
    if (!(bs->open_flags & (BLOCK_O_RDWR | BLOCK_O_NOCACHE)) &&
        bs->drv->read_uncached_if_cold) {
        block_node_drain_begin(bs);
        if (bs->drv->read_uncached_if_cold(bs)) {
            bs->open_flags |= BLOCK_O_NOCACHE;
            n++;
        }
        block_node_drain_end(bs);
    }
    return n;
}

/* -- replacing a node under its users (mirror, active commit) ------------- */

static bool is_edge_of(BlockUser *u, BlockNode *parent)
{
    return u->quiesce == child_edge_quiesce &&
           ((BlockChild *)((char *)u - offsetof(BlockChild, user)))->parent ==
           parent;
}

/* The users of bs but skip, snapshotted under the graph lock. */
static GPtrArray *users_except(BlockNode *bs, BlockUser *skip)
{
    GPtrArray *list = g_ptr_array_new();

    block_graph_lock();
    for (guint i = 0; i < bs->users->len; i++) {
        if (bs->users->pdata[i] != skip) {
            g_ptr_array_add(list, bs->users->pdata[i]);
        }
    }
    block_graph_unlock();
    return list;
}

GPtrArray *block_node_quiesce_users(BlockNode *bs, BlockUser *skip)
{
    GPtrArray *list = users_except(bs, skip);

    for (guint i = 0; i < list->len; i++) {
        BlockUser *u = list->pdata[i];
        if (u->quiesce) {
            u->quiesce(u, true);
        }
    }
    return list;
}

void block_users_unquiesce(GPtrArray *held)
{
    for (guint i = held->len; i-- > 0;) {
        BlockUser *u = held->pdata[i];
        if (u->quiesce) {
            u->quiesce(u, false);
        }
    }
    g_ptr_array_free(held, TRUE);
}

bool block_node_replace(BlockNode *from, BlockNode *to, BlockUser *skip,
                        GError **errp)
{
    g_autoptr(GPtrArray) moving = g_ptr_array_new();
    bool ok = true;

    block_graph_lock();
    for (guint i = 0; i < from->users->len; i++) {
        BlockUser *u = from->users->pdata[i];
        if (u == skip || is_edge_of(u, to)) {
            continue;
        }
        if (!u->slot) {
            ferry_error_set(errp, FERRY_ERROR_LOCKED,
                            "node '%s': %s cannot be moved to node '%s'",
                            from->node_name, u->what, to->node_name);
            ok = false;
            break;
        }
        if (!check_conflicts_locked(to, u->what, u->perm, u->shared, NULL,
                                    errp)) {
            ok = false;
            break;
        }
        g_ptr_array_add(moving, u);
    }
    if (ok) {
        for (guint i = 0; i < moving->len; i++) {
            g_ptr_array_add(to->users, moving->pdata[i]);
        }
        ok = apply_perm_locked(to, errp);
        if (!ok) {
            for (guint i = 0; i < moving->len; i++) {
                g_ptr_array_remove(to->users, moving->pdata[i]);
            }
        }
    }
    if (ok) {
        for (guint i = 0; i < moving->len; i++) {
            BlockUser *u = moving->pdata[i];
            g_ptr_array_remove(from->users, u);
            *u->slot = to;
            to->refcnt++;
            from->refcnt--;    /* the caller holds a reference of its own */
        }
        if (from->users->len) {
            apply_perm_locked(from, NULL);
        }
    }
    block_graph_unlock();
    return ok;
}

void block_node_set_write_hook(BlockNode *bs, BlockWriteHook *hook)
{
    block_node_drain_begin(bs);
    bs->write_hook = hook;
    block_node_drain_end(bs);
}

/* -- drain ---------------------------------------------------------------- */

/*
 * The nodes this thread is inside a request of.  A request that re-enters
 * the same node (a write hook reading the node it guards) is part of the
 * outer request, which a drain already waits for: it must not wait itself.
 */
#define REQ_STACK_MAX 8
static __thread BlockNode *req_stack[REQ_STACK_MAX];
static __thread int req_stack_len;

static inline bool req_reentered_below(BlockNode *bs)
{
    for (int i = 0; i < req_stack_len - 1 && i < REQ_STACK_MAX; i++) {
        if (req_stack[i] == bs) {
            return true;
        }
    }
    return false;
}

static inline void req_enter(BlockNode *bs)
{
    if (req_stack_len < REQ_STACK_MAX) {
        req_stack[req_stack_len] = bs;
    }
    if (req_stack_len++ > 0 && req_reentered_below(bs)) {
        __atomic_add_fetch(&bs->in_flight, 1, __ATOMIC_SEQ_CST);
        return;
    }
    for (;;) {
        __atomic_add_fetch(&bs->in_flight, 1, __ATOMIC_SEQ_CST);
        if (G_LIKELY(!__atomic_load_n(&bs->quiesce_counter, __ATOMIC_SEQ_CST))) {
            return;
        }
        /* Draining: step back out and wait until it ends. */
        g_mutex_lock(&bs->drain_lock);
        if (__atomic_sub_fetch(&bs->in_flight, 1, __ATOMIC_SEQ_CST) == 0) {
            g_cond_broadcast(&bs->drain_cond);
        }
        while (__atomic_load_n(&bs->quiesce_counter, __ATOMIC_SEQ_CST)) {
            g_cond_wait(&bs->drain_cond, &bs->drain_lock);
        }
        g_mutex_unlock(&bs->drain_lock);
    }
}

static inline void req_exit(BlockNode *bs)
{
    req_stack_len--;
    if (__atomic_sub_fetch(&bs->in_flight, 1, __ATOMIC_SEQ_CST) == 0 &&
        __atomic_load_n(&bs->quiesce_counter, __ATOMIC_SEQ_CST)) {
        g_mutex_lock(&bs->drain_lock);
        g_cond_broadcast(&bs->drain_cond);
        g_mutex_unlock(&bs->drain_lock);
    }
}

void block_node_drain_begin(BlockNode *bs)
{
    g_mutex_lock(&bs->drain_lock);
    __atomic_add_fetch(&bs->quiesce_counter, 1, __ATOMIC_SEQ_CST);
    while (__atomic_load_n(&bs->in_flight, __ATOMIC_SEQ_CST) > 0) {
        g_cond_wait(&bs->drain_cond, &bs->drain_lock);
    }
    g_mutex_unlock(&bs->drain_lock);
}

void block_node_drain_end(BlockNode *bs)
{
    g_mutex_lock(&bs->drain_lock);
    if (__atomic_sub_fetch(&bs->quiesce_counter, 1, __ATOMIC_SEQ_CST) == 0) {
        g_cond_broadcast(&bs->drain_cond);
    }
    g_mutex_unlock(&bs->drain_lock);
}

/* -- data path ------------------------------------------------------------ */

static int check_request(BlockNode *bs, int64_t offset, int64_t bytes,
                         bool write)
{
    if (offset < 0 || bytes < 0 || bytes > INT64_MAX - offset) {
        return -EINVAL;
    }
    if (write && !(bs->open_flags & BLOCK_O_RDWR)) {
        return -EPERM;
    }
    if (bs->drv->kind != BLOCK_DRIVER_PROTOCOL) {
        int64_t len = bs->drv->getlength(bs);
        if (len < 0) {
            return (int)len;
        }
        if (offset > len || bytes > len - offset) {
            return -EIO;
        }
    }
    return 0;
}

static bool is_aligned(BlockNode *bs, int64_t offset, int64_t bytes,
                       const void *buf)
{
    uint32_t a = bs->request_alignment;

    return a <= 1 || !((offset | bytes | (int64_t)(uintptr_t)buf) & (a - 1));
}

/* Read through an aligned bounce buffer (O_DIRECT with odd requests). */
static int bounce_read(BlockNode *bs, int64_t offset, int64_t bytes, void *buf,
                       uint32_t flags)
{
    uint32_t a = bs->request_alignment;
    int64_t start = offset & ~(int64_t)(a - 1);
    int64_t end = (offset + bytes + a - 1) & ~(int64_t)(a - 1);
    void *bounce = NULL;
    int ret;

    if (posix_memalign(&bounce, MAX(a, 4096), end - start)) {
        return -ENOMEM;
    }
    ret = bs->drv->pread(bs, start, end - start, bounce, flags);
    if (ret == 0) {
        memcpy(buf, (char *)bounce + (offset - start), bytes);
    }
    free(bounce);
    return ret;
}

static int bounce_write(BlockNode *bs, int64_t offset, int64_t bytes,
                        const void *buf, uint32_t flags)
{
    uint32_t a = bs->request_alignment;
    int64_t start = offset & ~(int64_t)(a - 1);
    int64_t end = (offset + bytes + a - 1) & ~(int64_t)(a - 1);
    void *bounce = NULL;
    int ret = 0;

    if (posix_memalign(&bounce, MAX(a, 4096), end - start)) {
        return -ENOMEM;
    }
    g_mutex_lock(&bs->rmw_lock);
    if (start != offset || end != offset + bytes) {
        /* Head and tail are read back; the whole span is rewritten. */
        ret = bs->drv->pread(bs, start, end - start, bounce, 0);
    }
    if (ret == 0) {
        memcpy((char *)bounce + (offset - start), buf, bytes);
        ret = bs->drv->pwrite(bs, start, end - start, bounce, flags);
    }
    g_mutex_unlock(&bs->rmw_lock);
    free(bounce);
    return ret;
}

int block_node_pread(BlockNode *bs, int64_t offset, int64_t bytes, void *buf,
                     uint32_t flags)
{
    int ret = check_request(bs, offset, bytes, false);

    if (ret < 0 || bytes == 0) {
        return ret;
    }
    req_enter(bs);
    while (bytes > 0 && ret == 0) {
        int64_t n = MIN(bytes, BLOCK_MAX_REQUEST);
        if (is_aligned(bs, offset, n, buf)) {
            ret = bs->drv->pread(bs, offset, n, buf, flags);
        } else {
            ret = bounce_read(bs, offset, n, buf, flags);
        }
        offset += n;
        bytes -= n;
        buf = (char *)buf + n;
    }
    req_exit(bs);
    return ret;
}

int block_node_splice_read(BlockNode *bs, int64_t offset, int64_t bytes,
                           int pipe_wr, const void *prefix,
                           size_t prefix_len)
{
    int64_t pnum = 0, map = 0;
    BlockNode *file = NULL, *n;
    int fd, st, ret = check_request(bs, offset, bytes, false);

    if (ret < 0 || bytes == 0) {
        return ret;
    }
    req_enter(bs);
    ret = -ENOTSUP;
    /*
     * Every layer down to the host file must keep its mapping while the
     * node is open.  Checked first: it costs a few pointer loads, so a
     * format like qcow2 is turned away before the block status lookup its
     * read would then do again.
     */
    for (n = bs; !n->drv->host_fd; n = n->file->node) {
        if (!(n->drv->caps & BLOCK_CAP_STABLE_MAP) || !n->file ||
            n->backing || n->data_file) {
            goto out;
        }
    }
    if (!(n->drv->caps & BLOCK_CAP_STABLE_MAP)) {
        goto out;
    }
    st = block_node_block_status(bs, offset, bytes, &pnum, &map, &file);
    if (st < 0 || pnum != bytes || file != n ||
        (st & (BLOCK_STATUS_ZERO | BLOCK_STATUS_COMPRESSED)) ||
        (st & (BLOCK_STATUS_DATA | BLOCK_STATUS_OFFSET_VALID)) !=
            (BLOCK_STATUS_DATA | BLOCK_STATUS_OFFSET_VALID) ||
        (fd = file->drv->host_fd(file)) < 0) {
        goto out;
    }
    req_enter(file);
    ret = 0;
    while (prefix_len > 0) {
        ssize_t done = write(pipe_wr, prefix, prefix_len);
        if (done < 0 && errno == EINTR) {
            continue;
        }
        if (done <= 0) {
            ret = done == 0 ? -EIO : -errno;
            bytes = 0;
            break;
        }
        prefix = (const char *)prefix + done;
        prefix_len -= (size_t)done;
    }
    while (bytes > 0) {
        loff_t off = map;
        ssize_t done = splice(fd, &off, pipe_wr, NULL, (size_t)bytes,
                              SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (done < 0 && errno == EINTR) {
            continue;
        }
        if (done <= 0) {
            /* 0: the file ended early; EAGAIN: the pipe is full */
            ret = done == 0 ? -EIO : -errno;
            break;
        }
        map += done;
        bytes -= done;
    }
    req_exit(file);
out:
    req_exit(bs);
    return ret;
}

int block_node_pwrite(BlockNode *bs, int64_t offset, int64_t bytes,
                      const void *buf, uint32_t flags)
{
    int ret = check_request(bs, offset, bytes, true);
    int64_t start = offset, total = bytes;
    const void *data = buf;
    BlockWriteHook *hook;
    void *token = NULL;

    if (ret < 0 || bytes == 0) {
        return ret;
    }
    req_enter(bs);
    hook = (flags & BLOCK_REQ_JOB) ? NULL : bs->write_hook;
    if (hook && (ret = hook->begin(hook, bs, offset, bytes, &token)) < 0) {
        req_exit(bs);
        return ret;
    }
    while (bytes > 0 && ret == 0) {
        int64_t n = MIN(bytes, BLOCK_MAX_REQUEST);
        if (is_aligned(bs, offset, n, buf)) {
            ret = bs->drv->pwrite(bs, offset, n, buf, flags);
        } else {
            ret = bounce_write(bs, offset, n, buf, flags);
        }
        offset += n;
        bytes -= n;
        buf = (const char *)buf + n;
    }
    if (ret == 0 && bs->bitmaps && !(flags & BLOCK_REQ_NO_BITMAPS)) {
        block_dirty_bitmaps_mark(bs, start, total);
    }
    if (ret == 0 && (flags & BLOCK_REQ_FUA) && !(bs->drv->caps & BLOCK_CAP_FUA)) {
        ret = block_node_flush(bs);
    }
    if (hook && hook->written) {
        hook->written(hook, token, data, ret);
    }
    if (hook) {
        hook->end(hook, token);
    }
    req_exit(bs);
    FERRY_TRACE_POINT(BLOCKDEV, "pwrite node=%s off=0x%" G_GINT64_MODIFIER
                      "x len=0x%" G_GINT64_MODIFIER "x ret=%d", bs->node_name,
                      start, total, ret);
    return ret;
}

/* Fallback for drivers without pwrite_zeroes: write zeroed buffers. */
static int write_zero_buffers(BlockNode *bs, int64_t offset, int64_t bytes,
                              uint32_t flags)
{
    const int64_t chunk = 1 << 20;
    void *zero = NULL;
    int ret = 0;

    if (flags & BLOCK_REQ_NO_FALLBACK) {
        return -ENOTSUP;
    }
    if (posix_memalign(&zero, 4096, MIN(chunk, bytes))) {
        return -ENOMEM;
    }
    memset(zero, 0, MIN(chunk, bytes));
    while (bytes > 0 && ret == 0) {
        int64_t n = MIN(bytes, chunk);
        if (is_aligned(bs, offset, n, zero)) {
            ret = bs->drv->pwrite(bs, offset, n, zero, flags & BLOCK_REQ_FUA);
        } else {
            ret = bounce_write(bs, offset, n, zero, flags & BLOCK_REQ_FUA);
        }
        offset += n;
        bytes -= n;
    }
    free(zero);
    return ret;
}

int block_node_pwrite_zeroes(BlockNode *bs, int64_t offset, int64_t bytes,
                             uint32_t flags)
{
    int ret = check_request(bs, offset, bytes, true);
    BlockWriteHook *hook;
    void *token = NULL;

    if (ret < 0 || bytes == 0) {
        return ret;
    }
    if (!(bs->open_flags & BLOCK_O_UNMAP)) {
        flags &= ~BLOCK_REQ_MAY_UNMAP;
    }
    req_enter(bs);
    hook = (flags & BLOCK_REQ_JOB) ? NULL : bs->write_hook;
    if (hook && (ret = hook->begin(hook, bs, offset, bytes, &token)) < 0) {
        req_exit(bs);
        return ret;
    }
    if (bs->drv->pwrite_zeroes) {
        ret = bs->drv->pwrite_zeroes(bs, offset, bytes, flags);
        if (ret == -ENOTSUP && !(flags & BLOCK_REQ_NO_FALLBACK)) {
            ret = write_zero_buffers(bs, offset, bytes, flags);
        }
    } else {
        ret = write_zero_buffers(bs, offset, bytes, flags);
    }
    if (ret == 0 && bs->bitmaps && !(flags & BLOCK_REQ_NO_BITMAPS)) {
        block_dirty_bitmaps_mark(bs, offset, bytes);
    }
    if (ret == 0 && (flags & BLOCK_REQ_FUA) && !(bs->drv->caps & BLOCK_CAP_FUA)) {
        ret = block_node_flush(bs);
    }
    if (hook) {
        hook->end(hook, token);
    }
    req_exit(bs);
    return ret;
}

int block_node_pdiscard(BlockNode *bs, int64_t offset, int64_t bytes)
{
    int ret = check_request(bs, offset, bytes, true);
    BlockWriteHook *hook;
    void *token = NULL;

    if (ret < 0 || bytes == 0) {
        return ret;
    }
    /* discard=ignore (the default for formats): discards are dropped. */
    if (!bs->drv->pdiscard || !(bs->open_flags & BLOCK_O_UNMAP)) {
        return 0;
    }
    req_enter(bs);
    hook = bs->write_hook;
    if (hook && (ret = hook->begin(hook, bs, offset, bytes, &token)) < 0) {
        req_exit(bs);
        return ret;
    }
    ret = bs->drv->pdiscard(bs, offset, bytes);
    if (ret == -ENOTSUP) {
        ret = 0;    /* discard is advisory */
    }
    if (ret == 0 && bs->bitmaps) {
        block_dirty_bitmaps_mark(bs, offset, bytes);
    }
    if (hook) {
        hook->end(hook, token);
    }
    req_exit(bs);
    return ret;
}

int block_node_flush(BlockNode *bs)
{
    int ret = 0;

    if (bs->drv->flush) {
        req_enter(bs);
        ret = bs->drv->flush(bs);
        req_exit(bs);
    }
    if (ret == 0 && bs->file && (bs->file->node->open_flags & BLOCK_O_RDWR)) {
        ret = block_node_flush(bs->file->node);
    }
    if (ret == 0 && bs->data_file &&
        (bs->data_file->node->open_flags & BLOCK_O_RDWR)) {
        ret = block_node_flush(bs->data_file->node);
    }
    return ret;
}

int64_t block_node_getlength(BlockNode *bs)
{
    return bs->drv->getlength(bs);
}

int64_t block_node_allocated_size(BlockNode *bs)
{
    int64_t total = 0;
    BlockChild *kids[2] = { bs->file, bs->data_file };

    if (bs->drv->allocated_size) {
        return bs->drv->allocated_size(bs);
    }
    for (int i = 0; i < 2; i++) {
        if (kids[i]) {
            int64_t n = block_node_allocated_size(kids[i]->node);
            if (n < 0) {
                return n;
            }
            total += n;
        }
    }
    return total;
}

/* -- block status --------------------------------------------------------- */

int block_node_block_status(BlockNode *bs, int64_t offset, int64_t bytes,
                            int64_t *pnum, int64_t *map, BlockNode **file)
{
    int64_t len = block_node_getlength(bs);
    int64_t local_map = 0;
    BlockNode *local_file = NULL;
    int ret;

    if (len < 0) {
        return (int)len;
    }
    if (offset < 0 || bytes < 0) {
        return -EINVAL;
    }
    if (offset >= len || bytes == 0) {
        *pnum = 0;
        return BLOCK_STATUS_EOF;
    }
    bytes = MIN(bytes, len - offset);
    req_enter(bs);
    if (bs->drv->block_status) {
        ret = bs->drv->block_status(bs, offset, bytes, pnum, &local_map,
                                    &local_file);
    } else if (bs->drv->kind == BLOCK_DRIVER_PROTOCOL || !bs->file) {
        *pnum = bytes;
        local_map = offset;
        local_file = bs;
        ret = BLOCK_STATUS_DATA | BLOCK_STATUS_ALLOCATED |
              BLOCK_STATUS_OFFSET_VALID;
    } else {
        *pnum = bytes;
        local_map = offset;
        local_file = bs->file->node;
        ret = BLOCK_STATUS_RAW | BLOCK_STATUS_OFFSET_VALID;
    }
    req_exit(bs);
    if (ret < 0) {
        return ret;
    }
    assert(*pnum > 0 && *pnum <= bytes);

    if (ret & BLOCK_STATUS_RAW) {
        /* A pass-through layer: the answer is the child's, at local_map. */
        int64_t n = *pnum;
        ret = block_node_block_status(local_file, local_map, n, pnum,
                                      &local_map, &local_file);
        if (ret < 0) {
            return ret;
        }
        if (*pnum == 0) {
            /* Past the end of the child: reads as zeroes. */
            *pnum = n;
            ret = BLOCK_STATUS_ZERO;
        }
        ret = (ret & ~BLOCK_STATUS_EOF) | BLOCK_STATUS_ALLOCATED;
    } else if ((ret & BLOCK_STATUS_DATA) && !(ret & BLOCK_STATUS_ZERO) &&
               (ret & BLOCK_STATUS_OFFSET_VALID) && local_file && local_file != bs) {
        /* Data mapped to a host range: a hole there reads as zeroes. */
        int64_t n;
        int fret = block_node_block_status(local_file, local_map, *pnum, &n,
                                           NULL, NULL);
        if (fret >= 0 && n > 0 && (fret & BLOCK_STATUS_ZERO)) {
            ret |= BLOCK_STATUS_ZERO;
            *pnum = n;
        } else if (fret >= 0 && (fret & BLOCK_STATUS_EOF) && n == 0) {
            ret |= BLOCK_STATUS_ZERO;   /* mapped past the end of the file */
        }
    }
    if (!(ret & BLOCK_STATUS_ALLOCATED) && (bs->drv->caps & BLOCK_CAP_BACKING)) {
        BlockNode *backing = bs->backing ? bs->backing->node : NULL;
        int64_t blen = backing ? block_node_getlength(backing) : 0;
        if (blen >= 0 && offset >= blen) {
            ret |= BLOCK_STATUS_ZERO;
        } else if (blen >= 0 && offset + *pnum > blen) {
            *pnum = blen - offset;    /* the part still over the backing */
        }
    }
    if (offset + *pnum == len) {
        ret |= BLOCK_STATUS_EOF;
    }
    if (map) {
        *map = local_map;
    }
    if (file) {
        *file = local_file;
    }
    return ret;
}

int block_node_block_status_above(BlockNode *bs, BlockNode *base,
                                  int64_t offset, int64_t bytes,
                                  int64_t *pnum, int64_t *map,
                                  BlockNode **file, int *depth)
{
    BlockNode *cur = bs;
    int64_t top_len = block_node_getlength(bs);
    int d = 0;
    int ret;

    if (top_len < 0) {
        return (int)top_len;
    }
    if (offset >= top_len) {
        *pnum = 0;
        return BLOCK_STATUS_EOF;
    }
    bytes = MIN(bytes, top_len - offset);
    for (;;) {
        int64_t n;
        BlockNode *below;
        ret = block_node_block_status(cur, offset, bytes, &n, map, file);
        if (ret < 0) {
            return ret;
        }
        if (n == 0) {
            /* This layer is shorter than the top: reads as zeroes here. */
            *pnum = bytes;
            ret = BLOCK_STATUS_ZERO;
            break;
        }
        *pnum = bytes = n;
        below = block_node_backing(cur);
        /*
         * Stop where a layer decides, where the chain (or the part we were
         * asked about) ends, or past the end of the backing file (ZERO).
         */
        if ((ret & (BLOCK_STATUS_ALLOCATED | BLOCK_STATUS_ZERO)) || !below ||
            below == base) {
            break;
        }
        cur = below;
        d++;
    }
    if (depth) {
        *depth = d;
    }
    if (offset + *pnum == top_len) {
        ret |= BLOCK_STATUS_EOF;
    } else {
        ret &= ~BLOCK_STATUS_EOF;
    }
    return ret;
}

/* -- control path --------------------------------------------------------- */

bool block_node_truncate(BlockNode *bs, int64_t size, bool exact,
                         BlockPrealloc prealloc, GError **errp)
{
    bool ok;

    if (size < 0) {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "negative size");
        return false;
    }
    if (!(bs->open_flags & BLOCK_O_RDWR)) {
        ferry_error_set(errp, FERRY_ERROR_PERMISSION,
                        "node '%s' is read-only", bs->node_name);
        return false;
    }
    if (!bs->drv->truncate) {
        ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED,
                        "driver '%s' cannot resize images", bs->drv->name);
        return false;
    }
    block_node_drain_begin(bs);
    ok = bs->drv->truncate(bs, size, exact, prealloc, errp);
    if (ok) {
        g_mutex_lock(&bs->bitmaps_lock);
        for (GList *l = bs->bitmaps; l; l = l->next) {
            block_dirty_bitmap_resize(l->data, size);
        }
        g_mutex_unlock(&bs->bitmaps_lock);
    }
    block_node_drain_end(bs);
    return ok;
}

const char *block_node_format(BlockNode *bs)
{
    return bs->drv->name;
}

BlockNode *block_node_bottom(BlockNode *bs)
{
    while (bs->file) {
        bs = bs->file->node;
    }
    return bs;
}

BlockNode *block_node_skip_filters(BlockNode *bs)
{
    while (bs && bs->drv->kind == BLOCK_DRIVER_FILTER && bs->file) {
        bs = bs->file->node;
    }
    return bs;
}

BlockNode *block_node_backing(BlockNode *bs)
{
    bs = block_node_skip_filters(bs);
    return bs->backing ? bs->backing->node : NULL;
}

int block_node_chain_length(BlockNode *bs)
{
    int n = 0;

    while ((bs = block_node_backing(bs))) {
        n++;
    }
    return n;
}

/* True when opts is {"driver": fmt, "file": {"driver": "file", "filename": x}}. */
static const char *plain_filename(json_t *opts)
{
    json_t *file = json_object_get(opts, "file");
    const char *key;
    json_t *v;

    if (!json_is_object(file)) {
        return NULL;
    }
    json_object_foreach(opts, key, v) {
        if (strcmp(key, "driver") && strcmp(key, "file") &&
            strcmp(key, "node-name") && strcmp(key, "read-only")) {
            return NULL;
        }
    }
    json_object_foreach(file, key, v) {
        if (strcmp(key, "driver") && strcmp(key, "filename") &&
            strcmp(key, "node-name") && strcmp(key, "read-only")) {
            return NULL;
        }
    }
    return ferry_opt_str(file, "filename");
}

char *block_node_full_filename(BlockNode *bs)
{
    const char *plain;
    g_autoptr(json_t) copy = NULL;
    char *dump, *ret;

    if (!bs->options) {
        return g_strdup(bs->filename ? bs->filename : "");
    }
    if (bs->drv->kind == BLOCK_DRIVER_PROTOCOL && bs->filename &&
        json_object_size(bs->options) <= 3) {
        return g_strdup(bs->filename);
    }
    plain = plain_filename(bs->options);
    if (plain) {
        return g_strdup(plain);
    }
    copy = json_deep_copy(bs->options);
    json_object_del(copy, "node-name");
    dump = json_dumps(copy, JSON_COMPACT | JSON_SORT_KEYS);
    ret = g_strdup_printf("json:%s", dump);
    free(dump);
    return ret;
}

char *block_backing_path(const char *overlay_filename, const char *backing)
{
    g_autofree char *dir = NULL;

    if (!backing) {
        return NULL;
    }
    if (g_path_is_absolute(backing) || strstr(backing, "://") ||
        g_str_has_prefix(backing, "json:") || !overlay_filename ||
        strstr(overlay_filename, "://") ||
        g_str_has_prefix(overlay_filename, "json:")) {
        return g_strdup(backing);
    }
    dir = g_path_get_dirname(overlay_filename);
    if (!strcmp(dir, ".")) {
        return g_strdup(backing);
    }
    return g_build_filename(dir, backing, NULL);
}

bool block_parse_prealloc(const char *s, BlockPrealloc *out, GError **errp)
{
    static const char *const names[] = { "off", "metadata", "falloc", "full" };

    for (int i = 0; i < 4; i++) {
        if (!g_strcmp0(s, names[i])) {
            *out = (BlockPrealloc)i;
            return true;
        }
    }
    ferry_error_set(errp, FERRY_ERROR_INVALID,
                    "invalid preallocation mode '%s' (off, metadata, falloc "
                    "or full)", s ? s : "");
    return false;
}

const char *block_prealloc_name(BlockPrealloc p)
{
    static const char *const names[] = { "off", "metadata", "falloc", "full" };
    return names[p];
}

void block_snapshot_info_clear(BlockSnapshotInfo *sn)
{
    g_free(sn->id);
    g_free(sn->name);
    sn->id = sn->name = NULL;
}
