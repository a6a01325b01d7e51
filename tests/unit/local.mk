# GTest programs: one per module, named after the file they test.
UNIT_TESTS = \
	tests/unit/common/test-opts \
	tests/unit/common/test-units \
	tests/unit/blockdev/test-bitmap \
	tests/unit/blockdev/test-graph \
	$(NULL)
check_PROGRAMS += $(UNIT_TESTS)
TESTS += $(UNIT_TESTS)

tests_unit_common_test_opts_LDADD = $(FERRY_LIBS)
tests_unit_common_test_units_LDADD = $(FERRY_LIBS)
tests_unit_blockdev_test_bitmap_LDADD = $(FERRY_LIBS)
tests_unit_blockdev_test_graph_LDADD = $(FERRY_LIBS)

# Block jobs under concurrent writers (tests/unit/blockdev/test-job.c).
check_PROGRAMS += tests/unit/blockdev/test-job
TESTS += tests/unit/blockdev/test-job
tests_unit_blockdev_test_job_LDADD = $(FERRY_LIBS)

# ferry img convert's pure logic (chunking, zero detection)
UNIT_TESTS += tests/unit/tools/test-convert-plan
tests_unit_tools_test_convert_plan_SOURCES = \
	tests/unit/tools/test-convert-plan.c \
	tools/img/convert-plan.c tools/img/convert-plan.h \
	$(NULL)
tests_unit_tools_test_convert_plan_LDADD = $(FERRY_LIBS)

# The QMP input path: stream splitter and dispatcher (tests/unit/qmp/).
check_PROGRAMS += tests/unit/qmp/test-qmp
TESTS += tests/unit/qmp/test-qmp
tests_unit_qmp_test_qmp_LDADD = $(FERRY_LIBS)
