/*-------------------------------------------------------------------------
 *
 * bgworker_demo.h
 *		Shared declarations of bgworker_demo: shared memory, settings and
 *		the entry points of each kind of process.
 *
 * Copyright (c) 2026, bgworker_demo developers
 *
 * IDENTIFICATION
 *		bgworker_demo/bgworker_demo.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef BGWORKER_DEMO_H
#define BGWORKER_DEMO_H

#include "datatype/timestamp.h"
#include "fmgr.h"
#include "postmaster/bgworker.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/latch.h"
#include "storage/lwlock.h"

/* Most databases bgworker_demo.databases may name: one launcher each. */
#define BGWD_MAX_DATABASES		32

/* Name of our LWLock tranche, as shown in pg_stat_activity.wait_event. */
#define BGWD_TRANCHE_NAME		"bgworker_demo"

/* What a process slot is used for. */
typedef enum BgwdKind
{
	BGWD_KIND_LAUNCHER,
	BGWD_KIND_MONITOR,
	BGWD_KIND_STANDBY,
	BGWD_KIND_WORKER,			/* job worker, dynamic */
	BGWD_KIND_DAEMON,			/* supervised daemon, dynamic */
	BGWD_KIND_RAW				/* launch_worker(), dynamic */
} BgwdKind;

/* Life cycle of a process slot. */
typedef enum BgwdState
{
	BGWD_STATE_FREE,			/* slot unused */
	BGWD_STATE_STARTING,		/* reserved by the launcher, not adopted yet */
	BGWD_STATE_IDLE,			/* waiting on its latch */
	BGWD_STATE_RUNNING			/* doing a unit of work */
} BgwdState;

/*
 * One process of ours.  A dynamic worker's slot is reserved by whoever
 * registers it (state STARTING, generation bumped) and adopted by the
 * worker itself when it starts; a static worker claims a free slot.  The
 * owner releases its slot in a before_shmem_exit callback.
 *
 * All fields are protected by BgwdShared->lock, except the counters,
 * which only the owner writes (readers may see a stale value).
 */
typedef struct BgwdSlot
{
	BgwdKind	kind;
	BgwdState	state;
	uint32		generation;		/* bumped at each reservation */
	pid_t		pid;			/* 0 until adopted */
	Latch	   *latch;			/* owner's MyLatch; NULL until adopted */
	Oid			dboid;			/* database, or InvalidOid */
	Oid			roleid;			/* role connected as, or InvalidOid */
	int64		job_id;			/* job (or daemon id) being run, 0 if none */
	int64		cancel_job_id;	/* cancel() asked to interrupt this job */
	bool		exit_requested; /* launcher asks to exit after this job */
	TimestampTz reserved_at;	/* when the slot was reserved */
	TimestampTz started_at;		/* when the process adopted the slot */
	uint64		jobs_done;		/* jobs (or steps) that succeeded */
	uint64		jobs_failed;	/* jobs (or steps) that failed */
} BgwdSlot;

/*
 * One launcher, by its index in bgworker_demo.databases.  dbname is set
 * by the postmaster when shared memory is created; the rest by the
 * launcher, under BgwdShared->lock.
 */
typedef struct BgwdLauncher
{
	char		dbname[NAMEDATALEN];	/* as configured */
	Oid			dboid;			/* InvalidOid until connected */
	pid_t		pid;			/* 0 when not running */
	Latch	   *latch;			/* NULL when not running */
	int			connect_failures;	/* consecutive failed starts */
	bool		wake_requested; /* wakeup() while it was not running */
} BgwdLauncher;

/*
 * The shared state of the module, created by the postmaster in
 * shmem_startup_hook.  "lock" guards launchers[] and slots[];
 * the counters are atomics that any process may add to; "job_done_cv" is
 * broadcast by a worker after it commits the end of a job, and wait()
 * sleeps on it.
 */
typedef struct BgwdShared
{
	LWLock	   *lock;
	ConditionVariable job_done_cv;
	pg_atomic_uint64 jobs_submitted;	/* submit() calls committed or not */
	pg_atomic_uint64 jobs_succeeded;
	pg_atomic_uint64 jobs_failed;	/* failed attempts, retried or not */
	pg_atomic_uint64 workers_started;	/* dynamic workers registered */
	pg_atomic_uint64 workers_exited;	/* dynamic workers that left */
	int			nlaunchers;		/* entries used in launchers[] */
	BgwdLauncher launchers[BGWD_MAX_DATABASES];
	int			nslots;			/* = max_worker_processes + launchers + 2 */
	BgwdSlot	slots[FLEXIBLE_ARRAY_MEMBER];
} BgwdShared;

