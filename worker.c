/*-------------------------------------------------------------------------
 *
 * worker.c
 *		Job workers: dynamic background workers that run the jobs of one
 *		role in one database, and the raw launch_worker() example.
 *
 * A job worker is registered by the launcher with a slot reserved for it
 * (bgw_extra says which) and bgw_notify_pid set to the launcher, so that
 * the launcher's latch is set when the worker starts and stops.  It
 * connects with BackgroundWorkerInitializeConnectionByOid as the role whose
 * jobs it runs: a job has exactly the rights of the role that submitted
 * it.  Our own bookkeeping is done as the extension owner (jobs.c).
 *
 * A job's life:
 *
 *	claim	UPDATE ... SET status 'running', attempts + 1 WHERE id =
 *			(oldest due job of our role FOR UPDATE SKIP LOCKED), committed.
 *			The committed attempt count is what bounds a job that crashes
 *			the server: the launcher's orphan check counts that attempt.
 *	run		transactional (default): the command runs through SPI in a
 *			subtransaction of the transaction that then records the result,
 *			so effects and completion commit together, exactly once.  The
 *			claim of the next job rides on the same commit, so a busy
 *			worker commits once per job.
 *			non-transactional: each statement of the command runs as its own
 *			top-level statement in its own transaction, as psql would send
 *			it (VACUUM, CREATE INDEX CONCURRENTLY), and the result is
 *			recorded afterwards: at least once.
 *	end		succeeded, or on error: retried after retry_backoff *
 *			2^(attempt-1) with jitter, failed after max_attempts, canceled
 *			after cancel().  SIGTERM (shutdown, terminate) interrupts the job,
 *			which goes back to the queue without counting the attempt.
 *
 * Each job gets its own GUC nest level, undone afterwards, so that a SET
 * in one job does not leak into the next.  statement_timeout is armed by
 * the client protocol loop, which a worker does not have: a job's timeout
 * arms STATEMENT_TIMEOUT itself.  cancel() sends SIGINT, which a worker
 * with a database connection handles with StatementCancelHandler.
 *
 * Copyright (c) 2026, bgworker_demo developers
 *
 * IDENTIFICATION
 *		bgworker_demo/worker.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "parser/analyze.h"
#include "parser/parser.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/dest.h"
#include "tcop/pquery.h"
#include "tcop/tcopprot.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/portal.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

#include "bgworker_demo.h"

PG_FUNCTION_INFO_V1(bgworker_demo_launch_worker);
PG_FUNCTION_INFO_V1(bgworker_demo_terminate_worker);

/* A claimed job, as the claim returned it */
typedef struct BgwdJob
{
	int64		id;
	char	   *command;
	int32		attempts;		/* including this one */
	int32		max_attempts;
	bool		transactional;
	int64		timeout_ms;		/* 0 for none */
	TimestampTz started_at;		/* local clock, for the log line */
} BgwdJob;

/* How an attempt ended */
typedef enum JobOutcome
{
	JOB_SUCCEEDED,
	JOB_FAILED,					/* error; retried or failed by attempts */
	JOB_CANCELED,				/* cancel() */
	JOB_INTERRUPTED				/* SIGTERM: back to the queue */
} JobOutcome;

static void worker_sigterm(SIGNAL_ARGS);
static bool worker_exit_requested(void);
static bool worker_run_one(void);
static BgwdJob *claim_job(void);
static void run_job(BgwdJob *job);
static JobOutcome run_in_subxact(BgwdJob *job, char **tag, ErrorData **edata);
static JobOutcome run_toplevel(BgwdJob *job, char **tag, ErrorData **edata);
static JobOutcome classify_error(BgwdJob *job, ErrorData *edata);
static void record_outcome(BgwdJob *job, JobOutcome outcome, const char *tag,
						   ErrorData *edata, bool claim_next);
static void requeue_claimed(void);
static void log_job(BgwdJob *job, JobOutcome outcome, const char *status,
					const char *tag, ErrorData *edata);
static char *command_tag_of(const char *command, uint64 processed);
static void arm_timeout(BgwdJob *job);
static void enter_job(BgwdJob *job);
static void leave_job(void);

/* Set by the SIGTERM handler */
static volatile sig_atomic_t got_sigterm = false;

/* While set, SIGTERM also cancels the running statement */
static volatile sig_atomic_t in_job = false;

