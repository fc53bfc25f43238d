/*-------------------------------------------------------------------------
 *
 * daemon.c
 *		Supervised daemons: long-running workers defined in SQL that call a
 *		step function in a loop, restarted by the launcher the way an Erlang
 *		supervisor restarts its children.
 *
 * spawn(name, step, state, restart, sleep) inserts a row into
 * bgworker_demo.daemons, owned by the calling role, and wakes the launcher
 * when the transaction commits.  The launcher (launcher.c calls
 * BgwdDaemonsSupervise in every round) registers a dynamic worker for it,
 * connected to the same database as that role.  The worker claims the row
 * and then loops, one transaction per step:
 *
 *	read the state and the oldest waiting message, call
 *	step(state, message) as the owner, store the new state and delete the
 *	message, commit.
 *
 * A crash anywhere in a step rolls all of it back, so the state is always
 * that of the last committed step, and each message is handed to exactly
 * one committed step.  Between steps the worker sleeps "sleep", or less:
 * send() sets its latch when the sending transaction commits, and a step
 * that leaves more messages waiting does not sleep at all.
 *
 * How a daemon process ends, and who writes what:
 *
 *	step returns NULL	the step's own transaction marks the row 'exited'
 *						with last_exit 'normal'.
 *	step errors			a new transaction records the SQLSTATE and message,
 *						'exited' with last_exit 'error'; the process exits
 *						with 0 and leaves the decision to the supervisor.
 *	stop()				marks the row 'stopping' and sends SIGTERM after its
 *						commit; the process ends its current step (SIGTERM
 *						only sets a flag) and marks the row 'stopped'.
 *	other SIGTERM		a server shutdown (or pg_terminate_backend): the row
 *						goes back to 'starting', due at once, and that does
 *						not count as a restart, so the launcher starts the
 *						daemon again when the server is back.  A temporary
 *						daemon is marked 'stopped' instead: it never runs
 *						twice.
 *	crash				SIGKILL, FATAL, a segfault or an immediate shutdown
 *						write nothing: the supervisor finds a row 'running'
 *						whose daemon has no process and marks it 'exited'
 *						with last_exit 'crash'.
 *
 * Only stop() marks a row 'stopping', which is how a process that gets
 * SIGTERM tells a stop from a shutdown: by reading its row.
 *
 * Restart policy, applied by the supervisor to every 'exited' row, as in
 * Erlang:
 *
 *	permanent	always restarted, after a normal end (step returned NULL) as
 *				well as after an error or a crash.  That is what Erlang does
 *				with a permanent child whatever its exit reason, and such a
 *				restart counts towards the intensity like any other: a
 *				permanent daemon whose step keeps returning NULL ends up
 *				'failed'.  A daemon meant to end on its own is transient.
 *	transient	restarted after an error or a crash; 'finished' after NULL.
 *	temporary	never restarted: 'finished' after NULL, 'failed' otherwise.
 *
 * A restarted daemon resumes from its last committed state.  Restart
 * intensity: a restart that would make more than bgworker_demo.max_restarts
 * restarts within bgworker_demo.max_seconds is not done; the daemon is
 * marked 'failed' and the supervisor logs its name, owner and last error.
 * The times of recent restarts are kept in the row (recent_restarts), so
 * the count survives launcher and server restarts.  Restarts back off: the
 * n-th restart within the window waits 100 ms * 2^(n-1), at most 30 s, so a
 * step that fails at once cannot keep a CPU busy.
 *
 * Finding dead processes: a daemon's process slot carries the daemon id
 * (written by the launcher when it reserves the slot, and by the process
 * when it adopts it), so the set of live daemons is read from shared
 * memory.  It is read after the snapshot of the UPDATE that marks dead
 * daemons is taken (the UPDATE runs with that snapshot and gets the set as
 * a parameter): a process that the snapshot shows running and that is not
 * in the set has ended, and if it recorded its end, it committed that
 * before it gave up its slot, so the UPDATE's re-check of the newest row
 * version sees it and leaves the row alone.  This is the reasoning of
 * requeue_orphans() in launcher.c.
 *
 * Starting: the launcher registers a worker, then marks the row
 * "launched" in its round's transaction.  The worker claims the row with
 * UPDATE ... WHERE status = 'starting' and exits quietly if that finds
 * nothing, so two processes never run one daemon.  When no background
 * worker slot is free the start is retried a second later; a launched
 * process that dies before it claims its row counts as a crash.
 *
 * Races that remain: messages are consumed in the order of their ids,
 * which is the order of the send() calls, not of their commits; of two
 * concurrent transactions sending to one daemon, the one that sent later
 * may be consumed first (each session's messages keep their order).  A
 * launched process that died before claiming its row is not counted if
 * the launcher restarted meanwhile (see find_dead_daemons).  A step that
 * never returns holds up stop() and a server shutdown: SIGTERM does not
 * interrupt a step (XXX issue 5: consider a stop timeout that cancels the
 * step).
 *
 * Copyright (c) 2026, bgworker_demo developers
 *
 * IDENTIFICATION
 *		bgworker_demo/daemon.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "bgworker_demo.h"

/* Back-off before the n-th restart within the window: BASE * 2^(n-1) */
#define DAEMON_BACKOFF_BASE_MS	100
#define DAEMON_BACKOFF_MAX_MS	30000

/* Retry period when no background worker slot was free */
#define DAEMON_START_RETRY_MS	1000

/* How soon the launcher looks again at a process that has not claimed yet */
#define DAEMON_LAUNCH_CHECK_MS	10000

/* The hint of every complaint about a step function's signature */
#define STEP_SIGNATURE_HINT \
	"A step function is declared as step(state jsonb, message jsonb) RETURNS jsonb, not STRICT."

/* What a step leaves the daemon's loop to do */
typedef enum StepResult
{
	STEP_SLEEP,					/* sleep "sleep" or until the latch is set */
	STEP_AGAIN,					/* more messages wait: step again at once */
	STEP_STOP,					/* stop() was called: leave as 'stopped' */
	STEP_END					/* the row records the end already: exit */
} StepResult;

/* A signal for a daemon process, sent when the transaction commits */
typedef struct DaemonSignal
{
	int64		daemon_id;
	bool		terminate;		/* SIGTERM (stop()), else set the latch */
	int			nestlevel;		/* (sub)transaction level that asked */
} DaemonSignal;

/* A daemon the supervisor found 'exited', with what it needs to decide */
typedef struct ExitedDaemon
{
	int64		id;
	char	   *name;
	char	   *owner;			/* role name, for log lines */
	char	   *restart;		/* permanent, transient or temporary */
	char	   *last_exit;		/* normal, error or crash */
	char	   *last_error;		/* NULL if none */
	int			recent;			/* restarts within max_seconds before now */
} ExitedDaemon;

/* What the supervisor does with an exited daemon */
typedef enum RestartDecision
{
	DECIDE_RESTART,
	DECIDE_FINISHED,			/* normal end, not restarted */
	DECIDE_FAILED,				/* error or crash, not restarted */
	DECIDE_GIVE_UP				/* restart intensity exceeded */
} RestartDecision;

PG_FUNCTION_INFO_V1(bgworker_demo_spawn);
PG_FUNCTION_INFO_V1(bgworker_demo_send);
PG_FUNCTION_INFO_V1(bgworker_demo_stop);

/* SQL interface */
static void check_step_function(Oid fnoid);
static char *role_problem(Oid roleid);
static char *parse_restart(text *restart);
static int64 lookup_daemon(const char *name, char **status);
static void signal_after_commit(int64 daemon_id, bool terminate);
static void daemon_xact_callback(XactEvent event, void *arg);
static void daemon_subxact_callback(SubXactEvent event,
									SubTransactionId mySubid,
									SubTransactionId parentSubid, void *arg);
