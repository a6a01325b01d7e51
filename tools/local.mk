ferry_SOURCES += \
	tools/ferry.c tools/ferry.h \
	tools/img/img.c tools/img/img.h \
	tools/img/create.c \
	tools/img/info.c tools/img/info.h \
	tools/img/convert.c \
	tools/img/convert-plan.c tools/img/convert-plan.h \
	tools/io/io.c \
	$(NULL)
