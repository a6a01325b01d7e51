# Unit tests for the output helpers of ferry img (no image, no peers).
check_PROGRAMS += tests/unit/tools/test-img-output
TESTS += tests/unit/tools/test-img-output
tests_unit_tools_test_img_output_SOURCES = \
	tests/unit/tools/test-img-output.c \
	tools/img/json-out.c \
	tools/img/snapshot-table.c \
	$(NULL)
tests_unit_tools_test_img_output_LDADD = $(FERRY_LIBS)