/* The role we run jobs of, and its name for log lines */
static Oid	MyJobRole = InvalidOid;
static char *MyJobRoleName = NULL;

/* A job claimed by the last commit and not run yet */
static BgwdJob *claimed = NULL;

/* Memory of one job, reset after it */
static MemoryContext WorkerJobContext = NULL;

/* Sessions' handles of launch_worker() workers */
typedef struct RawWorker
{
	pid_t		pid;
	BackgroundWorkerHandle *handle;
} RawWorker;
static List *raw_workers = NIL;

/*
 * BgwdWorkerMain
 *		Entry point of a job worker.  bgw_extra holds a BgwdWorkerArgs.
 */
void
BgwdWorkerMain(Datum main_arg)
{
	BgwdWorkerArgs args;
	TimestampTz idle_since;

	memcpy(&args, MyBgworkerEntry->bgw_extra, sizeof(args));

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, worker_sigterm);
	BackgroundWorkerUnblockSignals();

	/*
	 * Query cancels may interrupt a job's statements only (enter_job): a
	 * SIGINT from cancel() that comes a moment late must not hit our own
	 * bookkeeping.
	 */
	HOLD_CANCEL_INTERRUPTS();

	BgwdShmemAttach();
	if (!BgwdAdoptSlot(args.slot, args.generation))
		proc_exit(0);			/* the launcher gave up on us already */
	before_shmem_exit(BgwdReleaseSlotAndWake, (Datum) 0);

	BackgroundWorkerInitializeConnectionByOid(args.dboid, args.roleid, 0);
	MyJobRole = args.roleid;
	pgstat_report_appname("bgworker_demo worker");

	/* Catalog look-ups need a transaction; log lines are written outside. */
	StartTransactionCommand();
	MyJobRoleName = MemoryContextStrdup(TopMemoryContext,
										GetUserNameFromId(MyJobRole, false));
	CommitTransactionCommand();

	WorkerJobContext = AllocSetContextCreate(TopMemoryContext,
											 "bgworker_demo job",
											 ALLOCSET_DEFAULT_SIZES);

	idle_since = GetCurrentTimestamp();
	for (;;)
	{
		long		idle_ms;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (got_sigterm || worker_exit_requested() || !bgworker_demo_enabled)
			break;

		if (worker_run_one())
		{
			idle_since = GetCurrentTimestamp();
			continue;
		}

		idle_ms = bgworker_demo_idle_timeout -
			TimestampDifferenceMilliseconds(idle_since, GetCurrentTimestamp());
		if (idle_ms <= 0)
			break;

		/*
		 * pgstat_report_stat(false) after each job flushes at most once a
		 * second; before sleeping, flush what is left, or the counters of
		 * the last jobs would not appear until the next one.
		 */
		pgstat_report_stat(true);
		BgwdSetSlotState(MyBgwdSlot, BGWD_STATE_IDLE, 0);
		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 idle_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}

	requeue_claimed();
	proc_exit(0);
}

/*
 * worker_sigterm
 *		SIGTERM: leave after the current job, and interrupt the job itself
 *		(it goes back to the queue).  Unlike die(), this lets us record
 *		that in a transaction of our own before exiting.
 */
static void
worker_sigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	got_sigterm = true;
	if (in_job)
	{
		QueryCancelPending = true;
		InterruptPending = true;
	}
	SetLatch(MyLatch);

	errno = save_errno;
}

/*
 * worker_exit_requested
 *		Whether the launcher asked us to make room for another role.
 */
static bool
worker_exit_requested(void)
{
	bool		result;

	LWLockAcquire(BgwdShmem->lock, LW_SHARED);
	result = BgwdShmem->slots[MyBgwdSlot].exit_requested;
	LWLockRelease(BgwdShmem->lock);
	return result;
}

/*
 * worker_run_one
 *		Runs the claimed job, or claims one and runs it.  Returns false if
 *		there was no due job.
 */
static bool
worker_run_one(void)
{
	BgwdJob    *job;

	MemoryContextSwitchTo(WorkerJobContext);
	job = claimed;
	claimed = NULL;
	if (job == NULL)
		job = claim_job();
	if (job == NULL)
	{
		MemoryContextSwitchTo(TopMemoryContext);
		MemoryContextReset(WorkerJobContext);
		return false;
	}

	run_job(job);

	/*
	 * The next job, if one was claimed, was copied into a fresh context by
	 * record_outcome; this one's memory can go.
	 */
	MemoryContextSwitchTo(TopMemoryContext);
	if (claimed == NULL)
		MemoryContextReset(WorkerJobContext);
	return true;
}