static void send_signals(void);

/* The daemon process */
static void daemon_sigterm(SIGNAL_ARGS);
static bool daemon_claim(void);
static StepResult daemon_step(void);
static StepResult daemon_step_xact(void);
static Datum call_step(Datum state, Datum message, bool message_isnull,
					   bool *isnull);
static void daemon_record_error(ErrorData *edata);
static void daemon_leave(void);
static char *run_leave_query(const char *how, const char *error, int steps,
							 char **last_exit);

/* The supervisor */
static void find_dead_daemons(int64 **live, int *nlive);
static int64 *collect_live_daemons(int *nlive);
static bool is_live(int64 id, int64 *live, int nlive);
static void apply_restart_policies(TimestampTz now);
static RestartDecision decide_restart(ExitedDaemon *d);
static void restart_daemon(ExitedDaemon *d, TimestampTz now);
static void end_daemon(ExitedDaemon *d, RestartDecision decision);
static TimestampTz start_due_daemons(TimestampTz now, int64 *live, int nlive);
static bool start_daemon(int64 id, Oid roleid, const char *name);
static void publish_daemon_slot(int slot, int64 daemon_id);
static SPIPlanPtr query_plan(BgwdQuery *q);

/* Set by the SIGTERM handler of a daemon process */
static volatile sig_atomic_t got_sigterm = false;

/* The daemon this process runs, once claimed */
static int64 MyDaemonId = 0;
static char *MyDaemonName = NULL;
static char *MyDaemonOwner = NULL;
static Oid	MyDaemonStep = InvalidOid;
static char *MyDaemonActivity = NULL;
static int	MyDaemonSleepMs = 1000;

/* Memory of one step, reset after it */
static MemoryContext DaemonStepContext = NULL;

/* Signals to send at commit (in TopMemoryContext) */
static List *pending_signals = NIL;
static bool callbacks_registered = false;

/* Supervisor: said once until a start succeeds */
static bool said_no_slots = false;

/* Supervisor: no round of this launcher has completed yet */
static bool first_round = true;

/*----------------------------------------------------------------
 * SQL interface: spawn(), send(), stop()
 *----------------------------------------------------------------
 */

/*
 * spawn(name text, step regprocedure, state jsonb, restart text,
 *		 sleep interval) RETURNS int8
 *
 * Checks the arguments as the caller, then inserts the daemon owned by the
 * caller (as the extension owner) and wakes the launcher after commit.
 * The caller's own daemon of the same name that has ended (stopped,
 * finished, failed) is replaced, with its unread messages; any other
 * daemon of that name is an error.  Returns the new daemon's id.
 */
Datum
bgworker_demo_spawn(PG_FUNCTION_ARGS)
{
	static BgwdQuery find_q = {
		"SELECT id, username::oid, status FROM bgworker_demo.daemons"
		" WHERE name = $1 FOR UPDATE",
		1, {TEXTOID}
	};
	static BgwdQuery delete_q = {
		"DELETE FROM bgworker_demo.daemons WHERE id = $1",
		1, {INT8OID}
	};
	static BgwdQuery insert_q = {
		"INSERT INTO bgworker_demo.daemons"
		" (name, username, step, state, restart, sleep, status, next_start)"
		" VALUES ($1, $2, $3, $4, $5, $6, 'starting', clock_timestamp())"
		" RETURNING id",
		6, {TEXTOID, REGROLEOID, REGPROCEDUREOID, JSONBOID, TEXTOID,
		INTERVALOID}
	};
	Oid			roleid = GetUserId();
	char	   *name;
	Oid			step;
	char	   *restart;
	char	   *problem;
	char	   *dbname;
	bool		has_launcher;
	AclResult	aclresult;
	BgwdOwnerContext owner;
	Datum		values[6];
	bool		isnull;
	int64		daemon_id;

	BgwdShmemAttach();

	name = BgwdNameArg(fcinfo, 0, "name");

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("step must not be null"),
				 errhint(STEP_SIGNATURE_HINT)));
	step = PG_GETARG_OID(1);

	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("state must not be null"),
				 errhint("Pass '{}' for an empty state; a step that returns NULL ends the daemon.")));

	if (PG_ARGISNULL(3))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("restart must not be null"),
				 errhint("Use permanent, transient or temporary.")));
	restart = parse_restart(PG_GETARG_TEXT_PP(3));

	if (PG_ARGISNULL(4))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("sleep must not be null")));
	(void) BgwdIntervalToMs(PG_GETARG_INTERVAL_P(4), "sleep");

	/* The step runs as the caller, in a worker connected as the caller. */
	check_step_function(step);
	aclresult = pg_proc_aclcheck(step, roleid, ACL_EXECUTE);
	if (aclresult != ACLCHECK_OK)
		aclcheck_error(aclresult, OBJECT_FUNCTION, get_func_name(step));
	problem = role_problem(roleid);
	if (problem != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("role \"%s\" cannot run a daemon",
						GetUserNameFromId(roleid, false)),
				 errdetail("%s", problem),
				 errhint("Grant LOGIN to the role (ALTER ROLE ... LOGIN).")));

	SPI_connect();
	BgwdBecomeOwner(&owner);

	values[0] = CStringGetTextDatum(name);
	BgwdQueryRun(&find_q, values, NULL, false, 0);
	if (SPI_processed > 0)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		int64		old_id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		Oid			old_owner = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
		char	   *old_status = SPI_getvalue(tup, desc, 3);
		bool		ended = strcmp(old_status, "stopped") == 0 ||
			strcmp(old_status, "finished") == 0 ||
			strcmp(old_status, "failed") == 0;

		if (old_owner != roleid)
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_OBJECT),
					 errmsg("daemon \"%s\" already exists", name),
					 errdetail("It belongs to another role; daemon names are unique in a database."),
					 errhint("Choose another name.")));
		if (!ended)
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_OBJECT),
					 errmsg("daemon \"%s\" already exists", name),
					 errdetail("Its status is \"%s\".", old_status),
					 errhint("Stop it first with bgworker_demo.stop(), or choose another name.")));
		values[0] = Int64GetDatum(old_id);
		BgwdQueryRun(&delete_q, values, NULL, false, 0);
	}

	values[0] = CStringGetTextDatum(name);
	values[1] = ObjectIdGetDatum(roleid);
	values[2] = ObjectIdGetDatum(step);
	values[3] = PG_GETARG_DATUM(2);
	values[4] = CStringGetTextDatum(restart);
	values[5] = PG_GETARG_DATUM(4);
	BgwdQueryRun(&insert_q, values, NULL, false, 0);
	daemon_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											SPI_tuptable->tupdesc, 1, &isnull));
	BgwdRestoreUser(&owner);
	SPI_finish();

	/* Without a launcher in this database nothing would ever start it. */
	dbname = get_database_name(MyDatabaseId);
	LWLockAcquire(BgwdShmem->lock, LW_SHARED);
	has_launcher = BgwdFindLauncher(MyDatabaseId, dbname) != NULL;
	LWLockRelease(BgwdShmem->lock);
	if (!has_launcher)
		ereport(WARNING,
				(errmsg("database \"%s\" has no bgworker_demo launcher", dbname),
				 errdetail("Daemon \"%s\" starts when a launcher runs in this database.", name),
				 errhint("Add the database to bgworker_demo.databases and restart the server.")));

	BgwdWakeAfterCommit(InvalidOid, true);
	PG_RETURN_INT64(daemon_id);
}

