/*-------------------------------------------------------------------------
 *
 * launcher.c
 *		The launcher: one per database, the clock and the supervisor of
 *		that database's job workers and daemons.
 *
 * Architecture
 * ------------
 * The postmaster starts one launcher per database named in
 * bgworker_demo.databases once recovery has finished (a hot standby has no
 * launcher: nothing could be written there).  The launcher connects as the
 * bootstrap superuser and does no job itself; each round it
 *
 *	1. requeues the jobs of workers that died mid-job (transaction A),
 *	2. turns due schedules into jobs and supervises daemons (also A),
 *	3. prunes old history, at most once a minute, and notes when the
 *	   oldest finished job will be old enough to go (also A),
 *	4. after A has committed, looks at which roles have due jobs and makes
 *	   sure each has a worker: it sets the latch of an idle one or
 *	   registers a new dynamic worker connected as that role
 *	   (transaction B),
 *
 * and then sleeps on its latch exactly until the next thing it knows is due
 * (a delayed job, a schedule, a daemon restart, history to prune), with no
 * fixed naptime.
 * Its latch is set by submit() when no idle worker of the submitting role
 * can take the job (commit callback, jobs.c), by the postmaster when one of
 * its workers starts or stops (bgw_notify_pid), by a worker that exits, by
 * schedule edits and by wakeup().  An idle server costs no CPU.
 *
 * Why the split: a job runs with the rights of the role that submitted it,
 * and a background worker connects as one role for life, so the jobs of
 * each role need a process of their own.  The launcher is the only
 * process that sees all roles' work, so it hands out the
 * bgworker_demo.max_workers slots: every role with due jobs gets a worker
 * before any role gets a second one, and when the slots are full while a
 * role has none, the launcher asks one worker of the role with the most
 * (or the longest-running one) to exit after its current job.  Workers
 * leave by themselves after bgworker_demo.idle_timeout without work.
 *
 * Shared state: the launcher writes its pid and latch in its BgwdLauncher
 * entry and reserves slots for the workers it registers; each worker
 * adopts its slot and publishes its state and current job there (see
 * bgworker_demo.h for the locking rules).
 *
 * Failure: RegisterDynamicBackgroundWorker returns false when
 * max_worker_processes is used up (parallel query and replication use the
 * same pool).  That is a normal state: jobs wait, the launcher says so once
 * in the log, and retries every second until a start succeeds.  A worker
 * that dies before adopting its slot is noticed through its handle and the
 * slot is freed.  An error inside a round is logged, the transaction is
 * aborted and the launcher carries on after a second; a FATAL error or
 * SIGTERM ends it, and the postmaster restarts it after
 * bgworker_demo.restart_interval.  A database that cannot be connected to
 * makes the launcher fail at start; it then backs off exponentially (up to
 * an hour) unless wakeup() in that database asks it back.
 *
 * Races that remain: a worker may exit idle at the moment a job is
 * submitted for it; the exiting worker wakes the launcher, which looks
 * again.  A job whose worker dies is found by the orphan check, which
 * reads the set of live workers after its snapshot was taken, so a job
 * claimed by a worker that started after the check began is never taken
 * for an orphan.
 *
 * Copyright (c) 2026, bgworker_demo developers
 *
 * IDENTIFICATION
 *		bgworker_demo/launcher.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <setjmp.h>

#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "bgworker_demo.h"

/* Longest back-off between two failed starts of a launcher, in seconds */
#define LAUNCHER_MAX_BACKOFF	3600

/* How often history is pruned, at most */
#define PRUNE_INTERVAL_MS		60000

/* Retry period when a worker could not be registered */
#define START_RETRY_MS			1000

/*
 * When the slots are full, a role has no worker and no worker can be asked
 * to make room yet (they are all still starting), look again this soon.
 */
#define STARVED_RECHECK_MS		20

/* A slot STARTING for longer than this with no handle is given up */
#define STARTING_TIMEOUT_MS		60000

/* Longest sleep: WaitLatch's timeout must fit an int; we recompute after */
#define MAX_SLEEP_MS			(24L * 3600 * 1000)

/* How many roles' last start times the launcher remembers */
#define SERVED_MEMORY			64

/* Demand of one role, as the launcher's round computes it */
typedef struct RoleDemand
{
	Oid			roleid;
	int			due;			/* due jobs, capped at max_workers */
	int			have;			/* our workers for it (any state) */
	int			idle;			/* of which idle */
	TimestampTz served;			/* when we last started a worker for it */
} RoleDemand;

