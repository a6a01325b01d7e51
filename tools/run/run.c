/*
 * ferry run: parse the command line into a VmmConfig, build the machine,
 * run it, and turn how it ended into the exit code (docs/run.md).
 */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/log.h"
#include "common/units.h"
#include "tools/ferry.h"
#include "vmm/machine.h"

static void run_usage(FILE *out)
{
    fprintf(out,
"usage: ferry run [options]\n"
"\n"
"  --accel kvm|qtest       vCPU backend (default kvm; jit is reserved)\n"
"  --smp N                 number of vCPUs (default 1)\n"
"  -m, --memory SIZE       guest RAM (default 256M)\n"
"  --kernel FILE           bzImage (Linux 64-bit boot) or ELF (PVH or 64-bit entry)\n"
"  --initrd FILE           initial ramdisk\n"
"  --append CMDLINE        kernel command line\n"
"  --boot auto|linux|pvh|elf64   boot protocol (default auto)\n"
"  --drive SPEC[,opts]     virtio-blk disk on any node spec (file, qcow2 chain,\n"
"                          nbd://, json:{...}); opts: read-only=on, num-queues=N,\n"
"                          queue-size=N, serial=S, id=ID, format=F,\n"
"                          cache=writeback|none|unsafe\n"
"  --rng                   add a virtio-rng device\n"
"  --serial stdio|file:PATH|unix:PATH|none   where COM1 goes (default stdio)\n"
"  --qtest unix:PATH       with --accel qtest: connect to the test's socket\n"
"  --qmp SPEC              QMP server (unix:PATH)\n"
"  --name NAME             VM name\n"
"  --no-reboot             exit (code 2) when the guest resets\n"
"  --cpu host|baseline     CPUID: all KVM offers, or without what a\n"
"                          paravirtual KVM cannot emulate at CPL0\n"
"\n"
"Exit codes: 0 guest powered off or quit, 1 ferry failed, 2 guest reset with\n"
"--no-reboot, 3 the accelerator stopped on a guest error, 4 SIGINT/SIGTERM.\n");
}

int run_main(int argc, char **argv)
{
    enum {
        OPT_ACCEL = 256, OPT_SMP, OPT_KERNEL, OPT_INITRD, OPT_APPEND,
        OPT_BOOT, OPT_DRIVE, OPT_SERIAL, OPT_QTEST, OPT_QMP, OPT_NAME,
        OPT_NO_REBOOT, OPT_RNG, OPT_CPU,
    };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "accel", required_argument, NULL, OPT_ACCEL },
        { "smp", required_argument, NULL, OPT_SMP },
        { "memory", required_argument, NULL, 'm' },
        { "kernel", required_argument, NULL, OPT_KERNEL },
        { "initrd", required_argument, NULL, OPT_INITRD },
        { "append", required_argument, NULL, OPT_APPEND },
        { "boot", required_argument, NULL, OPT_BOOT },
        { "drive", required_argument, NULL, OPT_DRIVE },
        { "serial", required_argument, NULL, OPT_SERIAL },
        { "qtest", required_argument, NULL, OPT_QTEST },
        { "qmp", required_argument, NULL, OPT_QMP },
        { "name", required_argument, NULL, OPT_NAME },
        { "no-reboot", no_argument, NULL, OPT_NO_REBOOT },
        { "rng", no_argument, NULL, OPT_RNG },
        { "cpu", required_argument, NULL, OPT_CPU },
        { NULL, 0, NULL, 0 },
    };
    VmmConfig cfg = {
        .accel = "kvm", .smp = 1, .ram_bytes = 256u << 20, .boot = BOOT_AUTO,
        .serial = "stdio",
    };
    g_autoptr(GPtrArray) drives =
        g_ptr_array_new_with_free_func((GDestroyNotify)vmm_drive_conf_free);
    GError *err = NULL;
    Machine *m;
    uint64_t n;
    int c, code;

    optind = 0;
    while ((c = getopt_long(argc, argv, "+hm:", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            run_usage(stdout);
            return 0;
        case OPT_ACCEL: cfg.accel = optarg; break;
        case OPT_SMP:
            if (!ferry_parse_uint(optarg, "--smp", &n, &err) || n < 1 ||
                n > 255) {
                if (!err) {
                    ferry_error_set(&err, FERRY_ERROR_INVALID,
                                    "--smp %s: give 1 to 255", optarg);
                }
                goto fail;
            }
            cfg.smp = (int)n;
            break;
        case 'm': {
            /* a bare number means MiB, as in QEMU */
            g_autofree char *s = g_ascii_isdigit(optarg[strlen(optarg) - 1])
                                 ? g_strconcat(optarg, "M", NULL)
                                 : g_strdup(optarg);
            if (!ferry_parse_size(s, "-m", &cfg.ram_bytes, &err)) {
                goto fail;
            }
            if (cfg.ram_bytes < (16u << 20) || cfg.ram_bytes % 4096) {
                ferry_error_set(&err, FERRY_ERROR_INVALID,
                                "-m %s: need at least 16 MiB, in whole pages",
                                optarg);
                goto fail;
            }
            break;
        }
        case OPT_KERNEL: cfg.kernel = optarg; break;
        case OPT_INITRD: cfg.initrd = optarg; break;
        case OPT_APPEND: cfg.append = optarg; break;
        case OPT_BOOT:
            if (!boot_parse_protocol(optarg, &cfg.boot, &err)) {
                goto fail;
            }
            break;
        case OPT_DRIVE: {
            VmmDriveConf *d = vmm_parse_drive(optarg, &err);
            if (!d) {
                goto fail;
            }
            g_ptr_array_add(drives, d);
            break;
        }
        case OPT_SERIAL: cfg.serial = optarg; break;
        case OPT_QTEST: cfg.qtest = optarg; break;
        case OPT_QMP: cfg.qmp = optarg; break;
        case OPT_NAME: cfg.name = optarg; break;
        case OPT_NO_REBOOT: cfg.no_reboot = true; break;
        case OPT_RNG: cfg.rng = true; break;
        case OPT_CPU:
            if (!strcmp(optarg, "baseline")) {
                cfg.cpuid_baseline = true;
            } else if (strcmp(optarg, "host")) {
                ferry_error_set(&err, FERRY_ERROR_INVALID,
                                "--cpu %s: use host or baseline", optarg);
                goto fail;
            }
            break;
        default:
            run_usage(stderr);
            return 1;
        }
    }
    if (optind < argc) {
        ferry_error_set(&err, FERRY_ERROR_INVALID,
                        "unexpected argument '%s'", argv[optind]);
        goto fail;
    }
    if (cfg.qmp) {
        ferry_error_set(&err, FERRY_ERROR_UNSUPPORTED,
                        "--qmp: the QMP server (qmp/) is not in this build yet");
        goto fail;
    }
    cfg.drives = drives;
    m = vmm_machine_new(&cfg, &err);
    if (!m) {
        goto fail;
    }
    code = vmm_machine_run(m);
    vmm_machine_free(m);
    return code;

fail:
    fprintf(stderr, "ferry run: %s\n", err->message);
    g_error_free(err);
    return 1;
}
