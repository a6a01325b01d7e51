/*
 * The VM's QMP commands: query-status, stop, cont, system_reset,
 * system_powerdown, query-cpus-fast, query-name, query-kvm, and quit as a
 * machine shutdown (qapi/run-state.json, qapi/machine.json, qapi/misc.json
 * of QEMU 7.2).  The block commands come from qmp/ and find the drives
 * through the backends machine.c registers.  The transitions themselves
 * are vmm/machine.c's; these handlers run on the main thread.
 */
#include "config.h"

#include "common/error.h"
#include "qmp/qmp.h"
#include "vmm/internal.h"

static Machine *qmp_machine;   /* the one machine this process serves */

static json_t *cmd_query_status(json_t *args, GError **errp)
{
    VmmRunState st = vmm_machine_run_state(qmp_machine);

    /* singlestep is a 7.2 member (gdbstub stepping): never on here */
    return json_pack("{s:s,s:b,s:b}", "status", vmm_run_state_name(st),
                     "singlestep", 0, "running", st == VMM_RUN_RUNNING);
}

static json_t *cmd_stop(json_t *args, GError **errp)
{
    vmm_machine_stop(qmp_machine);
    return json_object();
}

static json_t *cmd_cont(json_t *args, GError **errp)
{
    return vmm_machine_cont(qmp_machine, errp) ? json_object() : NULL;
}

/* Posted, as QEMU does: the reply goes out before RESET. */
static json_t *cmd_system_reset(json_t *args, GError **errp)
{
    vmm_machine_request(qmp_machine, VMM_REQ_SYSTEM_RESET, NULL);
    return json_object();
}

static json_t *cmd_system_powerdown(json_t *args, GError **errp)
{
    vmm_machine_powerdown(qmp_machine);
    return json_object();
}

/*
 * CpuInfoFast.  ferry has no QOM tree: qom-path names the vCPU in the
 * form QEMU uses for its CPUs, and props place every vCPU as a core of
 * socket 0 (QEMU 7.2's default topology for -smp N).
 */
static json_t *cmd_query_cpus_fast(json_t *args, GError **errp)
{
    Machine *m = qmp_machine;
    json_t *list = json_array();

    for (int i = 0; i < m->nr_vcpus; i++) {
        g_autofree char *path = g_strdup_printf("/machine/unattached/"
                                                "device[%d]", i);
        int tid;
        g_mutex_lock(&m->lock);
        tid = m->tids[i];
        g_mutex_unlock(&m->lock);
        json_array_append_new(list, json_pack(
            "{s:i,s:s,s:i,s:{s:i,s:i,s:i},s:s}", "cpu-index", i,
            "qom-path", path, "thread-id", tid, "props", "core-id", i,
            "thread-id", 0, "socket-id", 0, "target", "x86_64"));
    }
    return list;
}

static json_t *cmd_query_name(json_t *args, GError **errp)
{
    const char *name = qmp_machine->cfg.name;

    return name ? json_pack("{s:s}", "name", name) : json_object();
}

static json_t *cmd_query_kvm(json_t *args, GError **errp)
{
    bool kvm = !g_strcmp0(qmp_machine->ops->name, "kvm");

    return json_pack("{s:b,s:b}", "enabled", kvm, "present", kvm);
}

static void quit_machine(void *opaque)
{
    vmm_machine_request(opaque, VMM_REQ_QUIT, NULL);
}

void vmm_qmp_register(Machine *m)
{
    static const QmpCommand cmds[] = {
        { "query-status", "", cmd_query_status },
        { "stop", "", cmd_stop },
        { "cont", "", cmd_cont },
        { "system_reset", "", cmd_system_reset },
        { "system_powerdown", "", cmd_system_powerdown },
        { "query-cpus-fast", "", cmd_query_cpus_fast },
        { "query-name", "", cmd_query_name },
        { "query-kvm", "", cmd_query_kvm },
    };
    static const QmpEventSpec events[] = {
        { "STOP", "" },
        { "RESUME", "" },
        { "RESET", "guest:bool reason:str" },
        { "POWERDOWN", "" },
        { "SHUTDOWN", "guest:bool reason:str" },
    };

    g_assert(!qmp_machine);
    qmp_machine = m;
    qmp_register_commands(cmds, G_N_ELEMENTS(cmds));
    qmp_register_events(events, G_N_ELEMENTS(events));
    qmp_set_quit_handler(quit_machine, m);
}

void vmm_qmp_unregister(void)
{
    qmp_set_quit_handler(NULL, NULL);
    qmp_machine = NULL;
}
