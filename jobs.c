/*-------------------------------------------------------------------------
 *
 * jobs.c
 *		The SQL interface of the job queue: submit(), cancel(), wait(),
 *		and the helpers every process uses to touch our tables.
 *
 * The tables can be written only by their owner (the role that ran CREATE
 * EXTENSION).  The functions here check their arguments as the caller,
 * record the caller as the owner of what they write, and then switch to
 * the extension owner for the write itself (BgwdBecomeOwner), with a fixed
 * search_path and SECURITY_RESTRICTED_OPERATION, like core's maintenance
 * commands.  Reading goes through row-level security as the caller, so a
 * role sees, cancels and waits for its own jobs only.
 *
 * Wake-ups: submit() registers a transaction callback; when the
 * transaction commits, the callback sets the latch of an idle worker of
 * the same database and role, and that of the launcher when no idle
 * worker can take the job or the job is not due yet.  Nothing is woken
 * before the commit, so a worker never looks for a row it cannot see.
 * Workers broadcast job_done_cv after they commit the end of a job; wait()
 * sleeps on it.
 *
 * Copyright (c) 2026, bgworker_demo developers
 *
 * IDENTIFICATION
 *		bgworker_demo/jobs.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "parser/parser.h"
#include "pgstat.h"
#include "storage/condition_variable.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "bgworker_demo.h"

PG_FUNCTION_INFO_V1(bgworker_demo_submit);
PG_FUNCTION_INFO_V1(bgworker_demo_cancel);
PG_FUNCTION_INFO_V1(bgworker_demo_wait);

static void bgwd_xact_callback(XactEvent event, void *arg);
static void wake_now(void);
static char *read_job_status(int64 job_id, bool as_owner);
static bool cancel_running(int64 job_id);
static void syntax_error_callback(void *arg);

/* What the commit of the current transaction must wake */
static bool xact_callback_registered = false;
static bool wake_pending = false;
static Oid	wake_roleid = InvalidOid;
static bool wake_launcher = false;
static int	wake_jobs = 0;			/* jobs queued for wake_roleid */
static bool broadcast_pending = false;

/* Jobs submitted by the current transaction, for wait()'s check */
static int64 xact_first_job = 0;

/* Cache of the extension owner, valid for one transaction */
static Oid	owner_cache = InvalidOid;
static LocalTransactionId owner_cache_lxid = InvalidLocalTransactionId;

/*
 * submit(command text, run_at timestamptz, max_attempts int4,
 *		  timeout interval, transactional bool) RETURNS int8
 *
 * Checks the arguments (and the command's syntax), inserts the job owned
 * by the current user and arranges a wake-up at commit.
 */
Datum
bgworker_demo_submit(PG_FUNCTION_ARGS)
{
	static BgwdQuery q = {
		"INSERT INTO bgworker_demo.jobs"
		" (command, username, max_attempts, timeout, transactional, run_at, submitted_at)"
		" VALUES ($1, $2, $3, $4, $5, $6, clock_timestamp()) RETURNING id",
		6, {TEXTOID, REGROLEOID, INT4OID, INTERVALOID, BOOLOID, TIMESTAMPTZOID}
	};
	char	   *command;
	TimestampTz run_at;
	int32		max_attempts;
	bool		transactional;
	Datum		values[6];
	char		nulls[6] = "      ";
	BgwdOwnerContext owner;
	bool		isnull;
	int64		job_id;

	BgwdShmemAttach();
	command = BgwdCommandArg(fcinfo, 0);

	run_at = PG_ARGISNULL(1) ? GetCurrentTransactionStartTimestamp() :
		PG_GETARG_TIMESTAMPTZ(1);
	if (TIMESTAMP_NOT_FINITE(run_at))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("run_at must be a finite time")));

	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("max_attempts must not be null")));
	max_attempts = PG_GETARG_INT32(2);
	if (max_attempts < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_attempts must be at least 1"),
				 errdetail("The value given was %d.", max_attempts)));

	if (!PG_ARGISNULL(3))
		(void) BgwdIntervalToMs(PG_GETARG_INTERVAL_P(3), "timeout");
	else
		nulls[3] = 'n';

	if (PG_ARGISNULL(4))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("transactional must not be null")));
	transactional = PG_GETARG_BOOL(4);

	values[0] = CStringGetTextDatum(command);
	values[1] = ObjectIdGetDatum(GetUserId());
	values[2] = Int32GetDatum(max_attempts);
	values[3] = PG_ARGISNULL(3) ? (Datum) 0 : PG_GETARG_DATUM(3);
	values[4] = BoolGetDatum(transactional);
	values[5] = TimestampTzGetDatum(run_at);

	SPI_connect();
	BgwdBecomeOwner(&owner);
	BgwdQueryRun(&q, values, nulls, false, 0);
	job_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										 SPI_tuptable->tupdesc, 1, &isnull));
	BgwdRestoreUser(&owner);
	SPI_finish();

	pg_atomic_fetch_add_u64(&BgwdShmem->jobs_submitted, 1);
	if (xact_first_job == 0)
		xact_first_job = job_id;
	BgwdWakeAfterCommit(GetUserId(), run_at > GetCurrentTimestamp());

	PG_RETURN_INT64(job_id);
}

