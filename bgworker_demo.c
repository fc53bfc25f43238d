/*-------------------------------------------------------------------------
 *
 * bgworker_demo.c
 *		Entry point of bgworker_demo: settings, shared memory hooks and the
 *		registration of the static background workers.
 *
 * The library must be loaded through shared_preload_libraries: only then
 * may it request shared memory and register static workers.  _PG_init
 * registers
 *
 *	- one launcher per database in bgworker_demo.databases
 *	  (BgWorkerStart_RecoveryFinished, restarted after restart_interval);
 *	- the monitor (BgWorkerStart_PostmasterStart, no database);
 *	- the standby reporter (BgWorkerStart_ConsistentState), if
 *	  bgworker_demo.standby_interval > 0 at server start.
 *
 * Job workers, daemons and launch_worker() workers are dynamic: see
 * launcher.c and worker.c.  The SQL functions that look at processes
 * (workers(), wakeup()) are here too.
 *
 * Copyright (c) 2026, bgworker_demo developers
 *
 * IDENTIFICATION
 *		bgworker_demo/bgworker_demo.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_authid.h"
#include "commands/dbcommands.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

#include "bgworker_demo.h"

PG_MODULE_MAGIC;

/* PG 15's fmgr.h does not declare it. */
extern PGDLLEXPORT void _PG_init(void);

PG_FUNCTION_INFO_V1(bgworker_demo_workers);
PG_FUNCTION_INFO_V1(bgworker_demo_wakeup);

static void bgwd_shmem_request(void);
static void bgwd_shmem_startup(void);
static void define_settings(void);
static void register_launchers(void);
static void register_static_worker(const char *name, const char *type,
								   const char *function_name,
								   BgWorkerStartTime start_time,
								   int flags, Datum main_arg,
								   const char *extra);

/* Saved hook values, chained by ours */
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* Settings; each initializer equals the boot value */
char	   *bgworker_demo_databases = NULL;
int			bgworker_demo_max_workers = 2;
int			bgworker_demo_idle_timeout = 10000;
int			bgworker_demo_retry_backoff = 10000;
int			bgworker_demo_log_jobs = BGWD_LOG_ERRORS;
bool		bgworker_demo_enabled = true;
int			bgworker_demo_restart_interval = 10;
int			bgworker_demo_monitor_interval = 60;
int			bgworker_demo_standby_interval = 0;
int			bgworker_demo_history_retention = 7 * 24 * 3600;
char	   *bgworker_demo_timezone = NULL;
int			bgworker_demo_max_restarts = 3;
int			bgworker_demo_max_seconds = 60;

static const struct config_enum_entry log_jobs_options[] = {
	{"off", BGWD_LOG_OFF, false},
	{"errors", BGWD_LOG_ERRORS, false},
	{"all", BGWD_LOG_ALL, false},
	{NULL, 0, false}
};

/*
 * _PG_init
 *		Module load callback.
 *
 * Refuses to load other than through shared_preload_libraries, because
 * static workers and shared memory can only be set up then.  Defines the
 * settings, installs the shared memory hooks and registers the static
 * workers.
 */
void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("bgworker_demo must be loaded via shared_preload_libraries"),
				 errhint("Add bgworker_demo to shared_preload_libraries in postgresql.conf and restart the server.")));

	define_settings();

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = bgwd_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = bgwd_shmem_startup;

	register_launchers();

	register_static_worker("bgworker_demo monitor", "bgworker_demo monitor",
						   "BgwdMonitorMain", BgWorkerStart_PostmasterStart,
						   BGWORKER_SHMEM_ACCESS, (Datum) 0, "");

	if (bgworker_demo_standby_interval > 0)
	{
		char	   *first_db = "postgres";
		List	   *names;
		char	   *raw = pstrdup(bgworker_demo_databases);

		if (SplitIdentifierString(raw, ',', &names) && names != NIL)
			first_db = linitial(names);
		register_static_worker("bgworker_demo standby", "bgworker_demo standby",
							   "BgwdStandbyMain", BgWorkerStart_ConsistentState,
							   BGWORKER_SHMEM_ACCESS |
							   BGWORKER_BACKEND_DATABASE_CONNECTION,
							   (Datum) 0, first_db);
	}
}

/*
 * define_settings
 *		Defines every bgworker_demo.* setting and reserves the prefix.
 *
 * What sizes shared memory or decides what is registered is
 * PGC_POSTMASTER; the rest may change on reload (PGC_SIGHUP), and the
 * per-session ones (timezone) are PGC_USERSET.
 */
