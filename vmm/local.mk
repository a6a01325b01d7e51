# vmm/: the machine behind ferry run.
libferry_a_SOURCES += \
	vmm/boot.c vmm/boot.h \
	vmm/chardev.c vmm/chardev.h \
	vmm/config.c \
	vmm/machine.c vmm/machine.h \
	$(NULL)