/*
 * cancel(job_id int8) RETURNS bool
 *
 * A queued job is marked canceled at once.  A running one gets its
 * worker's query canceled (SIGINT, as pg_cancel_backend does); the worker
 * then marks it canceled and goes on with the next job.  Returns false if
 * the job had already finished.
 */
Datum
bgworker_demo_cancel(PG_FUNCTION_ARGS)
{
	static BgwdQuery q = {
		"UPDATE bgworker_demo.jobs SET status = 'canceled',"
		" finished_at = clock_timestamp(), last_error = 'canceled by cancel()',"
		" sqlstate = '57014', worker_pid = NULL"
		" WHERE id = $1 AND status = $2",
		2, {INT8OID, TEXTOID}
	};
	int64		job_id = PG_GETARG_INT64(0);
	BgwdOwnerContext owner;
	Datum		values[2];
	char	   *status;
	bool		result = false;
	int			tries;

	BgwdShmemAttach();
	SPI_connect();

	/* As the caller: row-level security hides other roles' jobs. */
	status = read_job_status(job_id, false);

	BgwdBecomeOwner(&owner);
	values[0] = Int64GetDatum(job_id);

	/*
	 * A worker may claim the job while we look: then our UPDATE finds it
	 * running and we look again.  Two rounds are enough, since a job goes
	 * from queued to running only once per attempt.
	 */
	for (tries = 0; tries < 3; tries++)
	{
		if (strcmp(status, "queued") == 0)
		{
			values[1] = CStringGetTextDatum("queued");
			BgwdQueryRun(&q, values, NULL, false, 0);
			if (SPI_processed > 0)
			{
				result = true;
				break;
			}
		}
		else if (strcmp(status, "running") == 0)
		{
			if (cancel_running(job_id))
			{
				result = true;
				break;
			}
			/* Its worker is gone: the job is an orphan, cancel the row. */
			values[1] = CStringGetTextDatum("running");
			BgwdQueryRun(&q, values, NULL, false, 0);
			if (SPI_processed > 0)
			{
				result = true;
				break;
			}
		}
		else
			break;				/* finished */
		status = read_job_status(job_id, true);
	}

	BgwdRestoreUser(&owner);
	SPI_finish();

	if (result)
		BgwdBroadcastAfterCommit();
	PG_RETURN_BOOL(result);
}

/*
 * cancel_running
 *		Asks the worker running the job to cancel it.  Returns false if no
 *		worker is running it.
 */
static bool
cancel_running(int64 job_id)
{
	int			i;
	pid_t		pid = 0;

	LWLockAcquire(BgwdShmem->lock, LW_EXCLUSIVE);
	for (i = 0; i < BgwdShmem->nslots; i++)
	{
		BgwdSlot   *s = &BgwdShmem->slots[i];

		if (s->kind == BGWD_KIND_WORKER && s->job_id == job_id &&
			s->pid != 0 && s->dboid == MyDatabaseId)
		{
			s->cancel_job_id = job_id;
			pid = s->pid;
			break;
		}
	}
	LWLockRelease(BgwdShmem->lock);

	if (pid == 0)
		return false;
	if (kill(pid, SIGINT) != 0 && errno != ESRCH)
		ereport(WARNING,
				(errmsg("could not send signal to process %d: %m", (int) pid)));
	return true;
}

