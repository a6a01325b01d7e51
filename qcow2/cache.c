/*
 * The L2 table and refcount block caches: cluster-sized tables kept in
 * their on-disk byte order, written back on eviction and on flush.
 * Writing back L2 tables first writes the refcount cache and issues a
 * barrier (internal.h, invariant 2).  Callers hold the qcow2 lock.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/log.h"
#include "qcow2/internal.h"

void qcow2_cache_init(Qcow2Cache *c, Qcow2State *s, const char *what,
                      int slots, bool is_l2)
{
    c->s = s;
    c->what = what;
    c->size = MAX(slots, 2);
    c->entries = g_new0(Qcow2CacheEntry, c->size);
    c->index = g_hash_table_new(g_int64_hash, g_int64_equal);
    c->is_l2 = is_l2;
    c->tick = 1;
    c->mem = NULL;
}

void qcow2_cache_destroy(Qcow2Cache *c)
{
    if (!c->entries) {
        return;
    }
    g_free(c->mem);
    g_free(c->entries);
    g_hash_table_destroy(c->index);
    c->entries = NULL;
}

static int entry_write(Qcow2Cache *c, Qcow2CacheEntry *e)
{
    Qcow2State *s = c->s;
    int ret;

    if (!e->dirty) {
        return 0;
    }
    if (c->is_l2 && qcow2_cache_is_dirty(&s->rb_cache)) {
        /* Invariant 2: refcounts first, then a barrier, then the L2. */
        ret = qcow2_cache_write_all(&s->rb_cache);
        if (ret < 0) {
            return ret;
        }
    }
    if (c->is_l2 && s->rb_unflushed && !s->lazy_refcounts) {
        ret = qcow2_barrier(s);
        if (ret < 0) {
            return ret;
        }
        s->rb_unflushed = false;
    }
    ret = block_node_pwrite(s->bs->file->node, e->offset, s->cluster_size,
                            e->table, 0);
    if (ret < 0) {
        return ret;
    }
    if (!c->is_l2) {
        s->rb_unflushed = true;
    }
    e->dirty = false;
    FERRY_TRACE_POINT(QCOW2, "node=%s cache-write what=%s off=0x%" G_GINT64_MODIFIER
                      "x", s->bs->node_name, c->what, e->offset);
    return 0;
}

static Qcow2CacheEntry *entry_of(Qcow2Cache *c, void *table)
{
    size_t slot = (size_t)((uint8_t *)table - c->mem) >> c->s->cluster_bits;

    g_assert(slot < (size_t)c->size && c->entries[slot].table == table);
    return &c->entries[slot];
}

/* A slot for a new table: an empty one, else the least recently used. */
static Qcow2CacheEntry *find_victim(Qcow2Cache *c, int *ret)
{
    Qcow2CacheEntry *best = NULL;

    for (int i = 0; i < c->size; i++) {
        Qcow2CacheEntry *e = &c->entries[i];
        if (!e->offset) {
            best = e;
            break;
        }
        if (!e->pinned && (!best || e->lru < best->lru)) {
            best = e;
        }
    }
    if (!best) {
        *ret = -ENOMEM;     /* every slot pinned: a bug in the caller */
        return NULL;
    }
    if (best->offset) {
        *ret = entry_write(c, best);
        if (*ret < 0) {
            return NULL;
        }
        g_hash_table_remove(c->index, &best->offset);
        best->offset = 0;
    }
    if (!c->mem) {
        /* One block for every slot; pages are only touched when used. */
        c->mem = g_try_malloc((size_t)c->size << c->s->cluster_bits);
        if (!c->mem) {
            *ret = -ENOMEM;
            return NULL;
        }
    }
    if (!best->table) {
        best->table = c->mem + ((size_t)(best - c->entries) <<
                                c->s->cluster_bits);
    }
    return best;
}

static void *cache_get(Qcow2Cache *c, uint64_t offset, bool read, int *ret)
{
    gpointer slot = g_hash_table_lookup(c->index, &offset);
    Qcow2CacheEntry *e;

    *ret = 0;
    if (slot) {
        e = &c->entries[GPOINTER_TO_INT(slot) - 1];
        if (!read) {
            memset(e->table, 0, c->s->cluster_size);
        }
    } else {
        e = find_victim(c, ret);
        if (!e) {
            return NULL;
        }
        if (read) {
            *ret = block_node_pread(c->s->bs->file->node, offset,
                                    c->s->cluster_size, e->table, 0);
            if (*ret < 0) {
                return NULL;
            }
        } else {
            memset(e->table, 0, c->s->cluster_size);
        }
        e->offset = offset;
        e->dirty = false;
        g_hash_table_insert(c->index, &e->offset,
                            GINT_TO_POINTER((int)(e - c->entries) + 1));
    }
    e->pinned++;
    e->lru = c->tick++;
    return e->table;
}

void *qcow2_cache_get(Qcow2Cache *c, uint64_t offset, int *ret)
{
    return cache_get(c, offset, true, ret);
}

void *qcow2_cache_get_empty(Qcow2Cache *c, uint64_t offset, int *ret)
{
    return cache_get(c, offset, false, ret);
}

void qcow2_cache_put(Qcow2Cache *c, void *table)
{
    Qcow2CacheEntry *e = entry_of(c, table);

    g_assert(e->pinned > 0);
    e->pinned--;
}

void qcow2_cache_mark_dirty(Qcow2Cache *c, void *table)
{
    entry_of(c, table)->dirty = true;
}

bool qcow2_cache_is_dirty(Qcow2Cache *c)
{
    for (int i = 0; i < c->size; i++) {
        if (c->entries[i].offset && c->entries[i].dirty) {
            return true;
        }
    }
    return false;
}

int qcow2_cache_write_all(Qcow2Cache *c)
{
    /* Ascending offsets: fewer seeks, and deterministic order. */
    for (;;) {
        Qcow2CacheEntry *next = NULL;
        int ret;
        for (int i = 0; i < c->size; i++) {
            Qcow2CacheEntry *e = &c->entries[i];
            if (e->offset && e->dirty && (!next || e->offset < next->offset)) {
                next = e;
            }
        }
        if (!next) {
            return 0;
        }
        ret = entry_write(c, next);
        if (ret < 0) {
            return ret;
        }
    }
}

/* Forget a table without writing it (its cluster was freed). */
void qcow2_cache_discard(Qcow2Cache *c, uint64_t offset)
{
    gpointer slot = g_hash_table_lookup(c->index, &offset);

    if (slot) {
        Qcow2CacheEntry *e = &c->entries[GPOINTER_TO_INT(slot) - 1];
        if (e->pinned) {
            return;     /* a corrupt image freed a table in use: keep it */
        }
        g_hash_table_remove(c->index, &e->offset);
        e->offset = 0;
        e->dirty = false;
    }
}

void qcow2_cache_drop_all(Qcow2Cache *c)
{
    for (int i = 0; i < c->size; i++) {
        Qcow2CacheEntry *e = &c->entries[i];
        if (e->offset) {
            g_hash_table_remove(c->index, &e->offset);
            e->offset = 0;
            e->dirty = false;
        }
    }
}
