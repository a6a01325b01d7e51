# qmp/: the QMP server, dispatch table, events, and the block command sets.
libferry_a_SOURCES += \
	qmp/qmp.h qmp/commands.h qmp/internal.h \
	qmp/stream.c \
	qmp/image-info.c qmp/image-info.h \
	qmp/dispatch.c \
	qmp/events.c \
	qmp/server.c \
	qmp/block-cmds.c \
	qmp/bitmap-cmds.c \
	qmp/job-cmds.c \
	qmp/nbd-cmds.c \
	qmp/transaction.c \
	$(NULL)
