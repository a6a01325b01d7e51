# libFuzzer harnesses.  Built with --enable-fuzzing (clang): real fuzzers.
# Built otherwise: the same harness with fuzz-main.c, run by make check over
# its corpus in tests/fuzz/corpus/<name>/ as a regression test.
FUZZ_HARNESSES = \
	tests/fuzz/fuzz-opts \
	tests/fuzz/fuzz-nbd-parse \
	tests/fuzz/fuzz-nbd-session \
	tests/fuzz/fuzz-virtqueue \
	tests/fuzz/fuzz-qcow2 \
	$(NULL)
FUZZ_HARNESSES += tests/fuzz/fuzz-qmp

if ENABLE_FUZZING
FUZZ_CFLAGS = $(AM_CFLAGS) -fsanitize=fuzzer
FUZZ_MAIN =
noinst_PROGRAMS = $(FUZZ_HARNESSES)
else
FUZZ_CFLAGS = $(AM_CFLAGS)
FUZZ_MAIN = tests/fuzz/fuzz-main.c
check_PROGRAMS += $(FUZZ_HARNESSES)
TESTS += tests/fuzz/run-corpus.sh
endif
EXTRA_DIST += tests/fuzz/run-corpus.sh tests/fuzz/corpus tests/fuzz/README.md \
	tests/fuzz/fuzz-main.c tests/fuzz/gen-nbd-corpus.py

tests_fuzz_fuzz_opts_SOURCES = tests/fuzz/fuzz-opts.c $(FUZZ_MAIN)
tests_fuzz_fuzz_opts_CFLAGS = $(FUZZ_CFLAGS)
tests_fuzz_fuzz_opts_LDADD = $(FERRY_LIBS)

tests_fuzz_fuzz_nbd_parse_SOURCES = tests/fuzz/fuzz-nbd-parse.c $(FUZZ_MAIN)
tests_fuzz_fuzz_nbd_parse_CFLAGS = $(FUZZ_CFLAGS)
tests_fuzz_fuzz_nbd_parse_LDADD = $(FERRY_LIBS)
tests_fuzz_fuzz_nbd_session_SOURCES = tests/fuzz/fuzz-nbd-session.c $(FUZZ_MAIN)
tests_fuzz_fuzz_nbd_session_CFLAGS = $(FUZZ_CFLAGS)
tests_fuzz_fuzz_nbd_session_LDADD = $(FERRY_LIBS)
tests_fuzz_fuzz_qmp_SOURCES = tests/fuzz/fuzz-qmp.c $(FUZZ_MAIN)
tests_fuzz_fuzz_qmp_CFLAGS = $(FUZZ_CFLAGS)
tests_fuzz_fuzz_qmp_LDADD = $(FERRY_LIBS)

tests_fuzz_fuzz_virtqueue_SOURCES = tests/fuzz/fuzz-virtqueue.c $(FUZZ_MAIN)
tests_fuzz_fuzz_virtqueue_CFLAGS = $(FUZZ_CFLAGS)
tests_fuzz_fuzz_virtqueue_LDADD = $(FERRY_LIBS)
tests_fuzz_fuzz_qcow2_SOURCES = tests/fuzz/fuzz-qcow2.c $(FUZZ_MAIN)
tests_fuzz_fuzz_qcow2_CFLAGS = $(FUZZ_CFLAGS)
tests_fuzz_fuzz_qcow2_LDADD = $(FERRY_LIBS)