static void
define_settings(void)
{
	DefineCustomStringVariable("bgworker_demo.databases",
							   "Databases that get a bgworker_demo launcher.",
							   "A comma-separated list of database names.",
							   &bgworker_demo_databases,
							   "postgres",
							   PGC_POSTMASTER,
							   GUC_LIST_INPUT,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("bgworker_demo.max_workers",
							"Maximum number of job workers, over all databases.",
							"Job workers are taken from max_worker_processes, "
							"which parallel query and replication share.",
							&bgworker_demo_max_workers,
							2, 0, 1024,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("bgworker_demo.idle_timeout",
							"Time after which a job worker without work exits.",
							NULL,
							&bgworker_demo_idle_timeout,
							10000, 0, INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("bgworker_demo.retry_backoff",
							"Delay before the first retry of a failed job.",
							"The n-th retry waits retry_backoff * 2^(n-1), plus up to 25% jitter.",
							&bgworker_demo_retry_backoff,
							10000, 0, INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomEnumVariable("bgworker_demo.log_jobs",
							 "Which finished jobs are written to the server log.",
							 NULL,
							 &bgworker_demo_log_jobs,
							 BGWD_LOG_ERRORS,
							 log_jobs_options,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomBoolVariable("bgworker_demo.enabled",
							 "Whether launchers start jobs and schedules.",
							 "Turn off to pause every queue; running jobs finish.",
							 &bgworker_demo_enabled,
							 true,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("bgworker_demo.restart_interval",
							"Time before the postmaster restarts a static worker that exited with an error.",
							NULL,
							&bgworker_demo_restart_interval,
							10, 1, 3600,
							PGC_POSTMASTER,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("bgworker_demo.monitor_interval",
							"Time between the monitor's health lines in the server log.",
							"0 turns the lines off.",
							&bgworker_demo_monitor_interval,
							60, 0, 86400,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("bgworker_demo.standby_interval",
							"Time between the standby reporter's replay lag lines.",
							"The reporter is registered only if this is above 0 at server start.",
							&bgworker_demo_standby_interval,
							0, 0, 86400,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("bgworker_demo.history_retention",
							"Age after which finished jobs are deleted.",
							"0 keeps them forever.",
							&bgworker_demo_history_retention,
							7 * 24 * 3600, 0, INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomStringVariable("bgworker_demo.timezone",
							   "Time zone in which cron schedules are evaluated.",
							   "Empty means the server's TimeZone.",
							   &bgworker_demo_timezone,
							   "",
							   PGC_USERSET,
							   0,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("bgworker_demo.max_restarts",
							"Restarts of a daemon allowed within max_seconds before it is marked failed.",
							NULL,
							&bgworker_demo_max_restarts,
							3, 0, 1000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("bgworker_demo.max_seconds",
							"Window in which a daemon's restarts are counted.",
							NULL,
							&bgworker_demo_max_seconds,
							60, 1, 86400,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	MarkGUCPrefixReserved("bgworker_demo");
}

/*
 * register_launchers
 *		Registers one static launcher per database in bgworker_demo.databases.
 *
 * A malformed list or more than BGWD_MAX_DATABASES entries is reported and
 * the extra entries are left out; the server starts regardless.  Whether
 * each database exists is only known once the launcher connects.
 */
static void
register_launchers(void)
{
	char	   *raw = pstrdup(bgworker_demo_databases);
	List	   *names;
	ListCell   *lc;
	int			i = 0;

	if (!SplitIdentifierString(raw, ',', &names))
	{
		ereport(LOG,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid list syntax in parameter \"bgworker_demo.databases\""),
				 errhint("List database names separated by commas, for example 'postgres, app'.")));
		return;
	}

	foreach(lc, names)
	{
		char	   *dbname = (char *) lfirst(lc);
		char		name[BGW_MAXLEN];

		if (i >= BGWD_MAX_DATABASES)
		{
			ereport(LOG,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("bgworker_demo.databases names more than %d databases",
							BGWD_MAX_DATABASES),
					 errdetail("No launcher is started for \"%s\" and the databases after it.",
							   dbname)));
			break;
		}
		snprintf(name, sizeof(name), "bgworker_demo launcher for %s", dbname);
		register_static_worker(name, "bgworker_demo launcher",
							   "BgwdLauncherMain", BgWorkerStart_RecoveryFinished,
							   BGWORKER_SHMEM_ACCESS |
							   BGWORKER_BACKEND_DATABASE_CONNECTION,
							   Int32GetDatum(i), dbname);
		i++;
	}
}

/*
 * register_static_worker
 *		Fills a BackgroundWorker and registers it with the postmaster.
 *
 * "extra" (at most BGW_EXTRALEN - 1 bytes) is copied to bgw_extra.  If
 * max_worker_processes is too small, RegisterBackgroundWorker itself logs
 * that with a hint and the server starts without the worker.
 */
static void
register_static_worker(const char *name, const char *type,
					   const char *function_name,
					   BgWorkerStartTime start_time, int flags,
					   Datum main_arg, const char *extra)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = flags;
	worker.bgw_start_time = start_time;
	worker.bgw_restart_time = bgworker_demo_restart_interval;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "bgworker_demo");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "%s", function_name);
	snprintf(worker.bgw_name, BGW_MAXLEN, "%s", name);
	snprintf(worker.bgw_type, BGW_MAXLEN, "%s", type);
	strlcpy(worker.bgw_extra, extra, BGW_EXTRALEN);
	worker.bgw_main_arg = main_arg;
	worker.bgw_notify_pid = 0;

	RegisterBackgroundWorker(&worker);
}

/*
 * bgwd_shmem_request
 *		shmem_request_hook: asks for our struct and our LWLock.
 */
static void
bgwd_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	BgwdShmemRequest();
}

/*
 * bgwd_shmem_startup
 *		shmem_startup_hook: creates or attaches our struct.
 */
static void
bgwd_shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	BgwdShmemStartup();
}

/*
 * workers() RETURNS SETOF record
 *		One row per process slot in use, read under the shared lock.
 *
 * Like pg_stat_activity, the job of another role's worker is shown only to
 * members of that role or of pg_read_all_stats.
 */
Datum
bgworker_demo_workers(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	BgwdSlot   *copy;
	int			nslots;
	int			i;

	InitMaterializedSRF(fcinfo, 0);
	BgwdShmemAttach();

	/* Copy under the lock, then do catalog look-ups without it. */
	nslots = BgwdShmem->nslots;
	copy = palloc(sizeof(BgwdSlot) * nslots);
	LWLockAcquire(BgwdShmem->lock, LW_SHARED);
	memcpy(copy, BgwdShmem->slots, sizeof(BgwdSlot) * nslots);
	LWLockRelease(BgwdShmem->lock);

	for (i = 0; i < nslots; i++)
	{
		BgwdSlot   *s = &copy[i];
		Datum		values[9];
		bool		nulls[9];
		bool		visible;

		if (s->state == BGWD_STATE_FREE)
			continue;
		memset(nulls, 0, sizeof(nulls));

		visible = !OidIsValid(s->roleid) ||
			has_privs_of_role(GetUserId(), s->roleid) ||
			has_privs_of_role(GetUserId(), ROLE_PG_READ_ALL_STATS);

		if (s->pid != 0)
			values[0] = Int32GetDatum(s->pid);
		else
			nulls[0] = true;
		values[1] = CStringGetTextDatum(BgwdKindName(s->kind));
		if (OidIsValid(s->dboid))
		{
			char	   *dbname = get_database_name(s->dboid);

			if (dbname)
				values[2] = CStringGetDatum(dbname);
			else
				nulls[2] = true;
		}
		else
			nulls[2] = true;
		if (OidIsValid(s->roleid))
		{
			char	   *rolname = GetUserNameFromId(s->roleid, true);

			if (rolname)
				values[3] = CStringGetDatum(rolname);
			else
				nulls[3] = true;
		}
		else
			nulls[3] = true;
		values[4] = CStringGetTextDatum(BgwdStateName(s->state));
		if (s->job_id != 0 && visible)
			values[5] = Int64GetDatum(s->job_id);
		else
			nulls[5] = true;
		if (s->started_at != 0)
			values[6] = TimestampTzGetDatum(s->started_at);
		else
			nulls[6] = true;
		values[7] = Int64GetDatum((int64) s->jobs_done);
		values[8] = Int64GetDatum((int64) s->jobs_failed);

		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc,
							 values, nulls);
	}

	return (Datum) 0;
}

/*
 * wakeup() RETURNS void
 *		Sets the latch of this database's launcher now, and again when the
 *		transaction commits (so that what the transaction wrote is visible
 *		to the launcher when it looks).
 *
 * The script of CREATE EXTENSION ends with a call of wakeup(): that is how
 * a launcher waiting for the extension learns that it is there.
 */
Datum
bgworker_demo_wakeup(PG_FUNCTION_ARGS)
{
	BgwdShmemAttach();
	BgwdWakeLauncher(MyDatabaseId, get_database_name(MyDatabaseId));
	BgwdWakeAfterCommit(InvalidOid, true);
	PG_RETURN_VOID();
}