/* When the launcher last started a worker for a role (ours, not shared) */
typedef struct RoleServed
{
	Oid			roleid;
	TimestampTz at;
} RoleServed;

static void launcher_backoff(BgwdLauncher *me);
static void launcher_connect_failed(int code, Datum arg);
static void launcher_detach(int code, Datum arg);
static void launcher_error_context(void *arg);
static TimestampTz launcher_round(void);
static bool extension_ready(void);
static void requeue_orphans(void);
static TimestampTz prune_history(TimestampTz now);
static TimestampTz supervise_workers(TimestampTz now);
static bool role_can_run(Oid roleid);
static void fail_due_jobs(Oid roleid, TimestampTz now, const char *message);
static void reap_failed_starts(void);
static void count_workers(RoleDemand *roles, int nroles, int *total);
static bool start_worker(Oid roleid);
static TimestampTz last_served(Oid roleid);
static void note_served(Oid roleid, TimestampTz at);
static bool request_one_exit(RoleDemand *roles, int nroles);
static void launcher_sleep(TimestampTz until);

/* Which launcher entry is ours, and whether we got connected */
static int	MyLauncherIndex = -1;
static bool launcher_connected = false;

/* Handles of the workers we registered, by slot index */
static BackgroundWorkerHandle **worker_handles = NULL;

/* Recent worker starts per role, for the fair tie-break */
static RoleServed served[SERVED_MEMORY];

/* workers_exited when the orphan check last ran; the first round checks */
static uint64 exits_checked = PG_UINT64_MAX;

/* When history was last pruned */
static TimestampTz last_prune = 0;

/* Said once, until the state changes */
static bool said_missing = false;
static bool said_paused = false;
static bool said_no_slots = false;
static bool said_full = false;

/* Set when a registration failed: retry after START_RETRY_MS */
static bool start_failed = false;

/* Memory reset at the end of every round */
static MemoryContext LauncherLoopContext = NULL;

/*
 * BgwdLauncherMain
 *		Entry point of a launcher; main_arg is its index in
 *		bgworker_demo.databases.
 */
void
BgwdLauncherMain(Datum main_arg)
{
	BgwdLauncher *me;
	ErrorContextCallback errcallback;
	sigjmp_buf	local_sigjmp_buf;

	MyLauncherIndex = DatumGetInt32(main_arg);

	/* SIGTERM aborts what we do and exits with 1: nothing to finish. */
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	BgwdShmemAttach();
	if (MyLauncherIndex < 0 || MyLauncherIndex >= BgwdShmem->nlaunchers)
		elog(FATAL, "launcher index %d out of range", MyLauncherIndex);
	me = &BgwdShmem->launchers[MyLauncherIndex];

	/* Publish our latch first, so that wakeup() can cut a back-off short. */
	LWLockAcquire(BgwdShmem->lock, LW_EXCLUSIVE);
	me->pid = MyProcPid;
	me->latch = MyLatch;
	LWLockRelease(BgwdShmem->lock);
	before_shmem_exit(launcher_detach, (Datum) 0);

	launcher_backoff(me);

	/*
	 * A database that does not exist or does not allow connections makes
	 * InitPostgres fail with FATAL.  The callback counts the failure for the
	 * next start's back-off, and the context says who we are and what to do.
	 */
	before_shmem_exit(launcher_connect_failed, (Datum) 0);
	errcallback.callback = launcher_error_context;
	errcallback.arg = me->dbname;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;
	BackgroundWorkerInitializeConnection(me->dbname, NULL, 0);
	error_context_stack = errcallback.previous;
	launcher_connected = true;

	LWLockAcquire(BgwdShmem->lock, LW_EXCLUSIVE);
	me->dboid = MyDatabaseId;
	me->connect_failures = 0;
	LWLockRelease(BgwdShmem->lock);
	(void) BgwdClaimSlot(BGWD_KIND_LAUNCHER, MyDatabaseId, InvalidOid);

	pgstat_report_appname("bgworker_demo launcher");
	ereport(LOG,
			(errmsg("bgworker_demo launcher started for database \"%s\"",
					me->dbname)));

	worker_handles = MemoryContextAllocZero(TopMemoryContext,
											sizeof(BackgroundWorkerHandle *) *
											BgwdShmem->nslots);
	LauncherLoopContext = AllocSetContextCreate(TopMemoryContext,
												"bgworker_demo launcher loop",
												ALLOCSET_DEFAULT_SIZES);

	/*
	 * An ERROR in a round must not end the launcher: log it, abort the
	 * transaction and go on, as the autovacuum launcher does.
	 */
	if (sigsetjmp(local_sigjmp_buf, 1) != 0)
	{
		HOLD_INTERRUPTS();
		error_context_stack = NULL;
		EmitErrorReport();
		AbortCurrentTransaction();
		LWLockReleaseAll();
		ConditionVariableCancelSleep();
		MemoryContextSwitchTo(TopMemoryContext);
		FlushErrorState();
		MemoryContextReset(LauncherLoopContext);
		RESUME_INTERRUPTS();

		/* Do not spin on an error that repeats. */
		launcher_sleep(TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												   1000));
	}
	PG_exception_stack = &local_sigjmp_buf;

	for (;;)
	{
		TimestampTz next;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		MemoryContextSwitchTo(LauncherLoopContext);
		next = launcher_round();
		MemoryContextSwitchTo(TopMemoryContext);
		MemoryContextReset(LauncherLoopContext);

		launcher_sleep(next);
	}
}

