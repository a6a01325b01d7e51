/*
 * ferry: one binary, git-style subcommands.  Each subcommand owns its
 * argument parsing; this file only dispatches and prints help/version.
 */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "common/log.h"
#include "tools/ferry.h"

static int cmd_help(int argc, char **argv);

static const FerryCommand commands[] = {
    { "img", img_main, "create, inspect, check and convert disk images (qemu-img)" },
    { "nbd", nbd_main, "export a disk image over NBD (qemu-nbd)" },
    { "io", io_main, "run qemu-io style commands on an image (qemu-io)" },
    { "qmp", qmp_main, "send QMP commands, watch events; --serve: storage daemon" },
    { "run", run_main, "run a virtual machine on KVM or qtest (qemu-system-x86_64)" },
    { "help", cmd_help, "show help for ferry or one of its commands" },
};

static void usage(FILE *out)
{
    fprintf(out, "usage: ferry [--version] [--help] <command> [<args>]\n\n"
                 "Commands:\n");
    for (size_t i = 0; i < G_N_ELEMENTS(commands); i++) {
        fprintf(out, "   %-8s %s\n", commands[i].name, commands[i].summary);
    }
    fprintf(out, "\nSee 'ferry help <command>' or 'ferry <command> --help'.\n"
                 "Environment: FERRY_TRACE=blockdev,qcow2,img (trace points), "
                 "FERRY_LOG=error|warning|info|debug\n");
}

static const FerryCommand *find_command(const char *name)
{
    for (size_t i = 0; i < G_N_ELEMENTS(commands); i++) {
        if (!strcmp(commands[i].name, name)) {
            return &commands[i];
        }
    }
    return NULL;
}

static int cmd_help(int argc, char **argv)
{
    const FerryCommand *cmd;

    if (argc < 2) {
        usage(stdout);
        return 0;
    }
    cmd = find_command(argv[1]);
    if (!cmd || cmd->run == cmd_help) {
        fprintf(stderr, "ferry: '%s' is not a ferry command\n", argv[1]);
        return 1;
    }
    char *sub_argv[] = { argv[1], (char *)"--help", NULL };
    return cmd->run(2, sub_argv);
}

int main(int argc, char **argv)
{
    const FerryCommand *cmd;

    ferry_log_init("ferry");
    if (argc < 2) {
        usage(stderr);
        return 1;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V") ||
        !strcmp(argv[1], "version")) {
        printf("ferry version %s\n", PACKAGE_VERSION);
        return 0;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(stdout);
        return 0;
    }
    cmd = find_command(argv[1]);
    if (!cmd) {
        fprintf(stderr, "ferry: '%s' is not a ferry command. See 'ferry --help'.\n",
                argv[1]);
        return 1;
    }
    return cmd->run(argc - 1, argv + 1);
}
