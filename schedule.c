/*-------------------------------------------------------------------------
 *
 * schedule.c
 *		Recurring jobs: the SQL functions that define schedules, and the
 *		launcher's step that turns due schedules into jobs.
 *
 * A schedule is a row of bgworker_demo.schedules with its next due time
 * (next_run).  The launcher sleeps exactly until the earliest next_run
 * (launcher.c); when it wakes, each due schedule becomes one job in the
 * queue, with run_at set to the due time (so that started_at - run_at is
 * the lag), owned by the schedule's owner.  Schedules therefore share the
 * queue's workers, rights, history and log lines.
 *
 * Rules:
 *	- Overlap: unless the schedule allows it, no run is queued while the
 *	  schedule's previous job is still queued or running; the skip is
 *	  counted in "skipped".
 *	- Catch-up: after downtime a schedule runs once, at once, however many
 *	  due times it missed; the next due time is then computed from now.
 *	- Interval schedules stay on their grid (created_at + k * interval)
 *	  while the launcher keeps up, so they do not drift.
 *	- Editing a schedule sets its next due time from now and wakes the
 *	  launcher after commit, so the change takes effect at once.
 *
 * Copyright (c) 2026, bgworker_demo developers
 *
 * IDENTIFICATION
 *		bgworker_demo/schedule.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "parser/parser.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "bgworker_demo.h"
#include "cron.h"

/* Most due schedules the launcher turns into jobs in one round */
#define DUE_BATCH				1000

/*
 * When a due schedule's row is locked by another session (an edit or a
 * run_now() not yet committed), the launcher looks again after this long.
 */
#define LOCKED_RETRY_MS			100

PG_FUNCTION_INFO_V1(bgworker_demo_schedule);
PG_FUNCTION_INFO_V1(bgworker_demo_unschedule);
PG_FUNCTION_INFO_V1(bgworker_demo_run_now);
PG_FUNCTION_INFO_V1(bgworker_demo_alter_schedule);

static void enqueue_run(int64 schedule_id, Oid roleid, Datum command,
						TimestampTz due);

/*
 * schedule(name text, spec text, command text, overlap bool) RETURNS int8
 *
 * Creates the calling role's schedule of that name, or replaces its spec,
 * command and overlap if it exists (it is then enabled again).  The first
 * run is due at the spec's next time after now.  Returns the id.
 */
Datum
bgworker_demo_schedule(PG_FUNCTION_ARGS)
{
	static BgwdQuery q = {
		"INSERT INTO bgworker_demo.schedules"
		" (name, username, spec, command, overlap, next_run)"
		" VALUES ($1, $2, $3, $4, $5, $6)"
		" ON CONFLICT (username, name) DO UPDATE SET spec = EXCLUDED.spec,"
		"  command = EXCLUDED.command, overlap = EXCLUDED.overlap,"
		"  next_run = EXCLUDED.next_run, enabled = true"
		" RETURNING id",
		6, {TEXTOID, REGROLEOID, TEXTOID, TEXTOID, BOOLOID, TIMESTAMPTZOID}
	};
	char	   *name = BgwdNameArg(fcinfo, 0, "schedule name");
	char	   *spec_text;
	BgwdSpec	spec;
	BgwdOwnerContext owner;
	Datum		values[6];
	bool		isnull;
	int64		id;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("spec must not be null")));
	spec_text = text_to_cstring(PG_GETARG_TEXT_PP(1));
	BgwdParseSpec(spec_text, &spec);
	(void) BgwdCommandArg(fcinfo, 2);

	values[0] = CStringGetTextDatum(name);
	values[1] = ObjectIdGetDatum(GetUserId());
	values[2] = CStringGetTextDatum(spec_text);
	values[3] = PG_GETARG_DATUM(2);
	values[4] = BoolGetDatum(PG_ARGISNULL(3) ? false : PG_GETARG_BOOL(3));
	values[5] = TimestampTzGetDatum(BgwdSpecNext(&spec, GetCurrentTimestamp()));

	SPI_connect();
	BgwdBecomeOwner(&owner);
	BgwdQueryRun(&q, values, NULL, false, 0);
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
									 SPI_tuptable->tupdesc, 1, &isnull));
	BgwdRestoreUser(&owner);
	SPI_finish();

	BgwdWakeAfterCommit(InvalidOid, true);
	PG_RETURN_INT64(id);
}