/*
 * wait(job_id int8, timeout interval) RETURNS text
 *
 * Sleeps on the job-done condition variable until the job has finished,
 * or the timeout has passed, and returns its status then.  Each check
 * reads the row with a new snapshot, so it needs READ COMMITTED.
 */
Datum
bgworker_demo_wait(PG_FUNCTION_ARGS)
{
	int64		job_id = PG_GETARG_INT64(0);
	int64		timeout_ms = BgwdIntervalToMs(PG_GETARG_INTERVAL_P(1), "timeout");
	TimestampTz deadline;
	char	   *status;

	BgwdShmemAttach();

	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("wait() cannot see a job finish in a REPEATABLE READ or SERIALIZABLE transaction"),
				 errhint("Call it in a READ COMMITTED transaction.")));
	if (xact_first_job != 0 && job_id >= xact_first_job)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TRANSACTION_STATE),
				 errmsg("cannot wait for job %lld in the transaction that submitted it",
						(long long) job_id),
				 errhint("Commit the transaction first: no worker can see the job before that.")));

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	SPI_connect();

	ConditionVariablePrepareToSleep(&BgwdShmem->job_done_cv);
	for (;;)
	{
		long		remaining;

		status = read_job_status(job_id, false);
		if (strcmp(status, "queued") != 0 && strcmp(status, "running") != 0)
			break;
		remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(),
													deadline);
		if (remaining <= 0)
			break;
		/* Returns true on timeout; we look once more either way. */
		(void) ConditionVariableTimedSleep(&BgwdShmem->job_done_cv, remaining,
										   PG_WAIT_EXTENSION);
	}
	ConditionVariableCancelSleep();

	/* Copy out of SPI's memory before SPI_finish frees it. */
	status = MemoryContextStrdup(TopTransactionContext, status);
	SPI_finish();
	PG_RETURN_TEXT_P(cstring_to_text(status));
}

/*
 * read_job_status
 *		Current status of a job, with a fresh snapshot.  As the caller
 *		(as_owner false) an invisible job is reported as not existing.
 *		Caller has SPI connected.
 */
static char *
read_job_status(int64 job_id, bool as_owner)
{
	static BgwdQuery q = {
		"SELECT status FROM bgworker_demo.jobs WHERE id = $1",
		1, {INT8OID}
	};
	Datum		values[1];
	BgwdOwnerContext owner;

	values[0] = Int64GetDatum(job_id);
	if (as_owner)
		BgwdQueryRun(&q, values, NULL, false, 0);
	else
	{
		/*
		 * Run as the caller, for row-level security, but with our
		 * search_path: no owner switch, only the GUC level.
		 */
		owner.save_nestlevel = NewGUCNestLevel();
		(void) set_config_option("search_path", "pg_catalog, pg_temp",
								 PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
		BgwdQueryRun(&q, values, NULL, false, 0);
		AtEOXact_GUC(true, owner.save_nestlevel);
	}

	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("job %lld does not exist", (long long) job_id),
				 errhint("A role sees only its own jobs in bgworker_demo.jobs.")));
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}

/*
 * BgwdWakeAfterCommit
 *		Arranges for the commit of the current transaction to wake a worker
 *		of the role (or the launcher, when "future" is set, the role is
 *		invalid or no worker of it is idle).
 */
void
BgwdWakeAfterCommit(Oid roleid, bool future)
{
	if (!xact_callback_registered)
	{
		RegisterXactCallback(bgwd_xact_callback, NULL);
		xact_callback_registered = true;
	}
	if (wake_pending && wake_roleid != roleid)
		wake_launcher = true;
	if (future || !OidIsValid(roleid))
		wake_launcher = true;
	wake_pending = true;
	wake_roleid = roleid;
	if (wake_jobs < INT_MAX)
		wake_jobs++;
}

/*
 * BgwdBroadcastAfterCommit
 *		Arranges for the commit to wake the sessions waiting in wait().
 */
void
BgwdBroadcastAfterCommit(void)
{
	if (!xact_callback_registered)
	{
		RegisterXactCallback(bgwd_xact_callback, NULL);
		xact_callback_registered = true;
	}
	broadcast_pending = true;
}