/*
 * launcher_backoff
 *		Before connecting again after failed starts, waits
 *		restart_interval * 2^(failures - 1) more seconds (at most an hour),
 *		unless wakeup() or a reload says to try now.
 */
static void
launcher_backoff(BgwdLauncher *me)
{
	int			failures;
	bool		wake;
	long		delay_s;
	TimestampTz until;

	LWLockAcquire(BgwdShmem->lock, LW_EXCLUSIVE);
	failures = me->connect_failures;
	wake = me->wake_requested;
	me->wake_requested = false;
	LWLockRelease(BgwdShmem->lock);

	if (failures < 2 || wake)
		return;

	delay_s = bgworker_demo_restart_interval;
	while (--failures > 1 && delay_s < LAUNCHER_MAX_BACKOFF)
		delay_s *= 2;
	delay_s = Min(delay_s, LAUNCHER_MAX_BACKOFF);

	ereport(LOG,
			(errmsg("bgworker_demo launcher for database \"%s\" waits %ld s before connecting again",
					me->dbname, delay_s)));

	until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), delay_s * 1000);
	for (;;)
	{
		long		ms;
		int			rc;

		ms = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), until);
		if (ms <= 0)
			break;
		rc = WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					   ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending || (rc & WL_LATCH_SET))
		{
			ConfigReloadPending = false;
			break;
		}
	}
}

/*
 * launcher_connect_failed
 *		before_shmem_exit callback: counts a start that did not get as far
 *		as a database connection.
 */
static void
launcher_connect_failed(int code, Datum arg)
{
	if (launcher_connected)
		return;
	LWLockAcquire(BgwdShmem->lock, LW_EXCLUSIVE);
	BgwdShmem->launchers[MyLauncherIndex].connect_failures++;
	LWLockRelease(BgwdShmem->lock);
}

/*
 * launcher_detach
 *		before_shmem_exit callback: withdraws our latch and our slot, so that
 *		nobody sets a latch that is about to go away.
 */
static void
launcher_detach(int code, Datum arg)
{
	BgwdLauncher *me = &BgwdShmem->launchers[MyLauncherIndex];

	LWLockAcquire(BgwdShmem->lock, LW_EXCLUSIVE);
	me->pid = 0;
	me->latch = NULL;
	LWLockRelease(BgwdShmem->lock);
	BgwdReleaseSlot(MyBgwdSlot);
}

/*
 * launcher_error_context
 *		Error context while connecting: names the launcher and says what
 *		to do about a database that cannot be used.
 */
static void
launcher_error_context(void *arg)
{
	errcontext("bgworker_demo launcher for database \"%s\"", (char *) arg);
	errhint("Create the database, allow connections to it, or remove it from bgworker_demo.databases; "
			"the launcher tries again after a growing delay, or at once after wakeup() in that database.");
}

/*
 * launcher_round
 *		One round of the launcher's work, in two transactions (see the file
 *		header).  Returns when the launcher must look again at the latest;
 *		DT_NOEND if only a latch can bring new work.
 */