/*
 * send(name text, message jsonb) RETURNS void
 *
 * Queues a message for one of the caller's daemons (as row-level security
 * shows them to the caller) and sets the daemon's latch after commit.
 * A daemon that has ended gets no more messages.
 */
Datum
bgworker_demo_send(PG_FUNCTION_ARGS)
{
	static BgwdQuery insert_q = {
		"INSERT INTO bgworker_demo.messages (daemon_id, message)"
		" VALUES ($1, $2)",
		2, {INT8OID, JSONBOID}
	};
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	BgwdOwnerContext owner;
	Datum		values[2];
	char	   *status;
	int64		daemon_id;

	BgwdShmemAttach();
	SPI_connect();

	daemon_id = lookup_daemon(name, &status);
	if (strcmp(status, "stopped") == 0 || strcmp(status, "finished") == 0 ||
		strcmp(status, "failed") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("daemon \"%s\" is not running", name),
				 errdetail("Its status is \"%s\".", status),
				 errhint("Spawn it again to send it messages.")));

	values[0] = Int64GetDatum(daemon_id);
	values[1] = PG_GETARG_DATUM(1);
	BgwdBecomeOwner(&owner);
	BgwdQueryRun(&insert_q, values, NULL, false, 0);
	BgwdRestoreUser(&owner);
	SPI_finish();

	signal_after_commit(daemon_id, false);
	PG_RETURN_VOID();
}

/*
 * stop(name text) RETURNS bool
 *
 * A daemon with a process is marked 'stopping', and its process gets
 * SIGTERM when the transaction commits; it finishes its current step and
 * marks itself 'stopped'.  Returns true then.  A daemon without a process
 * (waiting to start or to restart) is marked 'stopped' at once, and one
 * that has ended is left alone; both return false.
 */
Datum
bgworker_demo_stop(PG_FUNCTION_ARGS)
{
	static BgwdQuery stop_q = {
		"UPDATE bgworker_demo.daemons SET"
		" status = CASE WHEN status IN ('running', 'stopping')"
		"   THEN 'stopping' ELSE 'stopped' END,"
		" last_exit = CASE WHEN status IN ('running', 'stopping')"
		"   THEN last_exit ELSE 'stop' END,"
		" launched = false, next_start = NULL"
		" WHERE id = $1"
		" AND status IN ('starting', 'running', 'stopping', 'exited')"
		" RETURNING status",
		1, {INT8OID}
	};
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	BgwdOwnerContext owner;
	Datum		values[1];
	char	   *status;
	bool		result = false;

	BgwdShmemAttach();
	SPI_connect();

	values[0] = Int64GetDatum(lookup_daemon(name, &status));
	BgwdBecomeOwner(&owner);
	BgwdQueryRun(&stop_q, values, NULL, false, 0);
	if (SPI_processed > 0)
		result = strcmp(SPI_getvalue(SPI_tuptable->vals[0],
									 SPI_tuptable->tupdesc, 1),
						"stopping") == 0;
	BgwdRestoreUser(&owner);
	SPI_finish();

	if (result)
		signal_after_commit(DatumGetInt64(values[0]), true);
	BgwdWakeAfterCommit(InvalidOid, true);
	PG_RETURN_BOOL(result);
}

/*
 * check_step_function
 *		Errors out unless the function can be a step:
 *		step(state jsonb, message jsonb) RETURNS jsonb, neither STRICT nor
 *		set-returning.  spawn() calls it, and the daemon again before every
 *		step, since the function may have been dropped or replaced since.
 *
 * A STRICT step is refused because it would be called with a NULL message
 * whenever none waits, and would return NULL, which ends the daemon.
 */
static void
check_step_function(Oid fnoid)
{
	HeapTuple	tup;
	Form_pg_proc proc;
	char		prokind;
	bool		args_ok;
	Oid			rettype;
	bool		retset;
	bool		strict;

	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fnoid));
	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("function with OID %u does not exist", fnoid),
				 errhint(STEP_SIGNATURE_HINT)));
	proc = (Form_pg_proc) GETSTRUCT(tup);
	prokind = proc->prokind;
	args_ok = proc->pronargs == 2 &&
		proc->proargtypes.values[0] == JSONBOID &&
		proc->proargtypes.values[1] == JSONBOID;
	rettype = proc->prorettype;
	retset = proc->proretset;
	strict = proc->proisstrict;
	ReleaseSysCache(tup);

	if (prokind != PROKIND_FUNCTION)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("%s is not a function", format_procedure(fnoid)),
				 errhint(STEP_SIGNATURE_HINT)));
	if (!args_ok)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("function %s does not take the arguments of a step", format_procedure(fnoid)),
				 errhint(STEP_SIGNATURE_HINT)));
	if (retset)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("function %s returns a set", format_procedure(fnoid)),
				 errhint(STEP_SIGNATURE_HINT)));
	if (rettype != JSONBOID)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("function %s does not return jsonb", format_procedure(fnoid)),
				 errdetail("It returns %s.", format_type_be(rettype)),
				 errhint(STEP_SIGNATURE_HINT)));
	if (strict)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("function %s is STRICT", format_procedure(fnoid)),
				 errdetail("A step is called with a NULL message when none is waiting; a STRICT function would return NULL, which ends the daemon."),
				 errhint(STEP_SIGNATURE_HINT)));
}

/*
 * role_problem
 *		Why a worker cannot connect as the role, or NULL if it can.  On
 *		PostgreSQL 15 a background worker connects only as a role with
 *		LOGIN, and not at all as a dropped one.
 */
static char *
role_problem(Oid roleid)
{
	HeapTuple	tup;
	char	   *problem = NULL;

	tup = SearchSysCache1(AUTHOID, ObjectIdGetDatum(roleid));
	if (!HeapTupleIsValid(tup))
		return psprintf("role with OID %u does not exist", roleid);
	if (!((Form_pg_authid) GETSTRUCT(tup))->rolcanlogin)
		problem = psprintf("role \"%s\" is not permitted to log in, and a background worker can only connect as a role with LOGIN",
						   NameStr(((Form_pg_authid) GETSTRUCT(tup))->rolname));
	ReleaseSysCache(tup);
	return problem;
}

/*
 * parse_restart
 *		Checks a restart type and returns it as a C string.
 */
static char *
parse_restart(text *restart)
{
	char	   *s = text_to_cstring(restart);

	if (strcmp(s, "permanent") != 0 && strcmp(s, "transient") != 0 &&
		strcmp(s, "temporary") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid restart type \"%s\"", s),
				 errdetail("permanent: always restarted; transient: restarted after an error; temporary: never restarted."),
				 errhint("Use permanent, transient or temporary.")));
	return s;
}

/*
 * lookup_daemon
 *		The id and status of a daemon, as the caller sees it: row-level
 *		security hides other roles' daemons, except from superusers.
 *		Caller has SPI connected.
 */
static int64
lookup_daemon(const char *name, char **status)
{
	static BgwdQuery q = {
		"SELECT id, status FROM bgworker_demo.daemons WHERE name = $1",
		1, {TEXTOID}
	};
	Datum		values[1];
	int			nestlevel;
	bool		isnull;

	/* As the caller, but with our search_path. */
	values[0] = CStringGetTextDatum(name);
	nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	BgwdQueryRun(&q, values, NULL, false, 0);
	AtEOXact_GUC(true, nestlevel);

	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("daemon \"%s\" does not exist", name),
				 errhint("A role sees only its own daemons in bgworker_demo.daemons.")));
	*status = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
									   SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * signal_after_commit
 *		Arranges for the commit of the current transaction to set the latch
 *		of the daemon's process, or, with terminate, to send it SIGTERM.
 *		Nothing is sent before the commit, so the process always finds
 *		what the transaction wrote, and nothing at all if the
 *		(sub)transaction that asked is rolled back.
 */