/*
 * unschedule(name text) RETURNS bool
 *
 * Drops the calling role's schedule of that name.  Jobs it queued stay.
 * Returns false if there was none.
 */
Datum
bgworker_demo_unschedule(PG_FUNCTION_ARGS)
{
	static BgwdQuery q = {
		"DELETE FROM bgworker_demo.schedules WHERE username::oid = $1 AND name = $2",
		2, {OIDOID, TEXTOID}
	};
	BgwdOwnerContext owner;
	Datum		values[2];
	bool		found;

	values[0] = ObjectIdGetDatum(GetUserId());
	values[1] = PG_GETARG_DATUM(0);

	SPI_connect();
	BgwdBecomeOwner(&owner);
	BgwdQueryRun(&q, values, NULL, false, 0);
	found = SPI_processed > 0;
	BgwdRestoreUser(&owner);
	SPI_finish();

	if (found)
		BgwdWakeAfterCommit(InvalidOid, true);
	PG_RETURN_BOOL(found);
}

/*
 * run_now(name text) RETURNS int8
 *
 * Queues one run of the calling role's schedule at once, whatever its
 * overlap rule, and returns the job id.  The schedule's next due time
 * does not change.
 */
Datum
bgworker_demo_run_now(PG_FUNCTION_ARGS)
{
	static BgwdQuery q = {
		"SELECT id, command FROM bgworker_demo.schedules"
		" WHERE username::oid = $1 AND name = $2 FOR UPDATE",
		2, {OIDOID, TEXTOID}
	};
	BgwdOwnerContext owner;
	Datum		values[2];
	bool		isnull;
	int64		id;
	Datum		command;
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	Oid			roleid = GetUserId();
	int64		job_id;

	/* The caller's role: once we are the owner, GetUserId() is the owner. */
	values[0] = ObjectIdGetDatum(roleid);
	values[1] = PG_GETARG_DATUM(0);

	SPI_connect();
	BgwdBecomeOwner(&owner);
	BgwdQueryRun(&q, values, NULL, false, 0);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("schedule \"%s\" does not exist", name),
				 errhint("A role can only use its own schedules; see bgworker_demo.schedules.")));
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
									 SPI_tuptable->tupdesc, 1, &isnull));
	command = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2,
							&isnull);
	enqueue_run(id, roleid, command, GetCurrentTimestamp());
	job_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										 SPI_tuptable->tupdesc, 1, &isnull));
	BgwdRestoreUser(&owner);
	SPI_finish();

	pg_atomic_fetch_add_u64(&BgwdShmem->jobs_submitted, 1);
	BgwdWakeAfterCommit(roleid, false);
	PG_RETURN_INT64(job_id);
}

/*
 * alter_schedule(name text, enabled bool, spec text, command text,
 *				  overlap bool) RETURNS void
 *
 * Changes what is not NULL.  A new spec, or enabling, sets the next due
 * time from now.
 */