/*
 * bgwd_xact_callback
 *		At commit, does the wake-ups arranged during the transaction; at
 *		abort, forgets them.  Must not fail: it runs after the commit.
 */
static void
bgwd_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (wake_pending && BgwdShmem != NULL)
				wake_now();
			if (broadcast_pending && BgwdShmem != NULL)
				ConditionVariableBroadcast(&BgwdShmem->job_done_cv);
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			break;
		default:
			return;
	}
	wake_pending = false;
	wake_launcher = false;
	broadcast_pending = false;
	wake_roleid = InvalidOid;
	wake_jobs = 0;
	xact_first_job = 0;
}

/*
 * wake_now
 *		After a commit that queued work for (this database, wake_roleid):
 *		sets the latches of as many idle workers of the role as jobs were
 *		queued (a burst is spread over them); if none is idle, those
 *		of its busy workers, which look for more work after each job (a
 *		worker about to go idle then looks once more instead of sleeping);
 *		and the launcher's only when it can do something about it: when
 *		wake_launcher is set, the role has no worker here, or more jobs came
 *		than idle workers and a worker slot is free for another one.  A busy queue thus does not keep the
 *		launcher busy.
 */
static void
wake_now(void)
{
	int			woke_idle = 0;
	int			mine = 0;
	int			total = 0;
	int			i;

	LWLockAcquire(BgwdShmem->lock, LW_SHARED);
	if (OidIsValid(wake_roleid))
	{
		for (i = 0; i < BgwdShmem->nslots; i++)
		{
			BgwdSlot   *s = &BgwdShmem->slots[i];

			if (s->kind != BGWD_KIND_WORKER || s->state == BGWD_STATE_FREE)
				continue;
			total++;
			if (s->dboid != MyDatabaseId || s->roleid != wake_roleid ||
				s->exit_requested)
				continue;
			mine++;
			if (s->state == BGWD_STATE_IDLE && s->latch != NULL &&
				woke_idle < wake_jobs)
			{
				SetLatch(s->latch);
				woke_idle++;
			}
		}
		if (woke_idle == 0 && mine > 0)
		{
			for (i = 0; i < BgwdShmem->nslots; i++)
			{
				BgwdSlot   *s = &BgwdShmem->slots[i];

				if (s->kind == BGWD_KIND_WORKER && s->state == BGWD_STATE_RUNNING &&
					s->dboid == MyDatabaseId && s->roleid == wake_roleid &&
					s->latch != NULL)
					SetLatch(s->latch);
			}
		}
	}
	if (wake_launcher || !OidIsValid(wake_roleid) || mine == 0 ||
		(woke_idle < wake_jobs && total < bgworker_demo_max_workers))
	{
		BgwdLauncher *l = BgwdFindLauncher(MyDatabaseId, NULL);

		if (l != NULL && l->latch != NULL)
			SetLatch(l->latch);
	}
	LWLockRelease(BgwdShmem->lock);
}

/*
 * BgwdExtensionOwner
 *		The owner of bgworker_demo.jobs, that is, of the extension's tables.
 *		Looked up once per transaction.
 */
Oid
BgwdExtensionOwner(void)
{
	Oid			nspid;
	Oid			relid;
	HeapTuple	tup;

	if (owner_cache_lxid == MyProc->lxid && OidIsValid(owner_cache))
		return owner_cache;

	nspid = get_namespace_oid("bgworker_demo", true);
	relid = OidIsValid(nspid) ? get_relname_relid("jobs", nspid) : InvalidOid;
	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension bgworker_demo is not installed in this database"),
				 errhint("Run CREATE EXTENSION bgworker_demo.")));
	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner_cache = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	owner_cache_lxid = MyProc->lxid;
	return owner_cache;
}

/*
 * BgwdBecomeOwner
 *		Switches to the extension owner with a fixed search_path, for
 *		writes to our tables.  Undone by BgwdRestoreUser, or by the abort
 *		of the transaction.
 */