static TimestampTz
launcher_round(void)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz next = DT_NOEND;
	bool		ready;

	/* Transaction A: repair, schedules, daemons, pruning */
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "bgworker_demo launcher: maintenance");

	ready = extension_ready();
	if (ready && bgworker_demo_enabled)
	{
		BgwdOwnerContext owner;
		uint64		exits = pg_atomic_read_u64(&BgwdShmem->workers_exited);

		said_paused = false;

		BgwdBecomeOwner(&owner);

		/*
		 * A job can only be orphaned by a process that is gone: look when
		 * one has gone since the last look (a crash restart makes us start
		 * anew, so the first round looks too).  The scan visits every job
		 * run since the last VACUUM; doing it every round made a busy
		 * launcher slow.
		 */
		if (exits != exits_checked)
		{
			exits_checked = exits;
			requeue_orphans();
		}
		next = Min(next, BgwdSchedulesEnqueueDue(now));
		next = Min(next, BgwdDaemonsSupervise(now));
		next = Min(next, prune_history(now));
		BgwdRestoreUser(&owner);
	}
	else if (ready && !said_paused)
	{
		ereport(LOG,
				(errmsg("bgworker_demo is paused in database \"%s\"",
						get_database_name(MyDatabaseId)),
				 errhint("Set bgworker_demo.enabled to on and reload to resume.")));
		said_paused = true;
	}

	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();

	/* Transaction B: workers for the roles with due jobs */
	if (ready && bgworker_demo_enabled)
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, "bgworker_demo launcher: workers");

		next = Min(next, supervise_workers(GetCurrentTimestamp()));

		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}

	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);

	if (start_failed)
		next = Min(next, TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													 START_RETRY_MS));
	return next;
}

/*
 * extension_ready
 *		Whether CREATE EXTENSION bgworker_demo has been run in this database.
 *		Says so in the log once when it has not.
 */
static bool
extension_ready(void)
{
	if (OidIsValid(get_extension_oid("bgworker_demo", true)))
	{
		said_missing = false;
		return true;
	}

	if (!said_missing)
	{
		ereport(LOG,
				(errmsg("bgworker_demo launcher waits for the extension in database \"%s\"",
						get_database_name(MyDatabaseId)),
				 errhint("Run CREATE EXTENSION bgworker_demo in that database.")));
		said_missing = true;
	}
	return false;
}

/*
 * requeue_orphans
 *		Puts back in the queue the jobs marked running by a process that is
 *		gone (crash, immediate shutdown, FATAL), or fails them when that was
 *		their last attempt: the attempt was counted when the job was claimed,
 *		so a job that crashes the server runs at most max_attempts times.
 *
 * The set of live workers is read by workers() while the UPDATE runs,
 * after its snapshot: a job that the snapshot sees as running was claimed
 * by a process that had its slot before, so it is either in the set or
 * dead.  Caller runs as the extension owner inside a transaction with SPI.
 */
static void
requeue_orphans(void)
{
	static BgwdQuery q = {
		"UPDATE bgworker_demo.jobs SET"
		" status = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'queued' END,"
		" finished_at = CASE WHEN attempts >= max_attempts THEN clock_timestamp() END,"
		" last_error = format('server process %s exited during attempt %s of %s (crash or immediate shutdown)',"
		"   worker_pid, attempts, max_attempts),"
		" sqlstate = '57P02',"
		" worker_pid = NULL"
		" WHERE status = 'running'"
		" AND worker_pid <> ALL (ARRAY(SELECT w.pid FROM bgworker_demo.workers() w"
		"   WHERE w.pid IS NOT NULL))"
		" RETURNING id, status, last_error",
		0
	};
	uint64		i;

	BgwdQueryRun(&q, NULL, NULL, false, 0);
	if (SPI_processed > 0)
		BgwdBroadcastAfterCommit();
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;

		ereport(LOG,
				(errmsg("bgworker_demo job %s %s: %s",
						SPI_getvalue(tup, desc, 1),
						strcmp(SPI_getvalue(tup, desc, 2), "failed") == 0 ?
						"failed" : "requeued",
						SPI_getvalue(tup, desc, 3))));
	}
}

/*
 * prune_history
 *		Deletes finished jobs older than bgworker_demo.history_retention,
 *		10000 rows at a time, at most once every PRUNE_INTERVAL_MS (or
 *		every retention period, if that is shorter).  Returns when the
 *		oldest remaining finished job will be old enough to go, so that an
 *		idle launcher wakes for it; DT_NOEND if there is nothing to prune.
 */