static void
signal_after_commit(int64 daemon_id, bool terminate)
{
	MemoryContext old;
	DaemonSignal *sig;

	if (!callbacks_registered)
	{
		RegisterXactCallback(daemon_xact_callback, NULL);
		RegisterSubXactCallback(daemon_subxact_callback, NULL);
		callbacks_registered = true;
	}
	old = MemoryContextSwitchTo(TopMemoryContext);
	sig = palloc(sizeof(DaemonSignal));
	sig->daemon_id = daemon_id;
	sig->terminate = terminate;
	sig->nestlevel = GetCurrentTransactionNestLevel();
	pending_signals = lappend(pending_signals, sig);
	MemoryContextSwitchTo(old);
}

/*
 * daemon_xact_callback
 *		At commit, sends the signals arranged during the transaction; at
 *		abort, forgets them.  Must not fail: it runs after the commit.
 */
static void
daemon_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (pending_signals != NIL && BgwdShmem != NULL)
				send_signals();
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			break;
		default:
			return;
	}
	list_free_deep(pending_signals);
	pending_signals = NIL;
}

/*
 * daemon_subxact_callback
 *		Forgets the signals asked for by a subtransaction that rolls back,
 *		and hands those of one that commits to its parent.
 */
static void
daemon_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();
	ListCell   *lc;

	if (event != SUBXACT_EVENT_ABORT_SUB && event != SUBXACT_EVENT_COMMIT_SUB)
		return;
	foreach(lc, pending_signals)
	{
		DaemonSignal *sig = lfirst(lc);

		if (sig->nestlevel < level)
			continue;
		if (event == SUBXACT_EVENT_ABORT_SUB)
		{
			pending_signals = foreach_delete_current(pending_signals, lc);
			pfree(sig);
		}
		else
			sig->nestlevel = level - 1;
	}
}

/*
 * send_signals
 *		Finds the process of each daemon in pending_signals by its slot
 *		(kind daemon, this database, job_id = daemon id) and sets its latch
 *		or sends it SIGTERM.  A daemon without a process is skipped: it
 *		reads its row when it starts.
 */
static void
send_signals(void)
{
	int			i;

	LWLockAcquire(BgwdShmem->lock, LW_SHARED);
	for (i = 0; i < BgwdShmem->nslots; i++)
	{
		BgwdSlot   *s = &BgwdShmem->slots[i];
		ListCell   *lc;

		if (s->kind != BGWD_KIND_DAEMON || s->state == BGWD_STATE_FREE ||
			s->dboid != MyDatabaseId || s->job_id == 0)
			continue;
		foreach(lc, pending_signals)
		{
			DaemonSignal *sig = lfirst(lc);

			if (sig->daemon_id != s->job_id)
				continue;
			if (sig->terminate && s->pid != 0)
				(void) kill(s->pid, SIGTERM);
			else if (s->latch != NULL)
				SetLatch(s->latch);
		}
	}
	LWLockRelease(BgwdShmem->lock);
}

/*----------------------------------------------------------------
 * The daemon process
 *----------------------------------------------------------------
 */

/*
 * BgwdDaemonMain
 *		Entry point of a daemon's process.  bgw_extra holds a
 *		BgwdWorkerArgs whose object_id is the daemon id.
 */
void
BgwdDaemonMain(Datum main_arg)
{
	BgwdWorkerArgs args;
	StepResult	result = STEP_AGAIN;	/* the first step runs at once */

	memcpy(&args, MyBgworkerEntry->bgw_extra, sizeof(args));
	MyDaemonId = args.object_id;

	/* SIGTERM only asks to leave after the current step. */
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, daemon_sigterm);
	BackgroundWorkerUnblockSignals();

	BgwdShmemAttach();
	if (!BgwdAdoptSlot(args.slot, args.generation))
		proc_exit(0);			/* the launcher gave up on us already */
	before_shmem_exit(BgwdReleaseSlotAndWake, (Datum) 0);
	BgwdSetSlotState(MyBgwdSlot, BGWD_STATE_IDLE, MyDaemonId);

	BackgroundWorkerInitializeConnectionByOid(args.dboid, args.roleid, 0);
	DaemonStepContext = AllocSetContextCreate(TopMemoryContext,
											  "bgworker_demo daemon step",
											  ALLOCSET_DEFAULT_SIZES);

	if (!daemon_claim())
		proc_exit(0);			/* stopped, or another process has it */

	for (;;)
	{
		/* A step may have reset the latch a signal set: look first. */
		if (result == STEP_SLEEP && !got_sigterm && !ConfigReloadPending)
		{
			BgwdSetSlotState(MyBgwdSlot, BGWD_STATE_IDLE, MyDaemonId);
			(void) WaitLatch(MyLatch,
							 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 MyDaemonSleepMs, PG_WAIT_EXTENSION);
		}
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (got_sigterm)
			break;

		MemoryContextSwitchTo(DaemonStepContext);
		result = daemon_step();
		MemoryContextSwitchTo(TopMemoryContext);
		MemoryContextReset(DaemonStepContext);

		if (result == STEP_END)
			proc_exit(0);
		if (result == STEP_STOP)
			break;
	}

	daemon_leave();
	proc_exit(0);
}

/*
 * daemon_sigterm
 *		SIGTERM (stop(), server shutdown): leave after the current step.
 *		Unlike die(), this lets the step commit and the process record how
 *		it left.
 */
static void
daemon_sigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	got_sigterm = true;
	SetLatch(MyLatch);

	errno = save_errno;
}

/*
 * daemon_claim
 *		Takes the daemon's row: 'starting' becomes 'running' with our pid.
 *		Returns false if the row is not waiting to start (stop() came
 *		first, or another process has it); the process then exits quietly.
 */
static bool
daemon_claim(void)
{
	static BgwdQuery q = {
		"UPDATE bgworker_demo.daemons SET status = 'running', pid = $2,"
		" launched = false, next_start = NULL, started_at = clock_timestamp()"
		" WHERE id = $1 AND status = 'starting'"
		" RETURNING name, step::oid, step::text, restarts",
		2, {INT8OID, INT4OID}
	};
	BgwdOwnerContext owner;
	Datum		values[2];
	bool		claimed;
	bool		isnull;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "bgworker_demo daemon: claim");

	values[0] = Int64GetDatum(MyDaemonId);
	values[1] = Int32GetDatum(MyProcPid);
	BgwdBecomeOwner(&owner);
	BgwdQueryRun(&q, values, NULL, false, 0);
	BgwdRestoreUser(&owner);

	claimed = SPI_processed > 0;
	if (claimed)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
		char	   *stepname = SPI_getvalue(tup, desc, 3);

		MyDaemonName = SPI_getvalue(tup, desc, 1);
		MyDaemonStep = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
		MyDaemonOwner = pstrdup(GetUserNameFromId(GetUserId(), false));
		MyDaemonActivity = psprintf("bgworker_demo daemon \"%s\": %s",
									MyDaemonName, stepname);
		MemoryContextSwitchTo(old);

		ereport(LOG,
				(errmsg("bgworker_demo daemon \"%s\" of role %s started",
						MyDaemonName, MyDaemonOwner),
				 errdetail("Step function %s, %s restarts so far.", stepname,
						   SPI_getvalue(tup, desc, 4))));
	}

	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);

	if (claimed)
	{
		char	   *appname = psprintf("bgworker_demo daemon %s", MyDaemonName);

		pgstat_report_appname(appname);
		pfree(appname);
	}
	return claimed;
}

