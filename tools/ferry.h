/*
 * The subcommands of the ferry binary.
 */
#ifndef FERRY_TOOLS_FERRY_H
#define FERRY_TOOLS_FERRY_H

#include <glib.h>

typedef struct FerryCommand {
    const char *name;
    int (*run)(int argc, char **argv);   /* argv[0] is the command name */
    const char *summary;
} FerryCommand;

int img_main(int argc, char **argv);
int nbd_main(int argc, char **argv);
int io_main(int argc, char **argv);
int qmp_main(int argc, char **argv);
int run_main(int argc, char **argv);

#endif
