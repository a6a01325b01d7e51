ferry_SOURCES += \
	tools/ferry.c tools/ferry.h \
	tools/img/img.c tools/img/img.h \
	tools/img/create.c \
	tools/img/info.c tools/img/info.h \
	tools/nbd/nbd.c \
	tools/img/convert.c \
	tools/img/convert-plan.c tools/img/convert-plan.h \
	tools/io/io.c \
	$(NULL)

# ferry img subcommands beyond create/info: one file each
ferry_SOURCES += \
	tools/img/json-out.c \
	tools/img/snapshot-table.c \
	tools/img/chain.c \
	tools/img/qemu-caps.c \
	tools/img/check.c \
	tools/img/map.c \
	tools/img/compare.c \
	tools/img/resize.c \
	tools/img/measure.c \
	tools/img/commit.c \
	tools/img/rebase.c \
	tools/img/snapshot.c \
	tools/img/bitmap.c \
	tools/img/amend.c \
	$(NULL)

# ferry qmp: the client and the storage daemon
ferry_SOURCES += \
	tools/qmp/qmp.c tools/qmp/qmp-tool.h \
	tools/qmp/daemon.c \
	$(NULL)
