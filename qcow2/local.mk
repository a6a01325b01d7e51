# measure and make_empty, for ferry img measure and commit
libferry_a_SOURCES += qcow2/measure.c

libferry_a_SOURCES += \
	qcow2/internal.h \
	qcow2/qcow2.c \
	qcow2/cache.c \
	qcow2/cluster.c \
	qcow2/refcount.c \
	qcow2/compress.c \
	qcow2/create.c \
	qcow2/check.c \
	qcow2/snapshot.c \
	qcow2/bitmap.c \
	qcow2/amend.c \
	$(NULL)

# Unit tests of the driver internals (tests/unit/qcow2/).
check_PROGRAMS += tests/unit/qcow2/test-qcow2
TESTS += tests/unit/qcow2/test-qcow2
tests_unit_qcow2_test_qcow2_LDADD = $(FERRY_LIBS)

# Snapshots and persistent bitmaps (tests/unit/qcow2/).
check_PROGRAMS += tests/unit/qcow2/test-snapshot tests/unit/qcow2/test-bitmap
TESTS += tests/unit/qcow2/test-snapshot tests/unit/qcow2/test-bitmap
tests_unit_qcow2_test_snapshot_LDADD = $(FERRY_LIBS)
tests_unit_qcow2_test_bitmap_LDADD = $(FERRY_LIBS)
