/*
 * The file protocol: regular files and block devices through POSIX calls.
 * pread/pwrite (RWF_DSYNC for FUA), fallocate for zeroes and discard,
 * SEEK_DATA/SEEK_HOLE for block status, O_DIRECT on request, and QEMU's
 * OFD lock bytes (100 + perm bit held, 200 + perm bit not shared) so ferry
 * and QEMU processes see each other's use of an image.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "blockdev/driver.h"
#include "common/error.h"
#include "common/log.h"
#include "common/opts.h"

#define LOCK_PERM_BASE   100
#define LOCK_SHARED_BASE 200

typedef struct FileState {
    int fd;
    char *path;
    bool is_blockdev;
    bool use_lock;            /* OFD locks are taken (locking=on/auto) */
    bool has_zero_range;      /* cleared on the first EOPNOTSUPP */
    bool has_punch;           /* likewise for PUNCH_HOLE */
    uint32_t locked_perm;     /* lock bytes held: perm bits */
    uint32_t locked_unshared; /* lock bytes held: bits we do not share */
    int64_t length;           /* bytes, valid if length_valid; atomic */
    bool length_valid;        /* atomic; see file_getlength() */
} FileState;

static const char *const file_open_opts[] = {
    "filename", "locking", "aio", "aio-max-batch", "x-check-cache-dropped",
    "pr-manager", NULL,
};

static const char *strip_prefix(const char *filename)
{
    return g_str_has_prefix(filename, "file:") ? filename + 5 : filename;
}

/* -- OFD locks ------------------------------------------------------------ */

static int lock_byte(int fd, off_t byte, short type)
{
    struct flock fl = {
        .l_whence = SEEK_SET,
        .l_start = byte,
        .l_len = 1,
        .l_type = type,
    };
    return fcntl(fd, F_OFD_SETLK, &fl) < 0 ? -errno : 0;
}

/* 0 if nobody else holds a lock on byte, -EAGAIN if someone does. */
static int test_byte(int fd, off_t byte)
{
    struct flock fl = {
        .l_whence = SEEK_SET,
        .l_start = byte,
        .l_len = 1,
        .l_type = F_WRLCK,
    };
    if (fcntl(fd, F_OFD_GETLK, &fl) < 0) {
        return -errno;
    }
    return fl.l_type == F_UNLCK ? 0 : -EAGAIN;
}

static const char *lock_perm_name(int bit)
{
    static const char *const names[] = {
        "consistent read", "write", "write unchanged", "resize",
    };
    return names[bit];
}

/*
 * Take the lock bytes for perm/shared, then check nobody else's conflict
 * with them (QEMU's order, so two racing openers cannot both succeed).
 */
static bool apply_locks(FileState *s, uint32_t perm, uint32_t shared,
                        const char *path, GError **errp)
{
    uint32_t unshared = ~shared & BLOCK_PERM_ALL;
    int ret;

    for (int i = 0; i < BLOCK_PERM_COUNT; i++) {
        uint32_t bit = 1u << i;
        if ((perm & bit) != (s->locked_perm & bit)) {
            ret = lock_byte(s->fd, LOCK_PERM_BASE + i,
                            (perm & bit) ? F_RDLCK : F_UNLCK);
            if (ret < 0) {
                goto lock_failed;
            }
        }
        if ((unshared & bit) != (s->locked_unshared & bit)) {
            ret = lock_byte(s->fd, LOCK_SHARED_BASE + i,
                            (unshared & bit) ? F_RDLCK : F_UNLCK);
            if (ret < 0) {
                goto lock_failed;
            }
        }
    }
    s->locked_perm = perm;
    s->locked_unshared = unshared;

    for (int i = 0; i < BLOCK_PERM_COUNT; i++) {
        uint32_t bit = 1u << i;
        if ((perm & bit) && test_byte(s->fd, LOCK_SHARED_BASE + i) == -EAGAIN) {
            ferry_error_set(errp, FERRY_ERROR_LOCKED,
                            "'%s' is in use by another process that does not "
                            "share the '%s' permission (a VM, qemu-nbd or "
                            "ferry?); use -U/force-share to read it anyway",
                            path, lock_perm_name(i));
            return false;
        }
        if ((unshared & bit) && test_byte(s->fd, LOCK_PERM_BASE + i) == -EAGAIN) {
            ferry_error_set(errp, FERRY_ERROR_LOCKED,
                            "'%s' is in use by another process that holds the "
                            "'%s' permission (a VM, qemu-nbd or ferry?); use "
                            "-U/force-share to read it anyway",
                            path, lock_perm_name(i));
            return false;
        }
    }
    return true;

lock_failed:
    if (ret == -ENOTSUP || ret == -EINVAL || ret == -ENOLCK) {
        /* A file system without OFD locks (some NFS): run unlocked. */
        ferry_warn("'%s': cannot take OFD locks (%s); running without "
                   "image locking", path, g_strerror(-ret));
        s->use_lock = false;
        return true;
    }
    ferry_error_setg_errno(errp, -ret, "cannot lock '%s'", path);
    return false;
}

