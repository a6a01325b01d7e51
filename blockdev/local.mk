libferry_a_SOURCES += \
	blockdev/backend.c blockdev/backend.h \
	blockdev/bitmap.c blockdev/bitmap.h \
	blockdev/block.c blockdev/block.h \
	blockdev/driver.h blockdev/drivers.c \
	blockdev/drivers/file.c \
	blockdev/drivers/null.c \
	blockdev/drivers/raw.c \
	$(NULL)
if HAVE_LIBNBD
libferry_a_SOURCES += blockdev/drivers/nbd.c
endif

# Block jobs: the framework and one file per job (blockdev/jobs/).
libferry_a_SOURCES += \
	blockdev/job.c blockdev/job.h blockdev/jobs.h \
	blockdev/jobs/internal.h \
	blockdev/jobs/util.c \
	blockdev/jobs/stream.c \
	blockdev/jobs/commit.c \
	blockdev/jobs/mirror.c \
	blockdev/jobs/backup.c \
	$(NULL)
