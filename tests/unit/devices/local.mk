# Unit tests for devices/ and vmm/.
VMM_UNIT_TESTS = \
	tests/unit/devices/test-virtio \
	tests/unit/vmm/test-boot \
	$(NULL)
check_PROGRAMS += $(VMM_UNIT_TESTS)
TESTS += $(VMM_UNIT_TESTS)
tests_unit_devices_test_virtio_LDADD = $(FERRY_LIBS)
tests_unit_vmm_test_boot_LDADD = $(FERRY_LIBS)