static TimestampTz
prune_history(TimestampTz now)
{
	static BgwdQuery q = {
		"DELETE FROM bgworker_demo.jobs WHERE id IN"
		" (SELECT id FROM bgworker_demo.jobs"
		"  WHERE finished_at IS NOT NULL AND finished_at < $1 LIMIT 10000)",
		1, {TIMESTAMPTZOID}
	};
	static BgwdQuery oldest_q = {
		"SELECT min(finished_at) FROM bgworker_demo.jobs WHERE finished_at IS NOT NULL",
		0
	};
	int64		retention_us = (int64) bgworker_demo_history_retention * USECS_PER_SEC;
	long		interval_ms = Min((long) PRUNE_INTERVAL_MS,
								  (long) bgworker_demo_history_retention * 1000);
	TimestampTz next_allowed;
	TimestampTz oldest;
	Datum		values[1];
	bool		isnull;
	Datum		d;

	if (bgworker_demo_history_retention == 0)
		return DT_NOEND;

	if (TimestampDifferenceExceeds(last_prune, now, interval_ms))
	{
		last_prune = now;
		values[0] = TimestampTzGetDatum(now - retention_us);
		BgwdQueryRun(&q, values, NULL, false, 0);
		if (SPI_processed > 0)
			ereport(DEBUG1,
					(errmsg_internal("bgworker_demo pruned " UINT64_FORMAT " finished jobs",
									 SPI_processed)));
	}
	next_allowed = TimestampTzPlusMilliseconds(last_prune, interval_ms);

	/* Not read-only: it must see what the DELETE just removed. */
	BgwdQueryRun(&oldest_q, NULL, NULL, false, 0);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		return DT_NOEND;
	oldest = DatumGetTimestampTz(d);
	return Max(oldest + retention_us, next_allowed);
}

/*
 * supervise_workers
 *		Makes sure every role with due jobs has a worker, within
 *		max_workers, fairly.  Returns the earliest run_at of a job that is
 *		not due yet (DT_NOEND if none).
 *
 * Runs in transaction B with SPI connected.
 */
