# ferry run
ferry_SOURCES += \
	tools/run/run.c \
	$(NULL)