/*
 * claim_query
 *		The claim: oldest due job of our role, marked running with one more
 *		attempt.  Shared by claim_job and the pipelined claim.
 */
static BgwdQuery claim_query = {
	"UPDATE bgworker_demo.jobs SET status = 'running', attempts = attempts + 1,"
	" started_at = clock_timestamp(), worker_pid = $3"
	" WHERE id = (SELECT id FROM bgworker_demo.jobs"
	"   WHERE status = 'queued' AND username::oid = $1 AND run_at <= $2"
	"   ORDER BY run_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)"
	" RETURNING id, command, attempts, max_attempts, transactional,"
	"  COALESCE((EXTRACT(epoch FROM timeout) * 1000)::int8, 0)",
	3, {OIDOID, TIMESTAMPTZOID, INT4OID}
};

/*
 * claim_next
 *		Runs the claim inside the current transaction (SPI connected, as the
 *		owner).  Returns the job, allocated in "cxt", or NULL.  Publishes its
 *		id in our slot before the commit, so that cancel() can find it.
 */
static BgwdJob *
claim_next(MemoryContext cxt)
{
	Datum		values[3];
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	BgwdJob    *job;
	MemoryContext old;

	values[0] = ObjectIdGetDatum(MyJobRole);
	values[1] = TimestampTzGetDatum(GetCurrentTimestamp());
	values[2] = Int32GetDatum(MyProcPid);
	BgwdQueryRun(&claim_query, values, NULL, false, 1);
	if (SPI_processed == 0)
		return NULL;

	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	old = MemoryContextSwitchTo(cxt);
	job = palloc0(sizeof(BgwdJob));
	job->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
	job->command = TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull));
	job->attempts = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));
	job->max_attempts = DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull));
	job->transactional = DatumGetBool(SPI_getbinval(tup, desc, 5, &isnull));
	job->timeout_ms = DatumGetInt64(SPI_getbinval(tup, desc, 6, &isnull));
	MemoryContextSwitchTo(old);

	BgwdSetSlotState(MyBgwdSlot, BGWD_STATE_RUNNING, job->id);
	return job;
}

/*
 * claim_job
 *		Claims a job in a transaction of its own.  Returns NULL if none is
 *		due.
 */
static BgwdJob *
claim_job(void)
{
	BgwdOwnerContext owner;
	BgwdJob    *job;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "bgworker_demo worker: claim");

	BgwdBecomeOwner(&owner);
	job = claim_next(WorkerJobContext);
	BgwdRestoreUser(&owner);

	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(WorkerJobContext);
	pgstat_report_activity(STATE_IDLE, NULL);
	return job;
}

/*
 * run_job
 *		Runs one claimed job and records how it ended.
 */
static void
run_job(BgwdJob *job)
{
	JobOutcome	outcome;
	char	   *tag = NULL;
	ErrorData  *edata = NULL;
	bool		canceled_early;

	job->started_at = GetCurrentTimestamp();

	/* A cancel() that came before we started: record it, run nothing. */
	LWLockAcquire(BgwdShmem->lock, LW_SHARED);
	canceled_early = BgwdShmem->slots[MyBgwdSlot].cancel_job_id == job->id;
	LWLockRelease(BgwdShmem->lock);

	if (canceled_early)
	{
		outcome = JOB_CANCELED;
		record_outcome(job, outcome, NULL, NULL, false);
	}
	else if (job->transactional)
	{
		/* Run and record in one transaction. */
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, job->command);

		outcome = run_in_subxact(job, &tag, &edata);
		record_outcome(job, outcome, tag, edata, true);
	}
	else
	{
		pgstat_report_activity(STATE_RUNNING, job->command);
		outcome = run_toplevel(job, &tag, &edata);
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		record_outcome(job, outcome, tag, edata, true);
	}

	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
	ConditionVariableBroadcast(&BgwdShmem->job_done_cv);
}

/*
 * run_in_subxact
 *		Runs a transactional job's command through SPI in a subtransaction
 *		of the current transaction.  On success the subtransaction is
 *		released and *tag is set; on error it is rolled back and *edata is a
 *		copy of the error.  Either way the outer transaction goes on.
 */
