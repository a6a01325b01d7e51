# The NBD server: handshake, transmission, meta contexts, TLS.
libferry_a_SOURCES += \
	nbd-server/nbd-server.h nbd-server/internal.h \
	nbd-server/io.c \
	nbd-server/meta-context.c \
	nbd-server/negotiate.c \
	nbd-server/request.c \
	nbd-server/server.c \
	nbd-server/tls.c \
	$(NULL)

check_PROGRAMS += tests/unit/nbd-server/test-nbd-server
TESTS += tests/unit/nbd-server/test-nbd-server
tests_unit_nbd_server_test_nbd_server_LDADD = $(FERRY_LIBS)