/* What bgw_extra of a dynamic worker carries. */
typedef struct BgwdWorkerArgs
{
	int			slot;			/* index into slots[] */
	uint32		generation;		/* must match the slot's */
	Oid			dboid;
	Oid			roleid;
	int64		object_id;		/* daemon id for daemons, else 0 */
} BgwdWorkerArgs;

/* log_jobs values */
typedef enum BgwdLogJobs
{
	BGWD_LOG_OFF,
	BGWD_LOG_ERRORS,
	BGWD_LOG_ALL
} BgwdLogJobs;

/* Settings (bgworker_demo.c) */
extern char *bgworker_demo_databases;
extern int	bgworker_demo_max_workers;
extern int	bgworker_demo_idle_timeout;
extern int	bgworker_demo_retry_backoff;
extern int	bgworker_demo_log_jobs;
extern bool bgworker_demo_enabled;
extern int	bgworker_demo_restart_interval;
extern int	bgworker_demo_monitor_interval;
extern int	bgworker_demo_standby_interval;
extern int	bgworker_demo_history_retention;
extern char *bgworker_demo_timezone;
extern int	bgworker_demo_max_restarts;
extern int	bgworker_demo_max_seconds;

/* shmem.c */
extern BgwdShared *BgwdShmem;
extern void BgwdShmemRequest(void);
extern void BgwdShmemStartup(void);
extern void BgwdShmemAttach(void);
extern int	BgwdClaimSlot(BgwdKind kind, Oid dboid, Oid roleid);
extern bool BgwdAdoptSlot(int slot, uint32 generation);
extern int	BgwdReserveSlot(BgwdKind kind, Oid dboid, Oid roleid,
							uint32 *generation);
extern void BgwdReleaseSlot(int slot);
extern void BgwdReleaseSlotAndWake(int code, Datum arg);
extern void BgwdSetSlotState(int slot, BgwdState state, int64 job_id);
extern BgwdLauncher *BgwdFindLauncher(Oid dboid, const char *dbname);
extern void BgwdWakeLauncher(Oid dboid, const char *dbname);
extern const char *BgwdKindName(BgwdKind kind);
extern const char *BgwdStateName(BgwdState state);
extern int	MyBgwdSlot;

/* launcher.c */
extern PGDLLEXPORT void BgwdLauncherMain(Datum main_arg);

/* worker.c */
extern PGDLLEXPORT void BgwdWorkerMain(Datum main_arg);
extern PGDLLEXPORT void BgwdRawWorkerMain(Datum main_arg);
extern bool BgwdStartDynamicWorker(BgwdKind kind, Oid dboid, Oid roleid,
								   int64 object_id,
								   const char *function_name,
								   BackgroundWorkerHandle **handle,
								   int *slot);
extern void BgwdExecuteToplevel(const char *sql, char **tag);

/* monitor.c */
extern PGDLLEXPORT void BgwdMonitorMain(Datum main_arg);
extern PGDLLEXPORT void BgwdStandbyMain(Datum main_arg);

/*
 * A query that a process prepares once and keeps (SPI_keepplan).  Always
 * run between BgwdBecomeOwner and BgwdRestoreUser, so that it is planned
 * with our fixed search_path.
 */
typedef struct BgwdQuery
{
	const char *sql;
	int			nargs;
	Oid			argtypes[8];
	struct _SPI_plan *plan;		/* NULL until first use */
} BgwdQuery;

/* What BgwdBecomeOwner saves for BgwdRestoreUser */
typedef struct BgwdOwnerContext
{
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
} BgwdOwnerContext;

/* jobs.c */
extern Oid	BgwdExtensionOwner(void);
extern void BgwdBecomeOwner(BgwdOwnerContext *ctx);
extern void BgwdRestoreUser(BgwdOwnerContext *ctx);
extern int	BgwdQueryRun(BgwdQuery *q, Datum *values, const char *nulls,
						 bool read_only, long count);
extern void BgwdWakeAfterCommit(Oid roleid, bool future);
extern void BgwdBroadcastAfterCommit(void);
extern int64 BgwdIntervalToMs(Interval *iv, const char *what);
extern void BgwdCheckSyntax(const char *command);
extern char *BgwdCommandArg(FunctionCallInfo fcinfo, int argno);
extern char *BgwdNameArg(FunctionCallInfo fcinfo, int argno, const char *what);

/* schedule.c */
extern TimestampTz BgwdSchedulesEnqueueDue(TimestampTz now);

/* daemon.c */
extern PGDLLEXPORT void BgwdDaemonMain(Datum main_arg);
extern TimestampTz BgwdDaemonsSupervise(TimestampTz now);

#endif							/* BGWORKER_DEMO_H */