static JobOutcome
run_in_subxact(BgwdJob *job, char **tag, ErrorData **edata)
{
	MemoryContext oldcontext = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	volatile JobOutcome outcome = JOB_SUCCEEDED;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcontext);

	PG_TRY();
	{
		int			nestlevel = NewGUCNestLevel();
		int			rc;

		enter_job(job);
		arm_timeout(job);
		rc = SPI_execute(job->command, false, 0);
		if (rc < 0)
			elog(ERROR, "SPI_execute failed: %s", SPI_result_code_string(rc));
		disable_timeout(STATEMENT_TIMEOUT, false);
		leave_job();

		*tag = MemoryContextStrdup(WorkerJobContext,
								   command_tag_of(job->command, SPI_processed));

		/* Undo the job's SETs, then keep its effects. */
		AtEOXact_GUC(false, nestlevel);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcontext);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		disable_timeout(STATEMENT_TIMEOUT, false);
		leave_job();
		MemoryContextSwitchTo(WorkerJobContext);
		*edata = CopyErrorData();
		FlushErrorState();

		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcontext);
		CurrentResourceOwner = oldowner;
		outcome = classify_error(job, *edata);
	}
	PG_END_TRY();

	return outcome;
}

/*
 * run_toplevel
 *		Runs a non-transactional job's command, each statement as its own
 *		top-level transaction.  Called and returns outside a transaction.
 */
static JobOutcome
run_toplevel(BgwdJob *job, char **tag, ErrorData **edata)
{
	volatile JobOutcome outcome = JOB_SUCCEEDED;

	PG_TRY();
	{
		enter_job(job);
		arm_timeout(job);
		BgwdExecuteToplevel(job->command, tag);
		disable_timeout(STATEMENT_TIMEOUT, false);
		leave_job();
		*tag = MemoryContextStrdup(WorkerJobContext, *tag);
	}
	PG_CATCH();
	{
		disable_timeout(STATEMENT_TIMEOUT, false);
		leave_job();
		MemoryContextSwitchTo(WorkerJobContext);
		*edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		outcome = classify_error(job, *edata);
	}
	PG_END_TRY();

	/* A session-level SET in the job must not reach the next job. */
	StartTransactionCommand();
	ResetAllOptions();
	CommitTransactionCommand();
	MemoryContextSwitchTo(WorkerJobContext);

	return outcome;
}

/*
 * classify_error
 *		Why did the job fail: our SIGTERM, cancel(), or an error of its own
 *		(statement timeout included)?
 */
static JobOutcome
classify_error(BgwdJob *job, ErrorData *edata)
{
	bool		canceled;

	if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED)
	{
		if (got_sigterm)
			return JOB_INTERRUPTED;
		LWLockAcquire(BgwdShmem->lock, LW_SHARED);
		canceled = BgwdShmem->slots[MyBgwdSlot].cancel_job_id == job->id;
		LWLockRelease(BgwdShmem->lock);
		if (canceled)
			return JOB_CANCELED;
	}
	return JOB_FAILED;
}

/*
 * enter_job
 *		Opens the window in which a query cancel (cancel(), the job's
 *		timeout, our SIGTERM) may interrupt: the job's own statements.
 *		Outside it cancels are held, so that they can never hit our
 *		bookkeeping, which runs outside any PG_TRY and would end the
 *		worker.  A cancel left over from an earlier job is dropped here; one
 *		meant for this job is not lost by that: cancel() marks our slot
 *		before it signals, and the slot is read after the flag is cleared.
 */