static void release_locks(FileState *s)
{
    if (s->use_lock) {
        for (int i = 0; i < BLOCK_PERM_COUNT; i++) {
            lock_byte(s->fd, LOCK_PERM_BASE + i, F_UNLCK);
            lock_byte(s->fd, LOCK_SHARED_BASE + i, F_UNLCK);
        }
        s->locked_perm = s->locked_unshared = 0;
    }
}

static bool file_set_perm(BlockNode *bs, uint32_t perm, uint32_t shared,
                          GError **errp)
{
    FileState *s = bs->opaque;

    /* Whether others may now grow the file changed: look again. */
    __atomic_store_n(&s->length_valid, false, __ATOMIC_RELEASE);

    if (!s->use_lock) {
        return true;
    }
    if (!apply_locks(s, perm, shared, s->path, errp)) {
        /* Put back what we had; that state was consistent. */
        apply_locks(s, bs->perm, bs->shared, s->path, NULL);
        return false;
    }
    return true;
}

/* -- open/close ----------------------------------------------------------- */

static uint32_t probe_alignment(int fd, bool is_blockdev)
{
    int sector = 0;
    void *buf = NULL;
    uint32_t align = 4096;

    if (is_blockdev && ioctl(fd, BLKSSZGET, &sector) == 0 && sector > 0) {
        return sector;
    }
    /* Files: the smallest size a direct read accepts. */
    if (posix_memalign(&buf, 4096, 4096) == 0) {
        for (uint32_t a = 512; a <= 4096; a *= 2) {
            if (pread(fd, buf, a, 0) >= 0 || errno != EINVAL) {
                align = a;
                break;
            }
        }
        free(buf);
    }
    return align;
}

static int open_flags_for(uint32_t flags)
{
    int oflags = O_CLOEXEC | ((flags & BLOCK_O_RDWR) ? O_RDWR : O_RDONLY);

    if (flags & BLOCK_O_NOCACHE) {
        oflags |= O_DIRECT;
    }
    return oflags;
}

static bool file_open(BlockNode *bs, json_t *options, GError **errp)
{
    FileState *s = bs->opaque;
    const char *filename = ferry_opt_str(options, "filename");
    const char *locking = ferry_opt_str(options, "locking");
    struct stat st;

    if (!filename) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "the file driver needs a 'filename'");
        return false;
    }
    s->path = g_strdup(strip_prefix(filename));
    g_free(bs->filename);
    bs->filename = g_strdup(s->path);
    s->fd = open(s->path, open_flags_for(bs->open_flags));
    if (s->fd < 0) {
        int err = errno;
        if (err == EINVAL && (bs->open_flags & BLOCK_O_NOCACHE)) {
            ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED,
                            "cannot open '%s' with O_DIRECT: the file system "
                            "does not support it (drop cache.direct / -t none)",
                            s->path);
        } else {
            ferry_error_setg_errno(errp, err, "cannot open '%s'", s->path);
        }
        g_free(s->path);
        return false;
    }
    if (fstat(s->fd, &st) < 0) {
        ferry_error_setg_errno(errp, errno, "cannot stat '%s'", s->path);
        goto out_close;
    }
    if (S_ISDIR(st.st_mode)) {
        ferry_error_set(errp, FERRY_ERROR_INVALID, "'%s' is a directory",
                        s->path);
        goto out_close;
    }
    s->is_blockdev = S_ISBLK(st.st_mode);
    s->has_zero_range = s->has_punch = true;
    if (bs->open_flags & BLOCK_O_NOCACHE) {
        bs->request_alignment = probe_alignment(s->fd, s->is_blockdev);
    }
    if (locking && strcmp(locking, "on") && strcmp(locking, "off") &&
        strcmp(locking, "auto")) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "locking must be 'on', 'off' or 'auto', not '%s'",
                        locking);
        goto out_close;
    }
    s->use_lock = !(bs->open_flags & (BLOCK_O_FORCE_SHARE | BLOCK_O_NO_LOCK)) &&
                  g_strcmp0(locking, "off");
    if (s->use_lock && !apply_locks(s, bs->perm, bs->shared, s->path, errp)) {
        goto out_close;
    }
    return true;

