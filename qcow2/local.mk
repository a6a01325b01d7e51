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
	$(NULL)

# Unit tests of the driver internals (tests/unit/qcow2/).
check_PROGRAMS += tests/unit/qcow2/test-qcow2
TESTS += tests/unit/qcow2/test-qcow2
tests_unit_qcow2_test_qcow2_LDADD = $(FERRY_LIBS)