static void
enter_job(BgwdJob *job)
{
	bool		canceled;

	QueryCancelPending = false;
	in_job = true;
	RESUME_CANCEL_INTERRUPTS();

	LWLockAcquire(BgwdShmem->lock, LW_SHARED);
	canceled = BgwdShmem->slots[MyBgwdSlot].cancel_job_id == job->id;
	LWLockRelease(BgwdShmem->lock);
	if (got_sigterm || canceled)
	{
		/* SIGTERM or cancel() came before the job started: interrupt now. */
		QueryCancelPending = true;
		InterruptPending = true;
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * leave_job
 *		Closes the window again.  The postmaster signals a worker's process
 *		group as well as the worker at shutdown, so a second SIGTERM may
 *		have asked for another cancel after the first one was raised: drop
 *		it.  Safe after an error too: errfinish has reset the hold-off
 *		count when it threw.
 */
static void
leave_job(void)
{
	in_job = false;
	if (QueryCancelHoldoffCount == 0)
		HOLD_CANCEL_INTERRUPTS();
	QueryCancelPending = false;
}

/*
 * arm_timeout
 *		Arms STATEMENT_TIMEOUT for the job's timeout, if it has one.
 */
static void
arm_timeout(BgwdJob *job)
{
	if (job->timeout_ms > 0)
		enable_timeout_after(STATEMENT_TIMEOUT, (int) job->timeout_ms);
}

/*
 * record_outcome
 *		Writes how the attempt ended, claims the next job if claim_next
 *		(pipelining), and commits the transaction the caller started (SPI
 *		connected, snapshot pushed).  Then logs and counts.
 */
static void
record_outcome(BgwdJob *job, JobOutcome outcome, const char *tag,
			   ErrorData *edata, bool claim_next_job)
{
	static BgwdQuery q = {
		"UPDATE bgworker_demo.jobs SET status = $2,"
		" finished_at = CASE WHEN $2 = 'queued' THEN NULL ELSE clock_timestamp() END,"
		" attempts = attempts - $3,"
		" run_at = COALESCE($4, run_at),"
		" result = $5, last_error = $6, sqlstate = $7, worker_pid = NULL"
		" WHERE id = $1",
		7, {INT8OID, TEXTOID, INT4OID, TIMESTAMPTZOID, TEXTOID, TEXTOID, TEXTOID}
	};
	BgwdOwnerContext owner;
	Datum		values[7];
	char		nulls[7] = "       ";
	const char *status;
	int			uncount = 0;

	memset(values, 0, sizeof(values));
	switch (outcome)
	{
		case JOB_SUCCEEDED:
			status = "succeeded";
			break;
		case JOB_CANCELED:
			status = "canceled";
			break;
		case JOB_INTERRUPTED:
			status = "queued";
			uncount = 1;
			break;
		case JOB_FAILED:
		default:
			if (job->attempts < job->max_attempts)
			{
				double		backoff;

				status = "queued";
				backoff = (double) bgworker_demo_retry_backoff *
					pow(2.0, job->attempts - 1) *
					(1.0 + 0.25 * pg_prng_double(&pg_global_prng_state));
				backoff = Min(backoff, (double) 24 * 3600 * 1000);
				values[3] = TimestampTzGetDatum(
												TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
																			(int64) backoff));
			}
			else
				status = "failed";
			break;
	}
	if (values[3] == (Datum) 0)
		nulls[3] = 'n';

	values[0] = Int64GetDatum(job->id);
	values[1] = CStringGetTextDatum(status);
	values[2] = Int32GetDatum(uncount);
	if (tag)
		values[4] = CStringGetTextDatum(tag);
	else
		nulls[4] = 'n';
	if (outcome == JOB_CANCELED)
	{
		values[5] = CStringGetTextDatum("canceled by cancel()");
		values[6] = CStringGetTextDatum("57014");
	}
	else if (edata != NULL && outcome != JOB_INTERRUPTED)
	{
		values[5] = CStringGetTextDatum(edata->message ? edata->message : "unknown error");
		values[6] = CStringGetTextDatum(unpack_sql_state(edata->sqlerrcode));
	}
	else
	{
		nulls[5] = 'n';
		nulls[6] = 'n';
	}

	BgwdBecomeOwner(&owner);
	BgwdQueryRun(&q, values, nulls, false, 0);
	BgwdSetSlotState(MyBgwdSlot, BGWD_STATE_RUNNING, 0);

	if (claim_next_job && !got_sigterm && !worker_exit_requested() &&
		bgworker_demo_enabled)
	{
		/* The next job's memory must outlive this one's. */
		MemoryContext next_cxt = AllocSetContextCreate(TopMemoryContext,
													   "bgworker_demo job",
													   ALLOCSET_DEFAULT_SIZES);

		claimed = claim_next(next_cxt);
		if (claimed == NULL)
			MemoryContextDelete(next_cxt);
	}
	BgwdRestoreUser(&owner);

	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();

	/* Swap contexts: the claimed job's becomes the job context. */
	if (claimed != NULL)
	{
		MemoryContext done = WorkerJobContext;

		WorkerJobContext = GetMemoryChunkContext(claimed);
		MemoryContextSwitchTo(TopMemoryContext);
		log_job(job, outcome, status, tag, edata);
		MemoryContextDelete(done);
	}
	else
	{
		MemoryContextSwitchTo(WorkerJobContext);
		log_job(job, outcome, status, tag, edata);
	}

	if (outcome == JOB_SUCCEEDED)
	{
		BgwdShmem->slots[MyBgwdSlot].jobs_done++;
		pg_atomic_fetch_add_u64(&BgwdShmem->jobs_succeeded, 1);
	}
	else if (outcome == JOB_FAILED)
	{
		BgwdShmem->slots[MyBgwdSlot].jobs_failed++;
		pg_atomic_fetch_add_u64(&BgwdShmem->jobs_failed, 1);
	}
}

/*
 * requeue_claimed
 *		On exit, puts back a job claimed by the last commit and not run,
 *		without counting the attempt.
 */
static void
requeue_claimed(void)
{
	if (claimed == NULL)
		return;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	{
		BgwdJob    *job = claimed;

		claimed = NULL;
		record_outcome(job, JOB_INTERRUPTED, NULL, NULL, false);
	}
}

/*
 * log_job
 *		One line per finished attempt, as bgworker_demo.log_jobs asks.
 */
static void
log_job(BgwdJob *job, JobOutcome outcome, const char *status,
		const char *tag, ErrorData *edata)
{
	long		ms;

	if (bgworker_demo_log_jobs == BGWD_LOG_OFF)
		return;
	/* A claimed job given back unrun (the worker is leaving): not news. */
	if (job->started_at == 0)
		return;
	if (bgworker_demo_log_jobs == BGWD_LOG_ERRORS && outcome == JOB_SUCCEEDED)
		return;

	ms = TimestampDifferenceMilliseconds(job->started_at, GetCurrentTimestamp());
	if (outcome == JOB_SUCCEEDED)
		ereport(LOG,
				(errmsg("bgworker_demo job %lld by %s succeeded in %ld ms: %s",
						(long long) job->id, MyJobRoleName,
						ms, tag ? tag : "")));
	else if (outcome == JOB_FAILED)
		ereport(LOG,
				(errmsg("bgworker_demo job %lld by %s %s after attempt %d of %d in %ld ms: %s: %s",
						(long long) job->id, MyJobRoleName,
						strcmp(status, "failed") == 0 ? "failed" : "will be retried",
						job->attempts, job->max_attempts, ms,
						unpack_sql_state(edata->sqlerrcode),
						edata->message ? edata->message : "")));
	else
		ereport(LOG,
				(errmsg("bgworker_demo job %lld by %s %s after %ld ms",
						(long long) job->id, MyJobRoleName,
						outcome == JOB_CANCELED ? "canceled" :
						"interrupted by SIGTERM, requeued", ms)));
}

/*
 * command_tag_of
 *		"INSERT 3", "VACUUM" and the like for the last statement of a
 *		command, like psql shows.
 */
static char *
command_tag_of(const char *command, uint64 processed)
{
	List	   *raws = raw_parser(command, RAW_PARSE_DEFAULT);
	RawStmt    *last;
	CommandTag	tag;

	if (raws == NIL)
		return pstrdup("EMPTY");
	last = llast_node(RawStmt, raws);
	tag = CreateCommandTag(last->stmt);
	if (command_tag_display_rowcount(tag))
		return psprintf("%s " UINT64_FORMAT, GetCommandTagName(tag), processed);
	return pstrdup(GetCommandTagName(tag));
}

/*
 * BgwdExecuteToplevel
 *		Runs each statement of sql as a top-level statement in its own
 *		transaction, the way the simple query protocol would if the
 *		statements were sent one by one.  *tag gets the last one's command
 *		tag.  Called outside a transaction; returns outside one.
 */
void
BgwdExecuteToplevel(const char *sql, char **tag)
{
	MemoryContext cxt = CurrentMemoryContext;
	List	   *raws;
	ListCell   *lc;

	*tag = pstrdup("EMPTY");
	raws = pg_parse_query(sql);
	foreach(lc, raws)
	{
		RawStmt    *raw = lfirst_node(RawStmt, lc);
		CommandTag	ctag = CreateCommandTag(raw->stmt);
		bool		snapshot_set = false;
		List	   *querytrees;
		List	   *plantrees;
		Portal		portal;
		DestReceiver *receiver;
		QueryCompletion qc;

		if (IsA(raw->stmt, TransactionStmt))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("transaction control statements are not allowed in jobs"),
					 errhint("Each statement of a non-transactional job runs in a transaction of its own.")));

		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		if (analyze_requires_snapshot(raw))
		{
			PushActiveSnapshot(GetTransactionSnapshot());
			snapshot_set = true;
		}
		querytrees = pg_analyze_and_rewrite_fixedparams(raw, sql, NULL, 0, NULL);
		plantrees = pg_plan_queries(querytrees, sql, CURSOR_OPT_PARALLEL_OK, NULL);
		if (snapshot_set)
			PopActiveSnapshot();

		portal = CreatePortal("", true, true);
		portal->visible = false;
		PortalDefineQuery(portal, NULL, sql, ctag, plantrees, NULL);
		PortalStart(portal, NULL, 0, InvalidSnapshot);

		receiver = CreateDestReceiver(DestNone);
		InitializeQueryCompletion(&qc);
		(void) PortalRun(portal, FETCH_ALL, true, true, receiver, receiver, &qc);
		receiver->rDestroy(receiver);
		PortalDrop(portal, false);
		CommitTransactionCommand();

		MemoryContextSwitchTo(cxt);
		if (command_tag_display_rowcount(qc.commandTag))
			*tag = psprintf("%s " UINT64_FORMAT, GetCommandTagName(qc.commandTag),
							qc.nprocessed);
		else
			*tag = pstrdup(GetCommandTagName(qc.commandTag != CMDTAG_UNKNOWN ?
											 qc.commandTag : ctag));
	}
}