static TimestampTz
supervise_workers(TimestampTz now)
{
	static BgwdQuery q = {
		"WITH RECURSIVE r(u) AS ("
		"  SELECT min(username::oid) FROM bgworker_demo.jobs WHERE status = 'queued'"
		" UNION ALL"
		"  SELECT (SELECT min(j.username::oid) FROM bgworker_demo.jobs j"
		"          WHERE j.status = 'queued' AND j.username::oid > r.u)"
		"  FROM r WHERE r.u IS NOT NULL)"
		" SELECT r.u,"
		"  (SELECT count(*) FROM (SELECT 1 FROM bgworker_demo.jobs j"
		"     WHERE j.status = 'queued' AND j.username::oid = r.u AND j.run_at <= $1"
		"     LIMIT $2) d)::int4,"
		"  (SELECT min(j.run_at) FROM bgworker_demo.jobs j"
		"     WHERE j.status = 'queued' AND j.username::oid = r.u AND j.run_at > $1)"
		" FROM r WHERE r.u IS NOT NULL",
		2, {TIMESTAMPTZOID, INT4OID}
	};
	BgwdOwnerContext owner;
	Datum		values[2];
	RoleDemand *roles;
	int			nroles = 0;
	int			total;
	int			budget;
	bool		starved = false;
	TimestampTz next = DT_NOEND;
	int			i;

	reap_failed_starts();

	values[0] = TimestampTzGetDatum(now);
	values[1] = Int32GetDatum(Max(bgworker_demo_max_workers, 1));
	BgwdBecomeOwner(&owner);
	BgwdQueryRun(&q, values, NULL, true, 0);
	BgwdRestoreUser(&owner);

	roles = palloc0(sizeof(RoleDemand) * (SPI_processed + 1));
	for (i = 0; i < (int) SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		Datum		d;

		d = SPI_getbinval(tup, desc, 3, &isnull);
		if (!isnull)
			next = Min(next, DatumGetTimestampTz(d));

		roles[nroles].roleid = DatumGetObjectId(SPI_getbinval(tup, desc, 1, &isnull));
		roles[nroles].due = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
		roles[nroles].served = last_served(roles[nroles].roleid);
		if (roles[nroles].due > 0)
			nroles++;
	}

	/* Roles that cannot have a worker: fail their due jobs, say why. */
	for (i = 0; i < nroles; i++)
	{
		if (!role_can_run(roles[i].roleid))
		{
			roles[i] = roles[nroles - 1];
			nroles--;
			i--;
		}
	}

	count_workers(roles, nroles, &total);

	/* Idle workers of roles with due jobs: just wake them. */
	LWLockAcquire(BgwdShmem->lock, LW_SHARED);
	for (i = 0; i < BgwdShmem->nslots; i++)
	{
		BgwdSlot   *s = &BgwdShmem->slots[i];
		int			r;

		if (s->kind != BGWD_KIND_WORKER || s->state != BGWD_STATE_IDLE ||
			s->dboid != MyDatabaseId || s->latch == NULL)
			continue;
		for (r = 0; r < nroles; r++)
			if (roles[r].roleid == s->roleid)
				SetLatch(s->latch);
	}
	LWLockRelease(BgwdShmem->lock);

	/*
	 * Hand out free slots one at a time to the role with the fewest
	 * workers that still has more due jobs than workers; between equals,
	 * to the one we served least recently, so that a slot freed by one
	 * role goes round instead of back to it.
	 */
	budget = bgworker_demo_max_workers - total;
	start_failed = false;
	while (budget > 0)
	{
		int			best = -1;
		int			r;

		for (r = 0; r < nroles; r++)
		{
			if (roles[r].have >= roles[r].due)
				continue;
			if (best < 0 || roles[r].have < roles[best].have ||
				(roles[r].have == roles[best].have &&
				 roles[r].served < roles[best].served))
				best = r;
		}
		if (best < 0)
			break;
		if (!start_worker(roles[best].roleid))
		{
			start_failed = true;
			break;
		}
		roles[best].have++;
		roles[best].served = GetCurrentTimestamp();
		note_served(roles[best].roleid, roles[best].served);
		budget--;
	}

	for (i = 0; i < nroles; i++)
		if (roles[i].have == 0)
			starved = true;

	if (starved && !start_failed)
	{
		if (!said_full)
		{
			ereport(LOG,
					(errmsg("bgworker_demo: all %d job worker slots are busy; jobs wait",
							bgworker_demo_max_workers),
					 errhint("Raise bgworker_demo.max_workers to run more jobs at once.")));
			said_full = true;
		}
		if (!request_one_exit(roles, nroles))
			next = Min(next, TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														 STARVED_RECHECK_MS));
	}
	else if (!starved)
		said_full = false;

	return next;
}

/*
 * role_can_run
 *		Whether a worker can connect as the role.  On PostgreSQL 15 a
 *		background worker can only connect as a role with LOGIN; a role that
 *		was dropped cannot be connected as at all.  If not, the role's due
 *		jobs fail with a message saying why.
 */
static bool
role_can_run(Oid roleid)
{
	HeapTuple	tup;
	char	   *message = NULL;

	tup = SearchSysCache1(AUTHOID, ObjectIdGetDatum(roleid));
	if (!HeapTupleIsValid(tup))
		message = psprintf("role with OID %u does not exist", roleid);
	else
	{
		Form_pg_authid form = (Form_pg_authid) GETSTRUCT(tup);

		if (!form->rolcanlogin)
			message = psprintf("role \"%s\" is not permitted to log in; "
							   "a background worker on PostgreSQL 15 can only connect as a role with LOGIN",
							   NameStr(form->rolname));
		ReleaseSysCache(tup);
	}

	if (message == NULL)
		return true;

	ereport(LOG,
			(errmsg("bgworker_demo cannot run the jobs of a role: %s", message),
			 errhint("Grant LOGIN to the role (ALTER ROLE ... LOGIN); its due jobs were marked failed.")));
	fail_due_jobs(roleid, GetCurrentTimestamp(), message);
	return false;
}

/*
 * fail_due_jobs
 *		Marks the due queued jobs of a role failed with the message.
 */