/*
 * daemon_step
 *		Runs one step in its own transaction.  An error in it (the step's
 *		or ours) aborts the transaction, is recorded in a new one, and ends
 *		the daemon's process: the supervisor decides about a restart.
 */
static StepResult
daemon_step(void)
{
	volatile StepResult result = STEP_END;
	ErrorData  *volatile edata = NULL;

	PG_TRY();
	{
		result = daemon_step_xact();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(DaemonStepContext);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
	}
	PG_END_TRY();

	if (edata != NULL)
	{
		pgstat_report_activity(STATE_IDLE, NULL);
		daemon_record_error(edata);
		return STEP_END;
	}
	return result;
}

/*
 * daemon_step_xact
 *		The transaction of one step: read the state and the oldest message
 *		(as the extension owner), call the step (as the daemon's role),
 *		then store the new state and delete the message (as the owner), and
 *		commit.  A NULL from the step ends the daemon in this same
 *		transaction.
 *
 * The row is not locked while the step runs, so stop() does not wait for a
 * long step; the final UPDATE sees a committed stop() (the status it
 * returns is re-read from the newest row version).
 *
 * Whether more messages wait is asked by that final UPDATE too, after the
 * step: a step that waits on our latch (pg_sleep, a lock) resets it, so a
 * send() that committed while the step ran may have left no trace but its
 * row.
 */
static StepResult
daemon_step_xact(void)
{
	static BgwdQuery read_q = {
		"SELECT d.status, d.pid, d.state,"
		"  LEAST(EXTRACT(epoch FROM d.sleep) * 1000, 2147483647)::int4,"
		"  m.id, m.message"
		" FROM bgworker_demo.daemons d"
		" LEFT JOIN LATERAL (SELECT id, message FROM bgworker_demo.messages"
		"   WHERE daemon_id = d.id ORDER BY id LIMIT 1) m ON true"
		" WHERE d.id = $1",
		1, {INT8OID}
	};
	static BgwdQuery store_q = {
		"UPDATE bgworker_demo.daemons SET state = $2, steps = steps + 1"
		" WHERE id = $1 AND pid = $3 RETURNING status,"
		"  EXISTS (SELECT 1 FROM bgworker_demo.messages WHERE daemon_id = $1)",
		3, {INT8OID, JSONBOID, INT4OID}
	};
	static BgwdQuery consume_q = {
		"DELETE FROM bgworker_demo.messages WHERE id = $1",
		1, {INT8OID}
	};
	BgwdOwnerContext owner;
	Datum		values[3];
	HeapTuple	tup = NULL;
	TupleDesc	desc = NULL;
	bool		isnull;
	char	   *status;
	Datum		d;
	Datum		state;
	Datum		message;
	bool		message_isnull;
	int64		message_id = 0;
	bool		more = false;
	Datum		new_state;
	bool		new_state_isnull;
	StepResult	result;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	BgwdSetSlotState(MyBgwdSlot, BGWD_STATE_RUNNING, MyDaemonId);
	pgstat_report_activity(STATE_RUNNING, MyDaemonActivity);

	values[0] = Int64GetDatum(MyDaemonId);
	BgwdBecomeOwner(&owner);
	BgwdQueryRun(&read_q, values, NULL, false, 0);
	BgwdRestoreUser(&owner);

	if (SPI_processed == 0)
		status = "gone";
	else
	{
		tup = SPI_tuptable->vals[0];
		desc = SPI_tuptable->tupdesc;
		status = SPI_getvalue(tup, desc, 1);
		d = SPI_getbinval(tup, desc, 2, &isnull);
		if (isnull || DatumGetInt32(d) != MyProcPid)
			status = "gone";
	}
	if (strcmp(status, "running") != 0)
	{
		/* stop() came, or the row is no longer ours: no step. */
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		pgstat_report_activity(STATE_IDLE, NULL);
		if (strcmp(status, "stopping") == 0)
			return STEP_STOP;
		ereport(LOG,
				(errmsg("bgworker_demo daemon \"%s\" of role %s exits: its row is no longer claimed by this process",
						MyDaemonName, MyDaemonOwner)));
		return STEP_END;
	}

	state = SPI_getbinval(tup, desc, 3, &isnull);
	MyDaemonSleepMs = Max(DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull)), 1);
	d = SPI_getbinval(tup, desc, 5, &message_isnull);
	if (!message_isnull)
		message_id = DatumGetInt64(d);
	message = SPI_getbinval(tup, desc, 6, &message_isnull);

	new_state = call_step(state, message, message_isnull, &new_state_isnull);

	BgwdBecomeOwner(&owner);
	if (message_id != 0)
	{
		values[0] = Int64GetDatum(message_id);
		BgwdQueryRun(&consume_q, values, NULL, false, 0);
	}
	if (new_state_isnull)
	{
		status = run_leave_query("normal", NULL, 1, NULL);
		result = STEP_END;
	}
	else
	{
		values[0] = Int64GetDatum(MyDaemonId);
		values[1] = new_state;
		values[2] = Int32GetDatum(MyProcPid);
		BgwdQueryRun(&store_q, values, NULL, false, 0);
		if (SPI_processed == 0)
			status = "gone";
		else
		{
			status = SPI_getvalue(SPI_tuptable->vals[0],
								  SPI_tuptable->tupdesc, 1);
			more = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
											  SPI_tuptable->tupdesc, 2,
											  &isnull));
		}
		if (strcmp(status, "running") != 0)
			result = strcmp(status, "stopping") == 0 ? STEP_STOP : STEP_END;
		else
			result = more ? STEP_AGAIN : STEP_SLEEP;
	}
	BgwdRestoreUser(&owner);

	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
	BgwdShmem->slots[MyBgwdSlot].jobs_done++;

	if (new_state_isnull)
		ereport(LOG,
				(errmsg("bgworker_demo daemon \"%s\" of role %s ended: its step returned NULL",
						MyDaemonName, MyDaemonOwner)));
	else if (result == STEP_END)
		ereport(LOG,
				(errmsg("bgworker_demo daemon \"%s\" of role %s exits: its row is no longer claimed by this process",
						MyDaemonName, MyDaemonOwner)));
	return result;
}

/*
 * call_step
 *		Calls the step function through fmgr as the current user (the
 *		daemon's role), after checking that it is still a valid step that
 *		the role may execute: unlike the executor, fmgr checks no
 *		privileges.  Returns its result; *isnull says whether it was NULL.
 *		SETs done by the step are undone afterwards.
 */
