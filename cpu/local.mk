# cpu/: the vCPU interface, the architectural state record, and backends.
libferry_a_SOURCES += \
	cpu/vcpu.h cpu/accel.c \
	cpu/x86-state.h cpu/x86-state.c \
	cpu/kvm/kvm.c \
	cpu/qtest/qtest.c \
	$(NULL)