static void
fail_due_jobs(Oid roleid, TimestampTz now, const char *message)
{
	static BgwdQuery q = {
		"UPDATE bgworker_demo.jobs SET status = 'failed', finished_at = clock_timestamp(),"
		" last_error = $3, sqlstate = '28000'"
		" WHERE status = 'queued' AND username::oid = $1 AND run_at <= $2",
		3, {OIDOID, TIMESTAMPTZOID, TEXTOID}
	};
	BgwdOwnerContext owner;
	Datum		values[3];

	values[0] = ObjectIdGetDatum(roleid);
	values[1] = TimestampTzGetDatum(now);
	values[2] = CStringGetTextDatum(message);
	BgwdBecomeOwner(&owner);
	BgwdQueryRun(&q, values, NULL, false, 0);
	BgwdRestoreUser(&owner);

	/* Waiters must look after our commit, or they would see no change. */
	if (SPI_processed > 0)
		BgwdBroadcastAfterCommit();
}

/*
 * reap_failed_starts
 *		Frees the slots of workers we registered that stopped before they
 *		adopted their slot (fork failure, FATAL while connecting), and of
 *		reservations left STARTING by an earlier launcher for too long.
 */
static void
reap_failed_starts(void)
{
	int			i;
	TimestampTz now = GetCurrentTimestamp();

	for (i = 0; i < BgwdShmem->nslots; i++)
	{
		BgwdSlot   *s = &BgwdShmem->slots[i];
		bool		starting;
		bool		give_up = false;

		LWLockAcquire(BgwdShmem->lock, LW_SHARED);
		starting = s->state == BGWD_STATE_STARTING && s->dboid == MyDatabaseId;
		if (starting && worker_handles[i] == NULL)
			give_up = TimestampDifferenceExceeds(s->reserved_at, now,
												 STARTING_TIMEOUT_MS);
		LWLockRelease(BgwdShmem->lock);

		if (starting && worker_handles[i] != NULL)
		{
			pid_t		pid;

			if (GetBackgroundWorkerPid(worker_handles[i], &pid) == BGWH_STOPPED)
				give_up = true;
		}
		if (!starting && worker_handles[i] != NULL)
		{
			pfree(worker_handles[i]);
			worker_handles[i] = NULL;
		}
		if (give_up)
		{
			ereport(LOG,
					(errmsg("bgworker_demo worker in slot %d stopped before it started its work", i)));
			BgwdReleaseSlot(i);
			if (worker_handles[i] != NULL)
			{
				pfree(worker_handles[i]);
				worker_handles[i] = NULL;
			}
		}
	}
}

/*
 * count_workers
 *		Counts job workers: all of them into *total (max_workers is a limit
 *		over all databases), and ours per role into roles[].have/idle.
 */
static void
count_workers(RoleDemand *roles, int nroles, int *total)
{
	int			i;

	*total = 0;
	LWLockAcquire(BgwdShmem->lock, LW_SHARED);
	for (i = 0; i < BgwdShmem->nslots; i++)
	{
		BgwdSlot   *s = &BgwdShmem->slots[i];
		int			r;

		if (s->kind != BGWD_KIND_WORKER || s->state == BGWD_STATE_FREE)
			continue;
		(*total)++;
		if (s->dboid != MyDatabaseId || s->exit_requested)
			continue;
		for (r = 0; r < nroles; r++)
		{
			if (roles[r].roleid == s->roleid)
			{
				roles[r].have++;
				if (s->state == BGWD_STATE_IDLE)
					roles[r].idle++;
			}
		}
	}
	LWLockRelease(BgwdShmem->lock);
}

/*
 * start_worker
 *		Registers a job worker for the role in this database.  Returns false
 *		if the postmaster had no room (max_worker_processes); says so once.
 */
static bool
start_worker(Oid roleid)
{
	BackgroundWorkerHandle *handle;
	int			slot;

	if (!BgwdStartDynamicWorker(BGWD_KIND_WORKER, MyDatabaseId, roleid, 0,
								"BgwdWorkerMain", &handle, &slot))
	{
		if (!said_no_slots)
		{
			ereport(LOG,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("bgworker_demo could not start a job worker: no background worker slot is free"),
					 errdetail("Jobs wait until a slot is free; parallel query and replication use the same slots."),
					 errhint("Raise max_worker_processes (it needs a restart).")));
			said_no_slots = true;
		}
		return false;
	}
	said_no_slots = false;
	worker_handles[slot] = handle;
	return true;
}

/*
 * last_served
 *		When we last started a worker for the role; 0 if not remembered.
 */
