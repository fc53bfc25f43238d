/* bgworker_demo/bgworker_demo--1.0.sql */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION bgworker_demo" to load this file. \quit

/*
 * Everything lives in schema bgworker_demo (see the control file).  The
 * tables are written only through the functions below, which check their
 * arguments, record the calling role as the owner and switch to the
 * extension owner for the write.  Users read their own rows through
 * row-level security; superusers see all.
 */

-- Every role may use the queue; what each function lets it do is checked
-- inside (and the process-starting ones are revoked below).
GRANT USAGE ON SCHEMA bgworker_demo TO PUBLIC;

----------------------------------------------------------------------------
-- Processes
----------------------------------------------------------------------------

CREATE FUNCTION workers(
	OUT pid int4,
	OUT type text,
	OUT database name,
	OUT username name,
	OUT state text,
	OUT job_id int8,
	OUT started_at timestamptz,
	OUT jobs_done int8,
	OUT jobs_failed int8)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'bgworker_demo_workers'
LANGUAGE C STRICT VOLATILE PARALLEL RESTRICTED;

COMMENT ON FUNCTION workers() IS
'processes of bgworker_demo, from shared memory: launchers, monitor, standby reporter, job workers, daemons';

CREATE FUNCTION wakeup()
RETURNS void
AS 'MODULE_PATHNAME', 'bgworker_demo_wakeup'
LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION wakeup() IS
'sets the latch of this database''s launcher now and again when the transaction commits';

-- Waking the launcher costs a scan of the queue; submit() already does it
-- when needed, so only administrators get the raw call.
REVOKE ALL ON FUNCTION wakeup() FROM PUBLIC;

CREATE FUNCTION launch_worker(
	command text,
	wait bool DEFAULT true)
RETURNS int4
AS 'MODULE_PATHNAME', 'bgworker_demo_launch_worker'
LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION launch_worker(text, bool) IS
'registers one dynamic background worker that runs the command once as the calling role; returns its pid (NULL when wait is false)';

CREATE FUNCTION terminate_worker(pid int4)
RETURNS bool
AS 'MODULE_PATHNAME', 'bgworker_demo_terminate_worker'
LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION terminate_worker(int4) IS
'stops a worker started by launch_worker() in this session, through TerminateBackgroundWorker';

-- Both start or stop server processes: not for PUBLIC.
REVOKE ALL ON FUNCTION launch_worker(text, bool) FROM PUBLIC;
REVOKE ALL ON FUNCTION terminate_worker(int4) FROM PUBLIC;

----------------------------------------------------------------------------
-- Job queue
----------------------------------------------------------------------------

CREATE TABLE jobs (
	id				int8 GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	command			text NOT NULL,
	username		regrole NOT NULL,
	status			text NOT NULL DEFAULT 'queued',
	attempts		int4 NOT NULL DEFAULT 0,
	max_attempts	int4 NOT NULL DEFAULT 1,
	timeout			interval,
	transactional	bool NOT NULL DEFAULT true,
	run_at			timestamptz NOT NULL,
	submitted_at	timestamptz NOT NULL,
	started_at		timestamptz,
	finished_at		timestamptz,
	worker_pid		int4,
	result			text,
	last_error		text,
	sqlstate		text,
	schedule_id		int8,
	CONSTRAINT jobs_status_check CHECK (status IN
		('queued', 'running', 'succeeded', 'failed', 'canceled')),
	CONSTRAINT jobs_attempts_check CHECK (max_attempts >= 1 AND attempts >= 0)
);

COMMENT ON TABLE jobs IS 'background jobs: queued, running and finished (history)';

-- The worker's claim: oldest due job of one role.
CREATE INDEX jobs_queued_idx ON jobs (username, run_at, id)
	WHERE status = 'queued';
-- The launcher's orphan check and cancel() of running jobs.
CREATE INDEX jobs_running_idx ON jobs (worker_pid)
	WHERE status = 'running';
-- History pruning.
CREATE INDEX jobs_finished_idx ON jobs (finished_at)
	WHERE finished_at IS NOT NULL;

ALTER TABLE jobs ENABLE ROW LEVEL SECURITY;
CREATE POLICY jobs_owner ON jobs FOR SELECT
	USING (username OPERATOR(pg_catalog.=) current_user::regrole);
GRANT SELECT ON jobs TO PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('jobs', '');

CREATE FUNCTION submit(
	command text,
	run_at timestamptz DEFAULT now(),
	max_attempts int4 DEFAULT 1,
	timeout interval DEFAULT NULL,
	transactional bool DEFAULT true)
RETURNS int8
AS 'MODULE_PATHNAME', 'bgworker_demo_submit'
LANGUAGE C CALLED ON NULL INPUT VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION submit(text, timestamptz, int4, interval, bool) IS
'queues a job that runs the command as the calling role; returns its id';