static Datum
call_step(Datum state, Datum message, bool message_isnull, bool *isnull)
{
	LOCAL_FCINFO(fcinfo, 2);
	FmgrInfo	flinfo;
	PgStat_FunctionCallUsage fcusage;
	AclResult	aclresult;
	int			nestlevel;
	Datum		result;

	check_step_function(MyDaemonStep);
	aclresult = pg_proc_aclcheck(MyDaemonStep, GetUserId(), ACL_EXECUTE);
	if (aclresult != ACLCHECK_OK)
		aclcheck_error(aclresult, OBJECT_FUNCTION, get_func_name(MyDaemonStep));
	InvokeFunctionExecuteHook(MyDaemonStep);

	fmgr_info(MyDaemonStep, &flinfo);
	InitFunctionCallInfoData(*fcinfo, &flinfo, 2, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = state;
	fcinfo->args[0].isnull = false;
	fcinfo->args[1].value = message;
	fcinfo->args[1].isnull = message_isnull;

	nestlevel = NewGUCNestLevel();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_init_function_usage(fcinfo, &fcusage);
	result = FunctionCallInvoke(fcinfo);
	pgstat_end_function_usage(&fcusage, true);
	PopActiveSnapshot();
	AtEOXact_GUC(false, nestlevel);

	*isnull = fcinfo->isnull;
	return result;
}

/*
 * daemon_record_error
 *		After a step failed and its transaction was rolled back: records
 *		the error in a new transaction ('exited', last_exit 'error') and
 *		logs it.  The caller then exits with 0; the supervisor decides.
 */
static void
daemon_record_error(ErrorData *edata)
{
	BgwdOwnerContext owner;
	char	   *error;

	error = psprintf("%s: %s", unpack_sql_state(edata->sqlerrcode),
					 edata->message ? edata->message : "unknown error");

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	BgwdBecomeOwner(&owner);
	(void) run_leave_query("error", error, 0, NULL);
	BgwdRestoreUser(&owner);
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	BgwdShmem->slots[MyBgwdSlot].jobs_failed++;

	ereport(LOG,
			(errmsg("bgworker_demo daemon \"%s\" of role %s exits after an error in its step: %s",
					MyDaemonName, MyDaemonOwner, error),
			 edata->detail ? errdetail("%s", edata->detail) : 0,
			 edata->context ? errcontext("%s", edata->context) : 0));
}

/*
 * daemon_leave
 *		After SIGTERM or a stop(): records how the daemon left, in a
 *		transaction of its own.  A row marked 'stopping' (by stop())
 *		becomes 'stopped'; otherwise this was a shutdown, and the row goes
 *		back to 'starting', due at once, unless the daemon is temporary.
 */
static void
daemon_leave(void)
{
	BgwdOwnerContext owner;
	char	   *status;
	char	   *last_exit = NULL;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "bgworker_demo daemon: leave");
	BgwdBecomeOwner(&owner);
	status = run_leave_query("shutdown", NULL, 0, &last_exit);
	BgwdRestoreUser(&owner);
	if (status != NULL)
	{
		status = MemoryContextStrdup(TopMemoryContext, status);
		last_exit = MemoryContextStrdup(TopMemoryContext, last_exit);
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);

	if (status == NULL)
		return;
	if (strcmp(last_exit, "stop") == 0)
		ereport(LOG,
				(errmsg("bgworker_demo daemon \"%s\" of role %s stopped by stop()",
						MyDaemonName, MyDaemonOwner)));
	else if (strcmp(status, "starting") == 0)
		ereport(LOG,
				(errmsg("bgworker_demo daemon \"%s\" of role %s interrupted by SIGTERM; it will be started again",
						MyDaemonName, MyDaemonOwner),
				 errhint("Use bgworker_demo.stop() to stop a daemon for good.")));
	else
		ereport(LOG,
				(errmsg("bgworker_demo daemon \"%s\" of role %s stopped by SIGTERM; a temporary daemon is not restarted",
						MyDaemonName, MyDaemonOwner)));
}

/*
 * run_leave_query
 *		Marks our row as left: "how" is normal, error or shutdown (see
 *		daemon_leave), "error" the last error or NULL, "steps" what to add to
 *		the step count.  Returns the new status (and, if last_exit is not
 *		NULL, the new last_exit there), or NULL if the row is no longer
 *		ours.  Both live in SPI's memory.  Caller runs as the extension
 *		owner with SPI.
 */
static char *
run_leave_query(const char *how, const char *error, int steps,
				char **last_exit)
{
	static BgwdQuery q = {
		"UPDATE bgworker_demo.daemons SET"
		" status = CASE WHEN status = 'stopping' THEN 'stopped'"
		"   WHEN $2 <> 'shutdown' THEN 'exited'"
		"   WHEN restart = 'temporary' THEN 'stopped'"
		"   ELSE 'starting' END,"
		" last_exit = CASE WHEN status = 'stopping' THEN 'stop' ELSE $2 END,"
		" last_error = CASE WHEN $3 IS NOT NULL THEN $3"
		"   WHEN $2 = 'shutdown' AND status <> 'stopping' AND restart = 'temporary'"
		"   THEN 'terminated by SIGTERM (server shutdown or pg_terminate_backend); a temporary daemon is not restarted'"
		"   ELSE last_error END,"
		" next_start = CASE WHEN $2 = 'shutdown' AND status <> 'stopping'"
		"   THEN clock_timestamp() END,"
		" steps = steps + $5, pid = NULL, launched = false"
		" WHERE id = $1 AND pid = $4"
		" RETURNING status, last_exit",
		5, {INT8OID, TEXTOID, TEXTOID, INT4OID, INT4OID}
	};
	Datum		values[5];
	char		nulls[5] = "     ";

	values[0] = Int64GetDatum(MyDaemonId);
	values[1] = CStringGetTextDatum(how);
	if (error != NULL)
		values[2] = CStringGetTextDatum(error);
	else
	{
		values[2] = (Datum) 0;
		nulls[2] = 'n';
	}
	values[3] = Int32GetDatum(MyProcPid);
	values[4] = Int32GetDatum(steps);
	BgwdQueryRun(&q, values, nulls, false, 0);
	if (SPI_processed == 0)
		return NULL;
	if (last_exit != NULL)
		*last_exit = SPI_getvalue(SPI_tuptable->vals[0],
								  SPI_tuptable->tupdesc, 2);
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}

/*----------------------------------------------------------------
 * The supervisor, run by the launcher
 *----------------------------------------------------------------
 */

/*
 * BgwdDaemonsSupervise
 *		One round of supervision: marks the daemons whose process is gone,
 *		applies the restart policy to the daemons that exited, and starts
 *		the daemons that are due.  Returns when the launcher must look
 *		again (the next restart after its back-off), DT_NOEND if only a
 *		latch can bring work.
 *
 * Called by the launcher inside a transaction, with SPI connected, as the
 * extension owner.
 */
TimestampTz
BgwdDaemonsSupervise(TimestampTz now)
{
	int64	   *live;
	int			nlive;

	TimestampTz next;

	find_dead_daemons(&live, &nlive);
	apply_restart_policies(now);
	next = start_due_daemons(now, live, nlive);
	first_round = false;
	return next;
}

/*
 * find_dead_daemons
 *		Marks 'exited' (last_exit 'crash') every daemon that the table says
 *		has a process, or a launched one, while it has none; one that was
 *		'stopping' becomes 'stopped'.  Returns the set of live daemons it
 *		used in *live and *nlive.
 *
 * The UPDATE runs with a snapshot taken before the live set is read (see
 * the file header for why that order matters).
 *
 * In the first round of a launcher, a launch without a process was made by
 * an earlier launcher and is forgotten, not counted: during a shutdown the
 * launcher may register a process for a daemon that has just left (its
 * exit wakes the launcher) that the postmaster then never starts.
 */
