/*
 * A main() for the libFuzzer harnesses when they are built without
 * libFuzzer: it feeds every file named on the command line (directories
 * are walked) to LLVMFuzzerTestOneInput once.  make check runs each harness
 * over its corpus this way, so the corpus stays a regression test.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>

#include <glib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_path(const char *path)
{
    GError *err = NULL;
    gchar *data = NULL;
    gsize len = 0;
    int n = 0;

    if (g_file_test(path, G_FILE_TEST_IS_DIR)) {
        GDir *dir = g_dir_open(path, 0, &err);
        const char *name;
        if (!dir) {
            fprintf(stderr, "%s\n", err->message);
            g_error_free(err);
            return -1;
        }
        while ((name = g_dir_read_name(dir))) {
            g_autofree char *child = g_build_filename(path, name, NULL);
            int r = run_path(child);
            if (r < 0) {
                g_dir_close(dir);
                return r;
            }
            n += r;
        }
        g_dir_close(dir);
        return n;
    }
    if (!g_file_get_contents(path, &data, &len, &err)) {
        fprintf(stderr, "%s\n", err->message);
        g_error_free(err);
        return -1;
    }
    LLVMFuzzerTestOneInput((const uint8_t *)data, len);
    g_free(data);
    return 1;
}

int main(int argc, char **argv)
{
    int total = 0;

    for (int i = 1; i < argc; i++) {
        int n = run_path(argv[i]);
        if (n < 0) {
            return 1;
        }
        total += n;
    }
    printf("ran %d inputs\n", total);
    return 0;
}
