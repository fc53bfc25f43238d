/*-------------------------------------------------------------------------
 *
 * daemon.c
 *		Supervised daemons (not written yet).
 *
 * Copyright (c) 2026, bgworker_demo developers
 *
 * IDENTIFICATION
 *		bgworker_demo/daemon.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"

#include "bgworker_demo.h"

TimestampTz
BgwdDaemonsSupervise(TimestampTz now)
{
	return DT_NOEND;
}

void
BgwdDaemonMain(Datum main_arg)
{
}

PG_FUNCTION_INFO_V1(bgworker_demo_spawn);
PG_FUNCTION_INFO_V1(bgworker_demo_send);
PG_FUNCTION_INFO_V1(bgworker_demo_stop);

Datum
bgworker_demo_spawn(PG_FUNCTION_ARGS)
{
	elog(ERROR, "not yet");
}

Datum
bgworker_demo_send(PG_FUNCTION_ARGS)
{
	elog(ERROR, "not yet");
}

Datum
bgworker_demo_stop(PG_FUNCTION_ARGS)
{
	elog(ERROR, "not yet");
}