static void
find_dead_daemons(int64 **live_out, int *nlive_out)
{
	static BgwdQuery q = {
		"UPDATE bgworker_demo.daemons SET"
		" status = CASE WHEN status = 'stopping' THEN 'stopped'"
		"   WHEN status = 'starting' AND $2 THEN 'starting'"
		"   ELSE 'exited' END,"
		" last_exit = CASE WHEN status = 'stopping' THEN 'stop'"
		"   WHEN status = 'starting' AND $2 THEN last_exit"
		"   ELSE 'crash' END,"
		" last_error = CASE WHEN status = 'starting' AND $2 THEN last_error"
		"   WHEN status = 'starting'"
		"   THEN 'daemon process exited before it started its work (see the server log)'"
		"   ELSE format('daemon process %s exited without recording why (crash, FATAL error or immediate shutdown)', pid)"
		"   END,"
		" pid = NULL, launched = false"
		" WHERE (status IN ('running', 'stopping') OR (status = 'starting' AND launched))"
		" AND id <> ALL ($1)"
		" RETURNING name, username::text, status, last_error",
		2, {INT8ARRAYOID, BOOLOID}
	};
	SPIPlanPtr	plan = query_plan(&q);
	Snapshot	snap;
	int64	   *live;
	int			nlive;
	Datum	   *elems;
	Datum		values[2];
	int			rc;
	int			i;
	uint64		row;

	/* First the snapshot (a static one, copied by SPI), then the set. */
	snap = GetLatestSnapshot();
	live = collect_live_daemons(&nlive);
	elems = palloc(sizeof(Datum) * (nlive + 1));
	for (i = 0; i < nlive; i++)
		elems[i] = Int64GetDatum(live[i]);
	values[0] = PointerGetDatum(construct_array(elems, nlive, INT8OID, 8,
												FLOAT8PASSBYVAL,
												TYPALIGN_DOUBLE));
	values[1] = BoolGetDatum(first_round);

	rc = SPI_execute_snapshot(plan, values, NULL, snap, InvalidSnapshot,
							  false, true, 0);
	if (rc < 0)
		elog(ERROR, "query \"%s\" failed: %s", q.sql,
			 SPI_result_code_string(rc));

	for (row = 0; row < SPI_processed; row++)
	{
		HeapTuple	tup = SPI_tuptable->vals[row];
		TupleDesc	desc = SPI_tuptable->tupdesc;

		if (strcmp(SPI_getvalue(tup, desc, 3), "starting") == 0)
			continue;			/* a forgotten launch */
		ereport(LOG,
				(errmsg("bgworker_demo daemon \"%s\" of role %s has no process any more; marked %s",
						SPI_getvalue(tup, desc, 1), SPI_getvalue(tup, desc, 2),
						SPI_getvalue(tup, desc, 3)),
				 errdetail("%s", SPI_getvalue(tup, desc, 4))));
	}

	*live_out = live;
	*nlive_out = nlive;
}

/*
 * collect_live_daemons
 *		The ids of this database's daemons that have a process (a slot in
 *		use, adopted or not), read from shared memory.
 */
static int64 *
collect_live_daemons(int *nlive)
{
	int64	   *live = palloc(sizeof(int64) * BgwdShmem->nslots);
	int			i;

	*nlive = 0;
	LWLockAcquire(BgwdShmem->lock, LW_SHARED);
	for (i = 0; i < BgwdShmem->nslots; i++)
	{
		BgwdSlot   *s = &BgwdShmem->slots[i];

		if (s->kind == BGWD_KIND_DAEMON && s->state != BGWD_STATE_FREE &&
			s->dboid == MyDatabaseId && s->job_id != 0)
			live[(*nlive)++] = s->job_id;
	}
	LWLockRelease(BgwdShmem->lock);
	return live;
}

/*
 * is_live
 *		Whether the daemon is in the set collect_live_daemons returned.
 */
static bool
is_live(int64 id, int64 *live, int nlive)
{
	int			i;

	for (i = 0; i < nlive; i++)
		if (live[i] == id)
			return true;
	return false;
}

/*
 * apply_restart_policies
 *		Decides for every 'exited' daemon: restart after a back-off,
 *		finished, failed, or failed because it restarted too often.
 */
static void
apply_restart_policies(TimestampTz now)
{
	static BgwdQuery q = {
		"SELECT id, name, username::text, restart, last_exit, last_error,"
		"  (SELECT count(*) FROM unnest(recent_restarts) t WHERE t > $1)::int4"
		" FROM bgworker_demo.daemons WHERE status = 'exited'"
		" ORDER BY id FOR UPDATE",
		1, {TIMESTAMPTZOID}
	};
	Datum		values[1];
	ExitedDaemon *exited;
	uint64		n;
	uint64		i;

	values[0] = TimestampTzGetDatum(now - (int64) bgworker_demo_max_seconds *
									USECS_PER_SEC);
	BgwdQueryRun(&q, values, NULL, false, 0);
	n = SPI_processed;
	if (n == 0)
		return;

	/* Copy out: the queries below replace SPI_tuptable. */
	exited = palloc(sizeof(ExitedDaemon) * n);
	for (i = 0; i < n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;

		exited[i].id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		exited[i].name = SPI_getvalue(tup, desc, 2);
		exited[i].owner = SPI_getvalue(tup, desc, 3);
		exited[i].restart = SPI_getvalue(tup, desc, 4);
		exited[i].last_exit = SPI_getvalue(tup, desc, 5);
		if (exited[i].last_exit == NULL)
			exited[i].last_exit = "crash";
		exited[i].last_error = SPI_getvalue(tup, desc, 6);
		exited[i].recent = DatumGetInt32(SPI_getbinval(tup, desc, 7, &isnull));
	}

	for (i = 0; i < n; i++)
	{
		RestartDecision decision = decide_restart(&exited[i]);

		if (decision == DECIDE_RESTART)
			restart_daemon(&exited[i], now);
		else
			end_daemon(&exited[i], decision);
	}
}

/*
 * decide_restart
 *		The restart policy (see the file header) and the restart intensity.
 */
static RestartDecision
decide_restart(ExitedDaemon *d)
{
	bool		normal = strcmp(d->last_exit, "normal") == 0;

	if (strcmp(d->restart, "temporary") == 0 ||
		(strcmp(d->restart, "transient") == 0 && normal))
		return normal ? DECIDE_FINISHED : DECIDE_FAILED;
	if (d->recent >= bgworker_demo_max_restarts)
		return DECIDE_GIVE_UP;
	return DECIDE_RESTART;
}

/*
 * restart_daemon
 *		Makes the daemon due again after its back-off, counting the
 *		restart in restarts and in the window of recent restarts.
 */
static void
restart_daemon(ExitedDaemon *d, TimestampTz now)
{
	static BgwdQuery q = {
		"UPDATE bgworker_demo.daemons SET status = 'starting', next_start = $2,"
		" restarts = restarts + 1,"
		" recent_restarts = ARRAY(SELECT t FROM unnest(recent_restarts) t"
		"   WHERE t > $3 ORDER BY t) || $4"
		" WHERE id = $1",
		4, {INT8OID, TIMESTAMPTZOID, TIMESTAMPTZOID, TIMESTAMPTZOID}
	};
	Datum		values[4];
	int			nth = d->recent + 1;
	int64		delay_ms = DAEMON_BACKOFF_BASE_MS;
	int			i;

	for (i = 1; i < nth && delay_ms < DAEMON_BACKOFF_MAX_MS; i++)
		delay_ms *= 2;
	delay_ms = Min(delay_ms, DAEMON_BACKOFF_MAX_MS);

	values[0] = Int64GetDatum(d->id);
	values[1] = TimestampTzGetDatum(TimestampTzPlusMilliseconds(now, delay_ms));
	values[2] = TimestampTzGetDatum(now - (int64) bgworker_demo_max_seconds *
									USECS_PER_SEC);
	values[3] = TimestampTzGetDatum(now);
	BgwdQueryRun(&q, values, NULL, false, 0);

	ereport(LOG,
			(errmsg("bgworker_demo daemon \"%s\" of role %s restarts in %lld ms after %s",
					d->name, d->owner, (long long) delay_ms,
					strcmp(d->last_exit, "normal") == 0 ?
					"a normal end (restart is permanent)" :
					strcmp(d->last_exit, "error") == 0 ? "an error" : "a crash"),
			 errdetail("Restart %d of at most %d within %d s; last error: %s",
					   nth, bgworker_demo_max_restarts,
					   bgworker_demo_max_seconds,
					   d->last_error ? d->last_error : "none")));
}