CREATE FUNCTION cancel(job_id int8)
RETURNS bool
AS 'MODULE_PATHNAME', 'bgworker_demo_cancel'
LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION cancel(int8) IS
'cancels a queued job or interrupts a running one; false when it had already finished';

CREATE FUNCTION wait(
	job_id int8,
	timeout interval DEFAULT '1 min')
RETURNS text
AS 'MODULE_PATHNAME', 'bgworker_demo_wait'
LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION wait(int8, interval) IS
'waits until the job has finished and returns its status (its current status at the timeout)';

----------------------------------------------------------------------------
-- Schedules
----------------------------------------------------------------------------

CREATE TABLE schedules (
	id				int8 GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	name			text NOT NULL,
	username		regrole NOT NULL,
	spec			text NOT NULL,
	command			text NOT NULL,
	enabled			bool NOT NULL DEFAULT true,
	overlap			bool NOT NULL DEFAULT false,
	created_at		timestamptz NOT NULL DEFAULT now(),
	next_run		timestamptz,
	last_job_id		int8,
	last_run_at		timestamptz,
	runs			int8 NOT NULL DEFAULT 0,
	skipped			int8 NOT NULL DEFAULT 0,
	CONSTRAINT schedules_name_key UNIQUE (username, name)
);

COMMENT ON TABLE schedules IS 'recurring jobs: cron expressions or intervals';

CREATE INDEX schedules_next_run_idx ON schedules (next_run)
	WHERE enabled;

ALTER TABLE schedules ENABLE ROW LEVEL SECURITY;
CREATE POLICY schedules_owner ON schedules FOR SELECT
	USING (username OPERATOR(pg_catalog.=) current_user::regrole);
GRANT SELECT ON schedules TO PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('schedules', '');

CREATE FUNCTION schedule(
	name text,
	spec text,
	command text,
	overlap bool DEFAULT false)
RETURNS int8
AS 'MODULE_PATHNAME', 'bgworker_demo_schedule'
LANGUAGE C CALLED ON NULL INPUT VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION schedule(text, text, text, bool) IS
'creates or replaces the calling role''s schedule of that name; spec is a cron expression or an interval';

CREATE FUNCTION unschedule(name text)
RETURNS bool
AS 'MODULE_PATHNAME', 'bgworker_demo_unschedule'
LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION unschedule(text) IS
'drops the calling role''s schedule of that name; false if there was none';

CREATE FUNCTION run_now(name text)
RETURNS int8
AS 'MODULE_PATHNAME', 'bgworker_demo_run_now'
LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION run_now(text) IS
'queues one run of the schedule at once; returns the job id';