/*
 * BgwdStartDynamicWorker
 *		Reserves a slot and registers a dynamic worker of the kind, to run
 *		function_name connected to dboid as roleid, notifying this process.
 *		Returns false (and frees the slot) if the postmaster has no room.
 */
bool
BgwdStartDynamicWorker(BgwdKind kind, Oid dboid, Oid roleid,
					   int64 object_id, const char *function_name,
					   BackgroundWorkerHandle **handle, int *slot)
{
	BackgroundWorker worker;
	BgwdWorkerArgs args;
	MemoryContext old;
	bool		registered;

	args.slot = BgwdReserveSlot(kind, dboid, roleid, &args.generation);
	if (args.slot < 0)
		return false;
	args.dboid = dboid;
	args.roleid = roleid;
	args.object_id = object_id;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS |
		BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "bgworker_demo");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "%s", function_name);
	snprintf(worker.bgw_name, BGW_MAXLEN, "bgworker_demo %s for role %u",
			 BgwdKindName(kind), roleid);
	snprintf(worker.bgw_type, BGW_MAXLEN, "bgworker_demo %s",
			 BgwdKindName(kind));
	memcpy(worker.bgw_extra, &args, sizeof(args));
	worker.bgw_main_arg = Int32GetDatum(args.slot);
	worker.bgw_notify_pid = MyProcPid;

	/* The handle is kept across rounds: allocate it for the process. */
	old = MemoryContextSwitchTo(TopMemoryContext);
	registered = RegisterDynamicBackgroundWorker(&worker, handle);
	MemoryContextSwitchTo(old);
	if (!registered)
	{
		BgwdReleaseSlot(args.slot);
		return false;
	}
	pg_atomic_fetch_add_u64(&BgwdShmem->workers_started, 1);
	*slot = args.slot;
	return true;
}