static TimestampTz
last_served(Oid roleid)
{
	int			i;

	for (i = 0; i < SERVED_MEMORY; i++)
		if (served[i].roleid == roleid)
			return served[i].at;
	return 0;
}

/*
 * note_served
 *		Remembers a worker start for the role, forgetting the oldest entry
 *		when the table is full.
 */
static void
note_served(Oid roleid, TimestampTz at)
{
	int			i;
	int			oldest = 0;

	for (i = 0; i < SERVED_MEMORY; i++)
	{
		if (served[i].roleid == roleid)
		{
			served[i].at = at;
			return;
		}
		if (served[i].at < served[oldest].at)
			oldest = i;
	}
	served[oldest].roleid = roleid;
	served[oldest].at = at;
}

/*
 * request_one_exit
 *		The slots are full and some role has no worker: ask one worker to
 *		exit after its current job, so that the slot goes round.  An idle
 *		worker of a role without due jobs goes first, then one of the role
 *		with the most workers, then the one that has run longest.  Nothing
 *		is asked while an earlier request is still pending.
 *
 * Returns true if a request is pending (whose exit will wake us), false if
 * no worker could be asked, because all are still starting.
 */
static bool
request_one_exit(RoleDemand *roles, int nroles)
{
	int			i;
	int			victim = -1;
	int			victim_rank = -1;
	TimestampTz victim_started = 0;

	LWLockAcquire(BgwdShmem->lock, LW_EXCLUSIVE);
	for (i = 0; i < BgwdShmem->nslots; i++)
	{
		BgwdSlot   *s = &BgwdShmem->slots[i];
		int			r;
		int			rank;
		int			have = 0;
		bool		has_due = false;

		if (s->kind != BGWD_KIND_WORKER || s->state == BGWD_STATE_FREE)
			continue;
		if (s->exit_requested)
		{
			victim = -1;
			victim_rank = INT_MAX;
			break;
		}
		if (s->state == BGWD_STATE_STARTING)
			continue;
		for (r = 0; r < nroles; r++)
			if (roles[r].roleid == s->roleid && s->dboid == MyDatabaseId)
			{
				has_due = true;
				have = roles[r].have;
			}

		/* Higher rank is a better victim. */
		if (!has_due && s->state == BGWD_STATE_IDLE)
			rank = 1000000;
		else
			rank = have;
		if (rank > victim_rank ||
			(rank == victim_rank && s->started_at < victim_started))
		{
			victim = i;
			victim_rank = rank;
			victim_started = s->started_at;
		}
	}
	if (victim >= 0)
	{
		BgwdShmem->slots[victim].exit_requested = true;
		if (BgwdShmem->slots[victim].latch)
			SetLatch(BgwdShmem->slots[victim].latch);
	}
	LWLockRelease(BgwdShmem->lock);

	return victim >= 0 || victim_rank == INT_MAX;
}

/*
 * launcher_sleep
 *		Waits on the latch until "until" (forever for DT_NOEND), then resets
 *		it.  Exits if the postmaster dies.
 *
 * Linux lets a long poll or epoll timeout run late by 0.1% of its length
 * (up to 100 ms: 60 ms for a minute), which would make every cron run
 * late.  So a long sleep stops short of the deadline by a little more than
 * that, and the short rest is slept again: one extra wake-up per long
 * sleep buys a due time kept to the millisecond.
 */
static void
launcher_sleep(TimestampTz until)
{
	for (;;)
	{
		long		timeout;
		long		early = 0;
		int			rc;

		if (until == DT_NOEND)
		{
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_EXIT_ON_PM_DEATH, -1L,
							 PG_WAIT_EXTENSION);
			break;
		}

		timeout = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), until);
		/* Round up, or we would wake a little early and spin. */
		if (TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout) < until)
			timeout++;
		if (timeout <= 0)
			break;

		/*
		 * WaitLatch passes the timeout on as an int: a deadline weeks away
		 * (a monthly schedule) would overflow it.  Wake after a day at most;
		 * the next round computes the rest.
		 */
		timeout = Min(timeout, MAX_SLEEP_MS);
		if (timeout > 1000)
			early = Min(timeout / 500 + 1, 250);

		rc = WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					   timeout - early, PG_WAIT_EXTENSION);
		if ((rc & WL_LATCH_SET) || early == 0 || timeout == MAX_SLEEP_MS)
			break;
	}
	ResetLatch(MyLatch);
}
