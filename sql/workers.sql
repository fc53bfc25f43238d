--
-- workers: the processes, the settings and the raw dynamic-worker calls.
--

-- The launcher of this database and the monitor are there.
SELECT type, database, username, state IN ('idle', 'running') AS alive,
	   pid > 0 AS has_pid
FROM bgworker_demo.workers()
WHERE type IN ('launcher', 'monitor')
ORDER BY type;

-- The launcher is a backend with its own backend_type.
SELECT backend_type, datname
FROM pg_stat_activity
WHERE backend_type = 'bgworker_demo launcher';

-- Settings: documented ranges and contexts.
SELECT name, setting, unit, context, vartype
FROM pg_settings
WHERE name LIKE 'bgworker_demo.%'
ORDER BY name;

-- postmaster and sighup settings cannot be set in a session.
SET bgworker_demo.max_workers = 3;
SET bgworker_demo.databases = 'x';
-- The prefix is reserved: a misspelt setting is an error.
SET bgworker_demo.max_worker = 3;
-- timezone is per session.
SET bgworker_demo.timezone = 'UTC';
RESET bgworker_demo.timezone;

-- wakeup() is for administrators only.
SELECT bgworker_demo.wakeup();
SET ROLE regress_alice;
SELECT bgworker_demo.wakeup();
SELECT bgworker_demo.launch_worker('SELECT 1');
SELECT bgworker_demo.terminate_worker(1);
-- workers() may be read by anyone.
SELECT count(*) > 0 AS sees_processes FROM bgworker_demo.workers();
RESET ROLE;

-- The raw API: register a worker, wait for its start, stop it.
SELECT bgworker_demo.launch_worker('SELECT pg_sleep(60)') AS raw_pid \gset
SELECT :raw_pid > 0 AS started;
SELECT wait_for(format('EXISTS (SELECT 1 FROM bgworker_demo.workers() WHERE pid = %s AND type = %L)',
					   :raw_pid, 'raw'));
SELECT bgworker_demo.terminate_worker(:raw_pid);
SELECT wait_for(format('NOT EXISTS (SELECT 1 FROM bgworker_demo.workers() WHERE pid = %s)', :raw_pid));
-- Stopped already.
SELECT bgworker_demo.terminate_worker(:raw_pid);
-- Not ours.
SELECT bgworker_demo.terminate_worker(1);
-- Bad input.
SELECT bgworker_demo.launch_worker('SELEC 1');
SELECT bgworker_demo.launch_worker(repeat('x', 200));
-- Without waiting, no pid is known yet.
SELECT bgworker_demo.launch_worker('SELECT 1', wait => false) IS NULL AS no_pid;