/*
 * launch_worker(command text, wait bool) RETURNS int4
 *
 * The raw dynamic-worker API, as an example: registers one worker that
 * runs the command once as the calling role in this database, and with
 * wait waits for it to start (WaitForBackgroundWorkerStartup, which needs
 * bgw_notify_pid to be us) and returns its pid.
 */
Datum
bgworker_demo_launch_worker(PG_FUNCTION_ARGS)
{
	char	   *command = text_to_cstring(PG_GETARG_TEXT_PP(0));
	bool		wait = PG_GETARG_BOOL(1);
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	BgwdWorkerArgs args;
	pid_t		pid;
	BgwHandleStatus status;
	MemoryContext old;
	RawWorker  *rw;

	BgwdShmemAttach();
	if (strlen(command) >= BGW_EXTRALEN - sizeof(args))
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("command is too long for launch_worker()"),
				 errdetail("It must be shorter than %d bytes, to fit in bgw_extra.",
						   (int) (BGW_EXTRALEN - sizeof(args))),
				 errhint("Use submit() to run longer commands.")));
	BgwdCheckSyntax(command);

	args.slot = BgwdReserveSlot(BGWD_KIND_RAW, MyDatabaseId, GetUserId(),
								&args.generation);
	if (args.slot < 0)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("no bgworker_demo process slot is free")));
	args.dboid = MyDatabaseId;
	args.roleid = GetUserId();
	args.object_id = 0;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS |
		BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "bgworker_demo");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "BgwdRawWorkerMain");
	snprintf(worker.bgw_name, BGW_MAXLEN, "bgworker_demo raw worker");
	snprintf(worker.bgw_type, BGW_MAXLEN, "bgworker_demo raw");
	memcpy(worker.bgw_extra, &args, sizeof(args));
	strlcpy(worker.bgw_extra + sizeof(args), command,
			BGW_EXTRALEN - sizeof(args));
	worker.bgw_main_arg = Int32GetDatum(args.slot);
	worker.bgw_notify_pid = MyProcPid;

	/* The handle must outlive this query: allocate it for the session. */
	old = MemoryContextSwitchTo(TopMemoryContext);
	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
	{
		MemoryContextSwitchTo(old);
		BgwdReleaseSlot(args.slot);
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("could not register background worker"),
				 errhint("Raise max_worker_processes (it needs a restart).")));
	}
	MemoryContextSwitchTo(old);
	pg_atomic_fetch_add_u64(&BgwdShmem->workers_started, 1);

	if (!wait)
		PG_RETURN_NULL();

	status = WaitForBackgroundWorkerStartup(handle, &pid);
	if (status == BGWH_STOPPED)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
				 errmsg("background worker stopped before it started"),
				 errhint("See the server log.")));
	if (status == BGWH_POSTMASTER_DIED)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
				 errmsg("cannot start background workers without postmaster"),
				 errhint("Kill all remaining database processes and restart the database.")));
	Assert(status == BGWH_STARTED);

	old = MemoryContextSwitchTo(TopMemoryContext);
	rw = palloc(sizeof(RawWorker));
	rw->pid = pid;
	rw->handle = handle;
	raw_workers = lappend(raw_workers, rw);
	MemoryContextSwitchTo(old);

	PG_RETURN_INT32(pid);
}

