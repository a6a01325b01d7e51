/*
 * Pure logic of ferry img convert, kept apart from I/O so unit tests can
 * drive it: how the next chunk is cut from a block-status extent, and how a
 * buffer of data splits into data and zero runs (-S).
 */
#ifndef FERRY_TOOLS_IMG_CONVERT_PLAN_H
#define FERRY_TOOLS_IMG_CONVERT_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What a range of the source is, as far as the copy cares. */
typedef enum {
    IMG_EXTENT_DATA,      /* read it and write what is not zero */
    IMG_EXTENT_ZERO,      /* reads as zeroes: zero the target or skip */
    IMG_EXTENT_BACKING,   /* comes from a backing file the target shares */
} ImgExtentKind;

/* One run of a data buffer: bytes at offset (absolute) are data or zero. */
typedef struct ImgRun {
    int64_t offset;       /* bytes, in the virtual disk */
    int64_t bytes;
    bool zero;
} ImgRun;

/* True if len bytes at buf are all zero.  Stops at the first non-zero. */
bool img_buffer_is_zero(const void *buf, size_t len);

/*
 * Split buf (len bytes of the disk at offset) into data and zero runs.
 * Zero detection works on granules of `granule` bytes (a power of two,
 * aligned to the disk, the first and last may be partial); consecutive
 * zero granules form a zero run, which only counts as zero if it is at
 * least min_zero bytes long (shorter ones stay data, as -S asks).
 * runs must have room for img_max_runs(len, granule) entries; adjacent runs
 * of the same kind are merged.  Returns the number of runs (>= 1 if len).
 */
size_t img_split_zero_runs(const uint8_t *buf, int64_t offset, int64_t len,
                           int64_t granule, int64_t min_zero, ImgRun *runs);
size_t img_max_runs(int64_t len, int64_t granule);

/* The granule for a -S value: its largest power of two, at least 512. */
int64_t img_sparse_granule(int64_t sparse_bytes);

/*
 * Cut the next chunk at offset `off` from the status extent that starts at
 * or before off and ends at ext_end (exclusive) with kind `kind`.
 * chunk_bytes: the largest data request (a multiple of align).  align: 1,
 * or for compressed targets the cluster size: then data chunks start and
 * end on cluster boundaries (except at `total`, the end of the disk), a
 * zero extent shorter than a cluster becomes data, and off must be
 * aligned.  max_zero: the largest zero/backing chunk.
 * Returns the chunk's length (> 0 while off < total) and sets *out_kind.
 */
int64_t img_plan_chunk(int64_t off, ImgExtentKind kind, int64_t ext_end,
                       int64_t total, int64_t chunk_bytes, int64_t align,
                       int64_t max_zero, ImgExtentKind *out_kind);

#endif
