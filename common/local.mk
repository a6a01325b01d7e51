libferry_a_SOURCES += \
	common/bytes.h \
	common/error.c common/error.h \
	common/log.c common/log.h \
	common/opts.c common/opts.h \
	common/progress.c common/progress.h \
	common/units.c common/units.h \
	$(NULL)