Datum
bgworker_demo_alter_schedule(PG_FUNCTION_ARGS)
{
	static BgwdQuery q = {
		"UPDATE bgworker_demo.schedules SET"
		" enabled = COALESCE($3, enabled),"
		" spec = COALESCE($4, spec),"
		" command = COALESCE($5, command),"
		" overlap = COALESCE($6, overlap),"
		" next_run = COALESCE($7, next_run)"
		" WHERE username::oid = $1 AND name = $2",
		7, {OIDOID, TEXTOID, BOOLOID, TEXTOID, TEXTOID, BOOLOID, TIMESTAMPTZOID}
	};
	static BgwdQuery spec_q = {
		"SELECT spec FROM bgworker_demo.schedules WHERE username::oid = $1 AND name = $2",
		2, {OIDOID, TEXTOID}
	};
	char	   *name = BgwdNameArg(fcinfo, 0, "schedule name");
	BgwdOwnerContext owner;
	Datum		values[7];
	char		nulls[7] = "       ";
	int			i;
	bool		new_next = false;
	char	   *spec_text = NULL;

	values[0] = ObjectIdGetDatum(GetUserId());
	values[1] = CStringGetTextDatum(name);
	for (i = 1; i <= 4; i++)
	{
		if (PG_ARGISNULL(i))
		{
			nulls[i + 1] = 'n';
			values[i + 1] = (Datum) 0;
		}
		else
			values[i + 1] = PG_GETARG_DATUM(i);
	}
	if (!PG_ARGISNULL(2))
	{
		BgwdSpec	spec;

		spec_text = text_to_cstring(PG_GETARG_TEXT_PP(2));
		BgwdParseSpec(spec_text, &spec);
		new_next = true;
	}
	if (!PG_ARGISNULL(3))
		(void) BgwdCommandArg(fcinfo, 3);
	if (!PG_ARGISNULL(1) && PG_GETARG_BOOL(1))
		new_next = true;

	SPI_connect();
	BgwdBecomeOwner(&owner);

	if (new_next && spec_text == NULL)
	{
		BgwdQueryRun(&spec_q, values, NULL, false, 0);
		if (SPI_processed > 0)
			spec_text = SPI_getvalue(SPI_tuptable->vals[0],
									 SPI_tuptable->tupdesc, 1);
	}
	if (new_next && spec_text != NULL)
	{
		BgwdSpec	spec;

		BgwdParseSpec(spec_text, &spec);
		values[6] = TimestampTzGetDatum(BgwdSpecNext(&spec,
													 GetCurrentTimestamp()));
	}
	else
		nulls[6] = 'n';

	BgwdQueryRun(&q, values, nulls, false, 0);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("schedule \"%s\" does not exist", name),
				 errhint("A role can only use its own schedules; see bgworker_demo.schedules.")));
	BgwdRestoreUser(&owner);
	SPI_finish();

	BgwdWakeAfterCommit(InvalidOid, true);
	PG_RETURN_VOID();
}

/*
 * enqueue_run
 *		Queues one job for the schedule, due at "due", and records it as the
 *		schedule's last run.  Caller runs as the owner with SPI connected;
 *		SPI_tuptable then holds the new job id in column 1.
 */
static void
enqueue_run(int64 schedule_id, Oid roleid, Datum command, TimestampTz due)
{
	static BgwdQuery q = {
		"WITH j AS (INSERT INTO bgworker_demo.jobs"
		"  (command, username, run_at, submitted_at, schedule_id)"
		"  VALUES ($2, $3, $4, clock_timestamp(), $1) RETURNING id)"
		" UPDATE bgworker_demo.schedules s SET last_job_id = j.id,"
		"  last_run_at = clock_timestamp(), runs = runs + 1"
		" FROM j WHERE s.id = $1 RETURNING j.id",
		4, {INT8OID, TEXTOID, REGROLEOID, TIMESTAMPTZOID}
	};
	Datum		values[4];

	values[0] = Int64GetDatum(schedule_id);
	values[1] = command;
	values[2] = ObjectIdGetDatum(roleid);
	values[3] = TimestampTzGetDatum(due);
	BgwdQueryRun(&q, values, NULL, false, 0);
}

/*
 * BgwdSchedulesEnqueueDue
 *		The launcher's step: queues a job for every enabled schedule due at
 *		"now" (respecting overlap), moves each one's next_run on, and
 *		returns when to look again: the earliest next_run of all (DT_NOEND
 *		if none), or sooner if a due schedule had to be left for now.
 *
 * Caller runs as the extension owner inside a transaction with SPI
 * connected.
 */