/*
 * end_daemon
 *		Marks an exited daemon finished or failed for good, and says why.
 */
static void
end_daemon(ExitedDaemon *d, RestartDecision decision)
{
	static BgwdQuery q = {
		"UPDATE bgworker_demo.daemons SET status = $2, next_start = NULL"
		" WHERE id = $1",
		2, {INT8OID, TEXTOID}
	};
	Datum		values[2];

	values[0] = Int64GetDatum(d->id);
	values[1] = CStringGetTextDatum(decision == DECIDE_FINISHED ?
									"finished" : "failed");
	BgwdQueryRun(&q, values, NULL, false, 0);

	if (decision == DECIDE_FINISHED)
		ereport(LOG,
				(errmsg("bgworker_demo daemon \"%s\" of role %s finished",
						d->name, d->owner)));
	else if (decision == DECIDE_FAILED)
		ereport(LOG,
				(errmsg("bgworker_demo daemon \"%s\" of role %s failed and is not restarted (restart is %s): %s",
						d->name, d->owner, d->restart,
						d->last_error ? d->last_error : "no error recorded")));
	else
		ereport(LOG,
				(errmsg("bgworker_demo daemon \"%s\" of role %s failed: it would restart more than %d times within %d s",
						d->name, d->owner, bgworker_demo_max_restarts,
						bgworker_demo_max_seconds),
				 errdetail("Last error: %s",
						   d->last_error ? d->last_error : "none"),
				 errhint("Fix the step function, then spawn the daemon again; bgworker_demo.max_restarts and bgworker_demo.max_seconds set the limit.")));
}

/*
 * start_due_daemons
 *		Starts a process for every daemon that is due to start and has
 *		none.  Returns the earliest time a daemon will be due (or a retry
 *		time when a start failed for want of a background worker slot).
 */
static TimestampTz
start_due_daemons(TimestampTz now, int64 *live, int nlive)
{
	static BgwdQuery q = {
		"SELECT id, username::oid, name, next_start, launched"
		" FROM bgworker_demo.daemons WHERE status = 'starting'"
		" ORDER BY next_start, id",
		0
	};
	static BgwdQuery fail_q = {
		"UPDATE bgworker_demo.daemons SET status = 'failed', last_exit = 'error',"
		" last_error = $2, launched = false, next_start = NULL"
		" WHERE id = $1 AND status = 'starting'",
		2, {INT8OID, TEXTOID}
	};
	SPITupleTable *rows;
	uint64		n;
	uint64		i;
	TimestampTz next = DT_NOEND;
	bool		no_slots = false;

	BgwdQueryRun(&q, NULL, NULL, false, 0);
	rows = SPI_tuptable;
	n = SPI_processed;

	for (i = 0; i < n; i++)
	{
		HeapTuple	tup = rows->vals[i];
		TupleDesc	desc = rows->tupdesc;
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		Oid			roleid = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
		char	   *name = SPI_getvalue(tup, desc, 3);
		Datum		d = SPI_getbinval(tup, desc, 4, &isnull);
		TimestampTz due = isnull ? now : DatumGetTimestampTz(d);
		bool		launched = DatumGetBool(SPI_getbinval(tup, desc, 5, &isnull));
		char	   *problem;

		if (launched || is_live(id, live, nlive))
		{
			/* Its process is on its way; look again if it never comes. */
			next = Min(next, TimestampTzPlusMilliseconds(now,
														 DAEMON_LAUNCH_CHECK_MS));
			continue;
		}
		if (due > now)
		{
			next = Min(next, due);
			continue;
		}
		if (no_slots)
		{
			next = Min(next, TimestampTzPlusMilliseconds(now,
														 DAEMON_START_RETRY_MS));
			continue;
		}

		problem = role_problem(roleid);
		if (problem != NULL)
		{
			Datum		values[2];

			values[0] = Int64GetDatum(id);
			values[1] = CStringGetTextDatum(problem);
			BgwdQueryRun(&fail_q, values, NULL, false, 0);
			ereport(LOG,
					(errmsg("bgworker_demo daemon \"%s\" cannot start: %s",
							name, problem),
					 errhint("Grant LOGIN to the role, then spawn the daemon again; it was marked failed.")));
			continue;
		}

		if (!start_daemon(id, roleid, name))
		{
			no_slots = true;
			next = Min(next, TimestampTzPlusMilliseconds(now,
														 DAEMON_START_RETRY_MS));
		}
	}
	return next;
}

/*
 * start_daemon
 *		Registers a process for the daemon and marks its row launched.
 *		Returns false if the postmaster had no free background worker slot
 *		(says so once until a start succeeds).
 */
static bool
start_daemon(int64 id, Oid roleid, const char *name)
{
	static BgwdQuery q = {
		"UPDATE bgworker_demo.daemons SET launched = true"
		" WHERE id = $1 AND status = 'starting' AND NOT launched",
		1, {INT8OID}
	};
	BackgroundWorkerHandle *handle;
	int			slot;
	Datum		values[1];

	if (!BgwdStartDynamicWorker(BGWD_KIND_DAEMON, MyDatabaseId, roleid, id,
								"BgwdDaemonMain", &handle, &slot))
	{
		if (!said_no_slots)
		{
			ereport(LOG,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("bgworker_demo could not start daemon \"%s\": no background worker slot is free",
							name),
					 errdetail("It is started as soon as a slot is free; job workers, parallel query and replication use the same slots."),
					 errhint("Raise max_worker_processes (it needs a restart).")));
			said_no_slots = true;
		}
		return false;
	}
	said_no_slots = false;

	/*
	 * We watch the process through its slot and the table, and bgw_notify_pid
	 * wakes us when it stops: the handle is not needed.
	 */
	pfree(handle);
	publish_daemon_slot(slot, id);

	values[0] = Int64GetDatum(id);
	BgwdQueryRun(&q, values, NULL, false, 0);
	return true;
}

/*
 * publish_daemon_slot
 *		Writes the daemon id into the slot just reserved for its process,
 *		so that the process counts as live before it adopts the slot (the
 *		process writes the same id when it does).
 *
 * Only this launcher reserves daemon slots in this database, so a daemon
 * slot of this database with no id yet is the one we reserved.
 */
static void
publish_daemon_slot(int slot, int64 daemon_id)
{
	BgwdSlot   *s = &BgwdShmem->slots[slot];

	LWLockAcquire(BgwdShmem->lock, LW_EXCLUSIVE);
	if (s->kind == BGWD_KIND_DAEMON && s->state != BGWD_STATE_FREE &&
		s->dboid == MyDatabaseId && s->job_id == 0)
		s->job_id = daemon_id;
	LWLockRelease(BgwdShmem->lock);
}

/*
 * query_plan
 *		The kept plan of a query, prepared on first use, for a query that
 *		must run with a snapshot of its own (BgwdQueryRun does not take
 *		one).
 */
static SPIPlanPtr
query_plan(BgwdQuery *q)
{
	if (q->plan == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare(q->sql, q->nargs, q->argtypes);

		if (plan == NULL)
			elog(ERROR, "could not prepare query \"%s\": %s",
				 q->sql, SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "could not keep plan of \"%s\"", q->sql);
		q->plan = plan;
	}
	return q->plan;
}