/*
 * terminate_worker(pid int4) RETURNS bool
 *
 * Stops a worker that launch_worker() started in this session, through its
 * handle (TerminateBackgroundWorker): the postmaster sends it SIGTERM.
 * Returns false if it had already stopped.
 */
Datum
bgworker_demo_terminate_worker(PG_FUNCTION_ARGS)
{
	pid_t		pid = PG_GETARG_INT32(0);
	ListCell   *lc;

	foreach(lc, raw_workers)
	{
		RawWorker  *rw = lfirst(lc);
		pid_t		current;

		if (rw->pid != pid)
			continue;
		if (GetBackgroundWorkerPid(rw->handle, &current) != BGWH_STARTED)
			PG_RETURN_BOOL(false);
		TerminateBackgroundWorker(rw->handle);
		PG_RETURN_BOOL(true);
	}
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("no worker with PID %d was started by launch_worker() in this session",
					(int) pid),
			 errhint("A handle is only valid in the session that registered the worker; use pg_terminate_backend() for others.")));
	PG_RETURN_BOOL(false);
}

/*
 * BgwdRawWorkerMain
 *		Entry point of a launch_worker() worker: runs its command once, in
 *		one transaction, logs the outcome and exits with 0, which
 *		unregisters it.  SIGTERM (terminate_worker) ends it through die().
 */
void
BgwdRawWorkerMain(Datum main_arg)
{
	BgwdWorkerArgs args;
	char		command[BGW_EXTRALEN];
	int			rc;

	memcpy(&args, MyBgworkerEntry->bgw_extra, sizeof(args));
	strlcpy(command, MyBgworkerEntry->bgw_extra + sizeof(args),
			BGW_EXTRALEN - sizeof(args));

	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BgwdShmemAttach();
	if (!BgwdAdoptSlot(args.slot, args.generation))
		proc_exit(0);
	before_shmem_exit(BgwdReleaseSlotAndWake, (Datum) 0);

	BackgroundWorkerInitializeConnectionByOid(args.dboid, args.roleid, 0);
	pgstat_report_appname("bgworker_demo raw worker");
	BgwdSetSlotState(MyBgwdSlot, BGWD_STATE_RUNNING, 0);

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, command);
	rc = SPI_execute(command, false, 0);
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);

	ereport(LOG,
			(errmsg("bgworker_demo raw worker ran \"%s\": %s",
					command, SPI_result_code_string(rc))));
	proc_exit(0);
}
