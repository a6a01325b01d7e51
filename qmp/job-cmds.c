/*
 * Block job commands (placeholder until blockdev/job.c lands).
 */
#include "config.h"

#include "qmp/commands.h"
#include "qmp/qmp.h"

void qmp_register_job_commands(void)
{
}
