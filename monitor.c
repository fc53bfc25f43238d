/*-------------------------------------------------------------------------
 *
 * monitor.c
 *		Two static workers that show the other start times: the monitor
 *		(postmaster start, no database) and the standby reporter
 *		(consistent state, read-only queries on a hot standby).
 *
 * The monitor starts with the postmaster, before recovery, and never
 * connects to a database: all it may touch is shared memory.  Every
 * bgworker_demo.monitor_interval it writes one line with what the slots
 * and counters say.  It is the example of a worker that needs no database
 * and of BgWorkerStart_PostmasterStart.
 *
 * The standby reporter starts as soon as the server reaches a consistent
 * state, which on a hot standby is long before recovery ends.  There it
 * runs a read-only query every bgworker_demo.standby_interval and logs the
 * replay lag; on a primary (or after promotion) it says so once and
 * sleeps until shutdown.
 *
 * Both exit with 1 on SIGTERM (die), so the postmaster would restart them
 * after restart_interval if that happened outside a shutdown.
 *
 * Copyright (c) 2026, bgworker_demo developers
 *
 * IDENTIFICATION
 *		bgworker_demo/monitor.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "bgworker_demo.h"

static void monitor_detach(int code, Datum arg);
static void monitor_report(void);
static void standby_report(void);
static void wait_interval(int interval_s);

/*
 * BgwdMonitorMain
 *		Entry point of the monitor.
 */
void
BgwdMonitorMain(Datum main_arg)
{
	MemoryContext loop_cxt;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	BgwdShmemAttach();
	(void) BgwdClaimSlot(BGWD_KIND_MONITOR, InvalidOid, InvalidOid);
	before_shmem_exit(monitor_detach, (Datum) 0);

	ereport(LOG,
			(errmsg("bgworker_demo monitor started (no database connection)")));

	loop_cxt = AllocSetContextCreate(TopMemoryContext,
									 "bgworker_demo monitor loop",
									 ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		wait_interval(bgworker_demo_monitor_interval);

		MemoryContextSwitchTo(loop_cxt);
		if (bgworker_demo_monitor_interval > 0)
			monitor_report();
		MemoryContextSwitchTo(TopMemoryContext);
		MemoryContextReset(loop_cxt);
	}
}

/*
 * wait_interval
 *		Sleeps interval_s seconds (forever if 0) or until the latch is set;
 *		handles interrupts and reloads.  A reload that changes the interval
 *		takes effect at the next wait.
 */
static void
wait_interval(int interval_s)
{
	int			events = WL_LATCH_SET | WL_EXIT_ON_PM_DEATH;

	if (interval_s > 0)
		events |= WL_TIMEOUT;
	(void) WaitLatch(MyLatch, events, (long) interval_s * 1000L,
					 PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
		ereport(DEBUG1,
				(errmsg_internal("bgworker_demo %s reloaded its configuration",
								 MyBgworkerEntry->bgw_type)));
	}
}

/*
 * monitor_detach
 *		before_shmem_exit callback: gives back the slot.
 */
static void
monitor_detach(int code, Datum arg)
{
	BgwdReleaseSlot(MyBgwdSlot);
}

/*
 * monitor_report
 *		Writes one line: launchers running, workers by state, counters.
 */
static void
monitor_report(void)
{
	int			launchers = 0;
	int			running = 0;
	int			idle = 0;
	int			starting = 0;
	int			daemons = 0;
	int			i;

	LWLockAcquire(BgwdShmem->lock, LW_SHARED);
	for (i = 0; i < BgwdShmem->nlaunchers; i++)
		if (BgwdShmem->launchers[i].pid != 0)
			launchers++;
	for (i = 0; i < BgwdShmem->nslots; i++)
	{
		BgwdSlot   *s = &BgwdShmem->slots[i];

		if (s->kind == BGWD_KIND_DAEMON && s->state != BGWD_STATE_FREE)
			daemons++;
		if (s->kind != BGWD_KIND_WORKER)
			continue;
		if (s->state == BGWD_STATE_RUNNING)
			running++;
		else if (s->state == BGWD_STATE_IDLE)
			idle++;
		else if (s->state == BGWD_STATE_STARTING)
			starting++;
	}
	LWLockRelease(BgwdShmem->lock);

	ereport(LOG,
			(errmsg("bgworker_demo monitor: launchers %d/%d, workers running %d idle %d starting %d, daemons %d, "
					"jobs submitted " UINT64_FORMAT " succeeded " UINT64_FORMAT " failed " UINT64_FORMAT
					", workers started " UINT64_FORMAT,
					launchers, BgwdShmem->nlaunchers, running, idle, starting,
					daemons,
					pg_atomic_read_u64(&BgwdShmem->jobs_submitted),
					pg_atomic_read_u64(&BgwdShmem->jobs_succeeded),
					pg_atomic_read_u64(&BgwdShmem->jobs_failed),
					pg_atomic_read_u64(&BgwdShmem->workers_started))));
}

/*
 * BgwdStandbyMain
 *		Entry point of the standby reporter; bgw_extra names its database.
 */
void
BgwdStandbyMain(Datum main_arg)
{
	MemoryContext loop_cxt;
	bool		said_primary = false;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	BgwdShmemAttach();
	BackgroundWorkerInitializeConnection(MyBgworkerEntry->bgw_extra, NULL, 0);
	(void) BgwdClaimSlot(BGWD_KIND_STANDBY, MyDatabaseId, InvalidOid);
	before_shmem_exit(monitor_detach, (Datum) 0);
	pgstat_report_appname("bgworker_demo standby");

	ereport(LOG,
			(errmsg("bgworker_demo standby reporter started in database \"%s\" (%s)",
					MyBgworkerEntry->bgw_extra,
					RecoveryInProgress() ? "in recovery" : "not in recovery")));

	loop_cxt = AllocSetContextCreate(TopMemoryContext,
									 "bgworker_demo standby loop",
									 ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		if (RecoveryInProgress())
		{
			MemoryContextSwitchTo(loop_cxt);
			if (bgworker_demo_standby_interval > 0)
				standby_report();
			MemoryContextSwitchTo(TopMemoryContext);
			MemoryContextReset(loop_cxt);
			wait_interval(bgworker_demo_standby_interval);
		}
		else
		{
			/* A primary, or promoted: nothing to report any more. */
			if (!said_primary)
				ereport(LOG,
						(errmsg("bgworker_demo standby reporter: this server is not a standby; idle until shutdown")));
			said_primary = true;
			wait_interval(0);
		}
	}
}

/*
 * standby_report
 *		Runs the read-only lag query in its own transaction and logs it.
 */
static void
standby_report(void)
{
	int			rc;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "bgworker_demo standby: replay lag");

	rc = SPI_execute("SELECT pg_catalog.pg_last_wal_replay_lsn()::text,"
					 " COALESCE(round(extract(epoch FROM pg_catalog.now() -"
					 "   pg_catalog.pg_last_xact_replay_timestamp()) * 1000)::text, 'unknown'),"
					 " pg_catalog.pg_is_wal_replay_paused()::text",
					 true, 1);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "lag query failed: %s", SPI_result_code_string(rc));

	ereport(LOG,
			(errmsg("bgworker_demo standby: replayed up to %s, replay lag %s ms, paused %s",
					SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1),
					SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2),
					SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3))));

	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
}