out_close:
    close(s->fd);
    g_free(s->path);
    return false;
}

static void file_close(BlockNode *bs)
{
    FileState *s = bs->opaque;

    release_locks(s);
    close(s->fd);
    g_free(s->path);
}

static bool file_reopen(BlockNode *bs, uint32_t new_flags, GError **errp)
{
    FileState *s = bs->opaque;
    g_autofree char *proc = g_strdup_printf("/proc/self/fd/%d", s->fd);
    int fd = open(proc, open_flags_for(new_flags));
    FileState tmp;

    if (fd < 0) {
        fd = open(s->path, open_flags_for(new_flags));
    }
    if (fd < 0) {
        ferry_error_setg_errno(errp, errno, "cannot reopen '%s'", s->path);
        return false;
    }
    /* The new descriptor needs the same lock bytes before the old goes. */
    tmp = *s;
    tmp.fd = fd;
    tmp.locked_perm = tmp.locked_unshared = 0;
    if (tmp.use_lock && !apply_locks(&tmp, bs->perm, bs->shared, s->path, errp)) {
        close(fd);
        return false;
    }
    close(s->fd);
    s->fd = fd;
    __atomic_store_n(&s->length_valid, false, __ATOMIC_RELEASE);
    return true;
}

/*
 * Page-cache residency of the whole file in bytes, or -1 if this kernel
 * cannot say cheaply.  cachestat(2) came with Linux 6.5 (the same number
 * on every architecture); Debian 12's headers predate it.
 */
#define FILE_SYS_CACHESTAT 451

static int64_t file_cached_bytes(int fd)
{
    struct { uint64_t off, len; } range = { 0, 0 };   /* len 0: to EOF */
    struct {
        uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted,
                 nr_recently_evicted;
    } cs;

    if (syscall(FILE_SYS_CACHESTAT, fd, &range, &cs, 0) < 0) {
        return -1;
    }
    return (int64_t)cs.nr_cache * sysconf(_SC_PAGESIZE);
}

/* Below this many allocated bytes the page cache costs too little to skip. */
#define FILE_UNCACHED_MIN_BYTES  (INT64_C(64) << 20)

static int file_host_fd(BlockNode *bs)
{
    FileState *s = bs->opaque;

    /* splice from an O_DIRECT descriptor would bypass nothing */
    return (bs->open_flags & BLOCK_O_NOCACHE) ? -1 : s->fd;
}