void
BgwdBecomeOwner(BgwdOwnerContext *ctx)
{
	Oid			owner = BgwdExtensionOwner();

	GetUserIdAndSecContext(&ctx->save_userid, &ctx->save_sec_context);
	SetUserIdAndSecContext(owner, ctx->save_sec_context |
						   SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	ctx->save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
}

/*
 * BgwdRestoreUser
 *		Undoes BgwdBecomeOwner.
 */
void
BgwdRestoreUser(BgwdOwnerContext *ctx)
{
	AtEOXact_GUC(true, ctx->save_nestlevel);
	SetUserIdAndSecContext(ctx->save_userid, ctx->save_sec_context);
}

/*
 * BgwdQueryRun
 *		Prepares the query on first use (with a generic plan), keeps the
 *		plan, and executes it.
 *		Errors out if SPI reports a failure.  Returns SPI's result code.
 */
int
BgwdQueryRun(BgwdQuery *q, Datum *values, const char *nulls, bool read_only,
			 long count)
{
	int			rc;

	if (q->plan == NULL)
	{
		/*
		 * A generic plan: these are short index look-ups, and a custom plan
		 * for every run (the plan cache's default for the first runs, and
		 * for good when it judges them cheaper) would cost more than the
		 * query itself, once or more per job.
		 */
		SPIPlanPtr	plan = SPI_prepare_cursor(q->sql, q->nargs, q->argtypes,
											  CURSOR_OPT_GENERIC_PLAN);

		if (plan == NULL)
			elog(ERROR, "could not prepare query \"%s\": %s",
				 q->sql, SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "could not keep plan of \"%s\"", q->sql);
		q->plan = plan;
	}
	rc = SPI_execute_plan(q->plan, values, nulls, read_only, count);
	if (rc < 0)
		elog(ERROR, "query \"%s\" failed: %s", q->sql,
			 SPI_result_code_string(rc));
	return rc;
}

/*
 * BgwdIntervalToMs
 *		An interval argument in milliseconds.  Errors out if it is negative,
 *		zero or longer than INT_MAX ms (about 24 days, statement_timeout's
 *		limit).  Months count as 30 days.  "what" names the argument.
 */
int64
BgwdIntervalToMs(Interval *iv, const char *what)
{
	int64		us;

	us = iv->time + (int64) iv->day * USECS_PER_DAY +
		(int64) iv->month * DAYS_PER_MONTH * USECS_PER_DAY;
	if (us <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be greater than zero", what)));
	if (us / 1000 > INT_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be at most %d milliseconds", what, INT_MAX)));
	return Max(us / 1000, 1);
}

/*
 * BgwdCheckSyntax
 *		Parses a job's command, so that a syntax error is reported to the
 *		caller at once.  The error points into the command (as an internal
 *		query, the way SPI reports them), not into the caller's statement.
 */
void
BgwdCheckSyntax(const char *command)
{
	ErrorContextCallback errcallback;

	errcallback.callback = syntax_error_callback;
	errcallback.arg = (void *) command;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;
	(void) raw_parser(command, RAW_PARSE_DEFAULT);
	error_context_stack = errcallback.previous;
}

/*
 * syntax_error_callback
 *		Moves a syntax error's cursor position into the command.
 */
static void
syntax_error_callback(void *arg)
{
	const char *command = (const char *) arg;
	int			position = geterrposition();

	if (position > 0)
	{
		errposition(0);
		internalerrposition(position);
		internalerrquery(command);
	}
	errcontext("command of a bgworker_demo job");
}

/*
 * BgwdCommandArg
 *		A command argument: not NULL, not empty (blanks and semicolons only
 *		count as empty), and of valid syntax, so that the caller sees the
 *		error now rather than a worker later.  Returns it as a C string.
 */
char *
BgwdCommandArg(FunctionCallInfo fcinfo, int argno)
{
	char	   *command;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("command must not be null")));
	command = text_to_cstring(PG_GETARG_TEXT_PP(argno));
	if (command[strspn(command, " \t\r\n\f\v;")] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("command must not be empty")));
	BgwdCheckSyntax(command);
	return command;
}

/*
 * BgwdNameArg
 *		A name argument (of a schedule, a daemon): neither NULL nor blank.
 *		"what" names it in the error.  Returns it as a C string.
 */
char *
BgwdNameArg(FunctionCallInfo fcinfo, int argno, const char *what)
{
	char	   *name;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", what)));
	name = text_to_cstring(PG_GETARG_TEXT_PP(argno));
	if (name[strspn(name, " \t\r\n\f\v")] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be empty", what)));
	return name;
}
