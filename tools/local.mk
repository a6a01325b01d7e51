ferry_SOURCES += \
	tools/ferry.c tools/ferry.h \
	tools/img/img.c tools/img/img.h \
	tools/img/create.c \
	tools/img/info.c tools/img/info.h \
	tools/nbd/nbd.c \
	$(NULL)