static bool file_read_uncached_if_cold(BlockNode *bs)
{
    FileState *s = bs->opaque;
    struct stat st;
    int64_t allocated, cached;
    int fl;

    if (s->is_blockdev || fstat(s->fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        return false;
    }
    allocated = (int64_t)st.st_blocks * 512;
    if (allocated < FILE_UNCACHED_MIN_BYTES) {
        return false;
    }
    /* Warm means a quarter or more of the data is cached: keep using it. */
    cached = file_cached_bytes(s->fd);
    if (cached < 0 || cached >= allocated / 4) {
        return false;
    }
    fl = fcntl(s->fd, F_GETFL);
    if (fl < 0 || fcntl(s->fd, F_SETFL, fl | O_DIRECT) < 0) {
        return false;      /* tmpfs and others refuse O_DIRECT */
    }
    bs->request_alignment = probe_alignment(s->fd, false);
    ferry_debug("'%s': %" G_GINT64_FORMAT " of %" G_GINT64_FORMAT
                " bytes cached, reading with O_DIRECT", s->path, cached,
                allocated);
    return true;
}

/* -- data path ------------------------------------------------------------ */

static int file_pread(BlockNode *bs, int64_t offset, int64_t bytes, void *buf,
                      uint32_t flags)
{
    FileState *s = bs->opaque;
    char *p = buf;

    while (bytes > 0) {
        ssize_t n = pread(s->fd, p, bytes, offset);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        if (n == 0) {
            memset(p, 0, bytes);    /* past the end reads as zeroes */
            break;
        }
        p += n;
        offset += n;
        bytes -= n;
    }
    return 0;
}

/* A write (or allocation) reached end: the file is at least that long. */
static void note_written(FileState *s, int64_t end)
{
    int64_t cur = __atomic_load_n(&s->length, __ATOMIC_RELAXED);

    while (cur < end &&
           !__atomic_compare_exchange_n(&s->length, &cur, end, true,
                                        __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
}

static int file_pwrite(BlockNode *bs, int64_t offset, int64_t bytes,
                       const void *buf, uint32_t flags)
{
    FileState *s = bs->opaque;
    const char *p = buf;
    int rwf = (flags & BLOCK_REQ_FUA) && !(bs->open_flags & BLOCK_O_NO_FLUSH)
              ? RWF_DSYNC : 0;

    while (bytes > 0) {
        struct iovec iov = { .iov_base = (void *)p, .iov_len = bytes };
        ssize_t n = pwritev2(s->fd, &iov, 1, offset, rwf);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        p += n;
        offset += n;
        bytes -= n;
    }
    note_written(s, offset);
    return 0;
}

static int64_t stat_length(FileState *s)
{
    struct stat st;

    if (s->is_blockdev) {
        uint64_t size;
        if (ioctl(s->fd, BLKGETSIZE64, &size) < 0) {
            return -errno;
        }
        return size;
    }
    if (fstat(s->fd, &st) < 0) {
        return -errno;
    }
    return st.st_size;
}

/*
 * The length is asked on every request through a format node: keep it,
 * and grow it with our own writes past the end.  Only while nobody else
 * may resize the file (a format's file child, a read-only NBD export, or
 * our own lock): other writers cannot change the length without the
 * resize permission, as in QEMU, where a writer that grows its file holds
 * it.  Truncate, reopen and permission changes make us look again.
 */
static int64_t file_getlength(BlockNode *bs)
{
    FileState *s = bs->opaque;
    int64_t len;

    if (!(bs->shared & BLOCK_PERM_RESIZE) &&
        __atomic_load_n(&s->length_valid, __ATOMIC_ACQUIRE)) {
        return __atomic_load_n(&s->length, __ATOMIC_RELAXED);
    }
    len = stat_length(s);
    if (len >= 0) {
        __atomic_store_n(&s->length, len, __ATOMIC_RELAXED);
        __atomic_store_n(&s->length_valid, true, __ATOMIC_RELEASE);
    }
    return len;
}

/* Extend the file to end if it is shorter (zeroes past EOF are implicit). */
static int extend_to(FileState *s, int64_t end, int64_t len)
{
    if (!s->is_blockdev && end > len && ftruncate(s->fd, end) < 0) {
        return -errno;
    }
    return 0;
}

static int file_pwrite_zeroes(BlockNode *bs, int64_t offset, int64_t bytes,
                              uint32_t flags)
{
    FileState *s = bs->opaque;
    int64_t len = file_getlength(bs);
    int ret = -ENOTSUP;

    if (len < 0) {
        return (int)len;
    }
    if (!s->is_blockdev && offset >= len) {
        /* Entirely past EOF: growing the file is enough. */
        ret = extend_to(s, offset + bytes, len);
        goto out;
    }
    if ((flags & BLOCK_REQ_MAY_UNMAP) && s->has_punch && !s->is_blockdev) {
        if (fallocate(s->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                      offset, bytes) == 0) {
            ret = extend_to(s, offset + bytes, len);
            goto out;
        }
        if (errno != EOPNOTSUPP) {
            return -errno;
        }
        s->has_punch = false;
    }
    if (s->has_zero_range && !s->is_blockdev) {
        if (fallocate(s->fd, FALLOC_FL_ZERO_RANGE, offset, bytes) == 0) {
            ret = 0;
            goto out;
        }
        if (errno != EOPNOTSUPP) {
            return -errno;
        }
        s->has_zero_range = false;
    }
    if (s->is_blockdev) {
        uint64_t range[2] = { offset, bytes };
        if (!(flags & BLOCK_REQ_NO_FALLBACK) &&
            ioctl(s->fd, BLKZEROOUT, range) == 0) {
            ret = 0;
        }
    }
out:
    if (ret == 0) {
        note_written(s, offset + bytes);   /* ZERO_RANGE grows the file too */
    }
    if (ret == 0 && (flags & BLOCK_REQ_FUA) &&
        !(bs->open_flags & BLOCK_O_NO_FLUSH) && fdatasync(s->fd) < 0) {
        ret = -errno;
    }
    return ret;
}

static int file_pdiscard(BlockNode *bs, int64_t offset, int64_t bytes)
{
    FileState *s = bs->opaque;

    if (s->is_blockdev) {
        uint64_t range[2] = { offset, bytes };
        return ioctl(s->fd, BLKDISCARD, range) < 0 ? -errno : 0;
    }
    if (!s->has_punch) {
        return -ENOTSUP;
    }
    if (fallocate(s->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset,
                  bytes) < 0) {
        if (errno == EOPNOTSUPP) {
            s->has_punch = false;
            return -ENOTSUP;
        }
        return -errno;
    }
    return 0;
}

static int file_flush(BlockNode *bs)
{
    FileState *s = bs->opaque;

    if (bs->open_flags & BLOCK_O_NO_FLUSH) {
        return 0;
    }
    return fdatasync(s->fd) < 0 ? -errno : 0;
}

/* SEEK_DATA/SEEK_HOLE: a data extent or a hole starting at offset. */
static int file_block_status(BlockNode *bs, int64_t offset, int64_t bytes,
                             int64_t *pnum, int64_t *map, BlockNode **file)
{
    FileState *s = bs->opaque;
    const int data_flags = BLOCK_STATUS_DATA | BLOCK_STATUS_ALLOCATED |
                           BLOCK_STATUS_OFFSET_VALID;
    off_t data, hole;

    *map = offset;
    *file = bs;
    if (s->is_blockdev) {
        *pnum = bytes;
        return data_flags;
    }
    data = lseek(s->fd, offset, SEEK_DATA);
    if (data < 0) {
        if (errno == ENXIO) {
            /* No data at or after offset: a hole up to EOF (or beyond). */
            *pnum = bytes;
            return BLOCK_STATUS_ZERO | BLOCK_STATUS_ALLOCATED |
                   BLOCK_STATUS_OFFSET_VALID;
        }
        *pnum = bytes;     /* SEEK_DATA unsupported: assume data */
        return data_flags;
    }
    if (data > offset) {
        *pnum = MIN(bytes, data - offset);
        return BLOCK_STATUS_ZERO | BLOCK_STATUS_ALLOCATED |
               BLOCK_STATUS_OFFSET_VALID;
    }
    hole = lseek(s->fd, offset, SEEK_HOLE);
    if (hole < 0 || hole <= offset) {
        *pnum = bytes;
        return data_flags;
    }
    *pnum = MIN(bytes, hole - offset);
    return data_flags;
}

static int64_t file_allocated_size(BlockNode *bs)
{
    FileState *s = bs->opaque;
    struct stat st;

    if (fstat(s->fd, &st) < 0) {
        return -errno;
    }
    return (int64_t)st.st_blocks * 512;
}

/* Write zeroes for full preallocation, in 1 MiB pieces. */
static int write_zeroes_full(int fd, int64_t offset, int64_t end)
{
    const size_t chunk = 1 << 20;
    g_autofree char *zero = g_malloc0(chunk);

    while (offset < end) {
        ssize_t n = pwrite(fd, zero, MIN((int64_t)chunk, end - offset), offset);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        offset += n;
    }
    return 0;
}

static bool grow_file(int fd, const char *path, int64_t old_size,
                      int64_t size, BlockPrealloc prealloc, GError **errp)
{
    int ret;

    switch (prealloc) {
    case BLOCK_PREALLOC_OFF:
        break;
    case BLOCK_PREALLOC_FALLOC:
        if (size > old_size && (ret = posix_fallocate(fd, old_size, size - old_size))) {
            ferry_error_setg_errno(errp, ret, "cannot preallocate '%s'", path);
            return false;
        }
        return true;
    case BLOCK_PREALLOC_FULL:
        if (ftruncate(fd, size) < 0) {
            break;
        }
        ret = write_zeroes_full(fd, old_size, size);
        if (ret < 0) {
            ferry_error_setg_errno(errp, -ret, "cannot preallocate '%s'", path);
            return false;
        }
        return true;
    default:
        ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED,
                        "preallocation=%s is not supported by the file "
                        "protocol", block_prealloc_name(prealloc));
        return false;
    }
    if (ftruncate(fd, size) < 0) {
        ferry_error_setg_errno(errp, errno, "cannot resize '%s'", path);
        return false;
    }
    return true;
}

static bool file_truncate(BlockNode *bs, int64_t size, bool exact,
                          BlockPrealloc prealloc, GError **errp)
{
    FileState *s = bs->opaque;
    int64_t len = stat_length(s);

    __atomic_store_n(&s->length_valid, false, __ATOMIC_RELEASE);
    if (len < 0) {
        ferry_error_setg_errno(errp, (int)-len, "cannot get the size of '%s'",
                               s->path);
        return false;
    }
    if (s->is_blockdev) {
        if (size > len || (exact && size != len)) {
            ferry_error_set(errp, FERRY_ERROR_UNSUPPORTED,
                            "cannot resize block device '%s' to %" G_GINT64_FORMAT
                            " bytes (it has %" G_GINT64_FORMAT ")", s->path,
                            size, len);
            return false;
        }
        return true;
    }
    if (!exact && size <= len) {
        return true;
    }
    if (size < len && prealloc != BLOCK_PREALLOC_OFF) {
        ferry_error_set(errp, FERRY_ERROR_INVALID,
                        "preallocation only applies when growing");
        return false;
    }
    return grow_file(s->fd, s->path, len, size, prealloc, errp);
}

/* -- create --------------------------------------------------------------- */

static bool file_create(const char *filename, json_t *opts, GError **errp)
{
    const char *path = strip_prefix(filename);
    const char *prealloc_str = ferry_opt_str(opts, "preallocation");
    BlockPrealloc prealloc = BLOCK_PREALLOC_OFF;
    FileState tmp = { 0 };
    uint64_t size;
    struct stat st;
    bool ok;

    if (!ferry_opt_size(opts, "size", 0, &size, errp)) {
        return false;
    }
    if (prealloc_str && !block_parse_prealloc(prealloc_str, &prealloc, errp)) {
        return false;
    }
    if (prealloc == BLOCK_PREALLOC_METADATA) {
        prealloc = BLOCK_PREALLOC_OFF;      /* no metadata at this level */
    }
    tmp.fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (tmp.fd < 0) {
        ferry_error_setg_errno(errp, errno, "cannot create '%s'", path);
        return false;
    }
    /* Never clobber an image somebody is using. */
    tmp.use_lock = true;
    if (!apply_locks(&tmp, BLOCK_PERM_WRITE | BLOCK_PERM_RESIZE,
                     BLOCK_PERM_ALL & ~(BLOCK_PERM_WRITE | BLOCK_PERM_RESIZE),
                     path, errp)) {
        g_prefix_error(errp, "cannot create: ");
        close(tmp.fd);
        return false;
    }
    ok = fstat(tmp.fd, &st) == 0;
    if (ok && S_ISBLK(st.st_mode)) {
        close(tmp.fd);
        return true;        /* a device is "created" by using it */
    }
    ok = ftruncate(tmp.fd, 0) == 0 &&
         grow_file(tmp.fd, path, 0, size, prealloc, errp);
    if (!ok && errp && !*errp) {
        ferry_error_setg_errno(errp, errno, "cannot create '%s'", path);
    }
    close(tmp.fd);
    return ok;
}

static const BlockCreateOpt file_create_opts[] = {
    { "size", BLOCK_OPT_SIZE, "Virtual disk size" },
    { "preallocation", BLOCK_OPT_STRING,
      "Preallocation mode (allowed values: off, falloc, full)" },
    { "nocow", BLOCK_OPT_BOOL, "Turn off copy-on-write (valid only on btrfs)" },
    { NULL },
};

const BlockDriver file_driver = {
    .name           = "file",
    .kind           = BLOCK_DRIVER_PROTOCOL,
    .caps           = BLOCK_CAP_ZERO_INIT | BLOCK_CAP_FUA |
                      BLOCK_CAP_STABLE_MAP,
    .state_size     = sizeof(FileState),
    .open_opts      = file_open_opts,
    .create_opts    = file_create_opts,
    .protocols      = (const char *const[]){ "file:", NULL },
    .open           = file_open,
    .close          = file_close,
    .reopen         = file_reopen,
    .read_uncached_if_cold = file_read_uncached_if_cold,
    .host_fd        = file_host_fd,
    .set_perm       = file_set_perm,
    .create         = file_create,
    .pread          = file_pread,
    .pwrite         = file_pwrite,
    .pwrite_zeroes  = file_pwrite_zeroes,
    .pdiscard       = file_pdiscard,
    .flush          = file_flush,
    .block_status   = file_block_status,
    .getlength      = file_getlength,
    .allocated_size = file_allocated_size,
    .truncate       = file_truncate,
};
