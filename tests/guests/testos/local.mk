# testos: a freestanding x86-64 guest built with the host compiler.  The
# kernel part is tiny; the workload runs at CPL3 (see README in this dir).
TESTOS_DIR = tests/guests/testos
TESTOS_SRCS = \
	$(TESTOS_DIR)/start.S \
	$(TESTOS_DIR)/kernel.c \
	$(TESTOS_DIR)/lib.c \
	$(TESTOS_DIR)/user.c \
	$(TESTOS_DIR)/virtio-blk.c \
	$(NULL)
TESTOS_HDRS = $(TESTOS_DIR)/testos.h $(TESTOS_DIR)/virtio-blk.h \
	$(TESTOS_DIR)/testos.ld
TESTOS_CFLAGS = -O2 -g0 -Wall -Wextra -Wno-unused-parameter -ffreestanding \
	-fno-pic -fno-pie -fno-stack-protector -fno-asynchronous-unwind-tables \
	-fcf-protection=none -mno-red-zone -mgeneral-regs-only -mcmodel=small \
	-nostdlib -static -no-pie -Wl,--build-id=none -Wl,-n -Wl,--no-warn-rwx-segments -Wl,-z,noexecstack \
	-Wl,-T,$(srcdir)/$(TESTOS_DIR)/testos.ld

noinst_DATA += $(TESTOS_DIR)/testos.elf
CLEANFILES += $(TESTOS_DIR)/testos.elf
EXTRA_DIST += $(TESTOS_SRCS) $(TESTOS_HDRS) $(TESTOS_DIR)/local.mk

$(TESTOS_DIR)/testos.elf: $(TESTOS_SRCS:%=$(srcdir)/%) $(TESTOS_HDRS:%=$(srcdir)/%)
	@mkdir -p $(TESTOS_DIR)
	$(AM_V_CCLD)$(CC) $(TESTOS_CFLAGS) -o $@ $(TESTOS_SRCS:%=$(srcdir)/%)