CREATE FUNCTION alter_schedule(
	name text,
	enabled bool DEFAULT NULL,
	spec text DEFAULT NULL,
	command text DEFAULT NULL,
	overlap bool DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'bgworker_demo_alter_schedule'
LANGUAGE C CALLED ON NULL INPUT VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION alter_schedule(text, bool, text, text, bool) IS
'changes the given properties of a schedule; NULL leaves one as it is';

CREATE FUNCTION next_run(
	spec text,
	after timestamptz DEFAULT now())
RETURNS timestamptz
AS 'MODULE_PATHNAME', 'bgworker_demo_next_run'
LANGUAGE C STRICT STABLE PARALLEL SAFE;

COMMENT ON FUNCTION next_run(text, timestamptz) IS
'the first time after "after" at which the spec is due, in bgworker_demo.timezone';

----------------------------------------------------------------------------
-- Supervised daemons
----------------------------------------------------------------------------

/*
 * A daemon is a process that calls step(state, message) in a loop, one
 * transaction per step, supervised by the launcher (daemon.c tells the
 * whole story).  Its status:
 *
 *	starting	waits for the launcher to start a process: after spawn(), after
 *				a restart's back-off (next_start), after a server restart
 *	running		a process (pid) calls the step
 *	stopping	stop() was called; the process ends after its current step
 *	exited		the process ended (last_exit says how); the launcher applies
 *				the restart policy at once
 *	stopped		ended by stop() (or, for a temporary daemon, by a shutdown)
 *	finished	the step returned NULL and the daemon is not permanent
 *	failed		ended by an error or crash and not restarted: temporary, or
 *				more than bgworker_demo.max_restarts restarts within
 *				bgworker_demo.max_seconds
 */
CREATE TABLE daemons (
	id				int8 GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	name			text NOT NULL UNIQUE,
	username		regrole NOT NULL,
	step			regprocedure NOT NULL,
	state			jsonb NOT NULL,
	restart			text NOT NULL DEFAULT 'permanent',
	sleep			interval NOT NULL DEFAULT '1 second',
	status			text NOT NULL DEFAULT 'starting',
	pid				int4,
	launched		bool NOT NULL DEFAULT false,
	next_start		timestamptz,
	started_at		timestamptz,
	steps			int8 NOT NULL DEFAULT 0,
	restarts		int4 NOT NULL DEFAULT 0,
	recent_restarts	timestamptz[] NOT NULL DEFAULT '{}',
	last_exit		text,
	last_error		text,
	created_at		timestamptz NOT NULL DEFAULT now(),
	CONSTRAINT daemons_restart_check CHECK (restart IN
		('permanent', 'transient', 'temporary')),
	CONSTRAINT daemons_status_check CHECK (status IN
		('starting', 'running', 'stopping', 'exited', 'stopped', 'finished',
		 'failed')),
	CONSTRAINT daemons_last_exit_check CHECK (last_exit IN
		('normal', 'error', 'crash', 'shutdown', 'stop')),
	CONSTRAINT daemons_pid_check CHECK
		((status IN ('running', 'stopping')) = (pid IS NOT NULL))
);

COMMENT ON TABLE daemons IS 'supervised long-running workers that call a step function';
COMMENT ON COLUMN daemons.state IS 'what the last committed step returned (or the initial state)';
COMMENT ON COLUMN daemons.launched IS 'the launcher registered a process that has not claimed the row yet';
COMMENT ON COLUMN daemons.next_start IS 'when a starting daemon is due (after a restart''s back-off)';
COMMENT ON COLUMN daemons.started_at IS 'when the current (or last) process claimed the row';
COMMENT ON COLUMN daemons.restarts IS 'restarts by the supervisor; server restarts are not counted';
COMMENT ON COLUMN daemons.recent_restarts IS 'times of the restarts within bgworker_demo.max_seconds, for the restart intensity';
COMMENT ON COLUMN daemons.last_exit IS 'how the last process ended: normal (step returned NULL), error, crash, shutdown or stop';
COMMENT ON COLUMN daemons.last_error IS 'SQLSTATE and message of the last error or crash';

-- The supervisor's scans: only daemons that have not ended.
CREATE INDEX daemons_active_idx ON daemons (status)
	WHERE status IN ('starting', 'running', 'stopping', 'exited');

ALTER TABLE daemons ENABLE ROW LEVEL SECURITY;
CREATE POLICY daemons_owner ON daemons FOR SELECT
	USING (username OPERATOR(pg_catalog.=) current_user::regrole);
GRANT SELECT ON daemons TO PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('daemons', '');

CREATE TABLE messages (
	id				int8 GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	daemon_id		int8 NOT NULL REFERENCES daemons (id) ON DELETE CASCADE,
	message			jsonb NOT NULL,
	sent_at			timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE messages IS 'messages sent to daemons, each consumed by exactly one step';

CREATE INDEX messages_daemon_idx ON messages (daemon_id, id);

ALTER TABLE messages ENABLE ROW LEVEL SECURITY;
CREATE POLICY messages_owner ON messages FOR SELECT
	USING (EXISTS (SELECT 1 FROM daemons d
				   WHERE d.id OPERATOR(pg_catalog.=) daemon_id
				   AND d.username OPERATOR(pg_catalog.=) current_user::regrole));
GRANT SELECT ON messages TO PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('messages', '');

-- spawn(), send() and stop() stay granted to PUBLIC, like submit(): they
-- act only on the caller's own daemons (as row-level security shows them
-- to the caller), and a daemon's process connects as the caller and calls
-- a function the caller may execute, so it can do nothing the caller could
-- not do in a session.  What a role can take is background worker slots
-- (max_worker_processes), as a session takes connection slots.

CREATE FUNCTION spawn(
	name text,
	step regprocedure,
	state jsonb DEFAULT '{}',
	restart text DEFAULT 'permanent',
	sleep interval DEFAULT '1 second')
RETURNS int8
AS 'MODULE_PATHNAME', 'bgworker_demo_spawn'
LANGUAGE C CALLED ON NULL INPUT VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION spawn(text, regprocedure, jsonb, text, interval) IS
'starts a supervised daemon that calls step(state jsonb, message jsonb) returning jsonb, as the calling role; restart is permanent, transient or temporary';

CREATE FUNCTION send(name text, message jsonb)
RETURNS void
AS 'MODULE_PATHNAME', 'bgworker_demo_send'
LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION send(text, jsonb) IS
'queues a message for the daemon; it is handed to exactly one step, in order';

CREATE FUNCTION stop(name text)
RETURNS bool
AS 'MODULE_PATHNAME', 'bgworker_demo_stop'
LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION stop(text) IS
'stops the daemon gracefully (SIGTERM); false if it was not running';

-- Tell this database's launcher, once CREATE EXTENSION commits, that its
-- tables are there.
SELECT wakeup();