TimestampTz
BgwdSchedulesEnqueueDue(TimestampTz now)
{
	static BgwdQuery due_q = {
		"SELECT s.id, s.username::oid, s.spec, s.command, s.overlap, s.next_run,"
		"  j.status"
		" FROM bgworker_demo.schedules s"
		" LEFT JOIN bgworker_demo.jobs j ON j.id = s.last_job_id"
		" WHERE s.enabled AND s.next_run <= $1"
		" ORDER BY s.next_run LIMIT " CppAsString2(DUE_BATCH)
		" FOR UPDATE OF s SKIP LOCKED",
		1, {TIMESTAMPTZOID}
	};
	static BgwdQuery skip_q = {
		"UPDATE bgworker_demo.schedules SET skipped = skipped + 1, next_run = $2"
		" WHERE id = $1",
		2, {INT8OID, TIMESTAMPTZOID}
	};
	static BgwdQuery next_q = {
		"UPDATE bgworker_demo.schedules SET next_run = $2 WHERE id = $1",
		2, {INT8OID, TIMESTAMPTZOID}
	};
	static BgwdQuery min_q = {
		"SELECT min(next_run) FROM bgworker_demo.schedules WHERE enabled",
		0
	};
	Datum		values[2];
	SPITupleTable *due;
	uint64		ndue;
	uint64		i;
	bool		isnull;
	Datum		d;
	TimestampTz result;

	values[0] = TimestampTzGetDatum(now);
	BgwdQueryRun(&due_q, values, NULL, false, 0);
	due = SPI_tuptable;
	ndue = SPI_processed;

	for (i = 0; i < ndue; i++)
	{
		HeapTuple	tup = due->vals[i];
		TupleDesc	desc = due->tupdesc;
		int64		id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		Oid			roleid = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
		char	   *spec_text = SPI_getvalue(tup, desc, 3);
		Datum		command = SPI_getbinval(tup, desc, 4, &isnull);
		bool		overlap = DatumGetBool(SPI_getbinval(tup, desc, 5, &isnull));
		TimestampTz due_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 6, &isnull));
		char	   *last_status = SPI_getvalue(tup, desc, 7);
		bool		busy;
		BgwdSpec	spec;
		TimestampTz next;

		/* Stays on its grid while we keep up; from now after downtime. */
		BgwdParseSpec(spec_text, &spec);
		next = BgwdSpecNext(&spec, due_at);
		if (next <= now)
			next = BgwdSpecNext(&spec, now);

		values[0] = Int64GetDatum(id);
		values[1] = TimestampTzGetDatum(next);

		busy = last_status != NULL &&
			(strcmp(last_status, "queued") == 0 ||
			 strcmp(last_status, "running") == 0);
		if (busy && !overlap)
		{
			BgwdQueryRun(&skip_q, values, NULL, false, 0);
			continue;
		}
		enqueue_run(id, roleid, command, due_at);
		BgwdQueryRun(&next_q, values, NULL, false, 0);
		pg_atomic_fetch_add_u64(&BgwdShmem->jobs_submitted, 1);
	}

	BgwdQueryRun(&min_q, NULL, NULL, false, 0);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	result = isnull ? DT_NOEND : DatumGetTimestampTz(d);

	/*
	 * Every schedule handled above is now due after "now", so one still due
	 * was left: beyond the batch (look again at once), or locked by a
	 * session editing it or in run_now().  That session's commit may not
	 * wake us (run_now() wakes a worker; a rollback wakes nobody), and a
	 * time already past would make the launcher spin until the lock goes:
	 * look again a little later.
	 */
	if (result <= now)
		result = ndue >= DUE_BATCH ? now :
			TimestampTzPlusMilliseconds(now, LOCKED_RETRY_MS);
	return result;
}
