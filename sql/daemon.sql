--
-- daemon: supervised daemons: spawn(), send(), stop(), restart policies
--
-- Runs after setup (extension, launcher, roles, wait_for()).  Every wait
-- has a deadline; nothing printed depends on timing.
--

-- Step functions, good and bad.
CREATE FUNCTION daemon_counter(state jsonb, message jsonb) RETURNS jsonb
LANGUAGE sql AS $$
	SELECT jsonb_build_object('n', (state->>'n')::int + 1,
							  'last', coalesce(message, state->'last'))
$$;
CREATE FUNCTION daemon_countdown(state jsonb, message jsonb) RETURNS jsonb
LANGUAGE sql AS $$
	SELECT CASE WHEN (state->>'n')::int > 1
		THEN jsonb_build_object('n', (state->>'n')::int - 1) END
$$;
CREATE FUNCTION daemon_boom(state jsonb, message jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION 'boom at %', state->>'n';
END
$$;
CREATE FUNCTION daemon_one_arg(state jsonb) RETURNS jsonb
LANGUAGE sql AS 'SELECT state';
CREATE FUNCTION daemon_text_arg(state jsonb, message text) RETURNS jsonb
LANGUAGE sql AS 'SELECT state';
CREATE FUNCTION daemon_returns_text(state jsonb, message jsonb) RETURNS text
LANGUAGE sql AS 'SELECT state::text';
CREATE FUNCTION daemon_returns_set(state jsonb, message jsonb) RETURNS SETOF jsonb
LANGUAGE sql AS 'SELECT state';
CREATE FUNCTION daemon_strict(state jsonb, message jsonb) RETURNS jsonb
LANGUAGE sql STRICT AS 'SELECT state';
CREATE PROCEDURE daemon_procedure(state jsonb, message jsonb)
LANGUAGE sql AS 'SELECT 1';
CREATE FUNCTION daemon_private(state jsonb, message jsonb) RETURNS jsonb
LANGUAGE sql AS 'SELECT state';
REVOKE EXECUTE ON FUNCTION daemon_private(jsonb, jsonb) FROM PUBLIC;

-- Runs a statement and shows the SQLSTATE, message and hint of its error.
CREATE FUNCTION daemon_try(sql text,
	OUT code text, OUT message text, OUT hint text)
LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE sql;
	code := '00000';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE,
		message = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
END
$$;

--
-- Bad input: clear errors, nothing written
--
SELECT c.what, t.*
FROM (VALUES
	('null name', $$SELECT bgworker_demo.spawn(NULL, 'daemon_counter(jsonb,jsonb)')$$),
	('empty name', $$SELECT bgworker_demo.spawn('', 'daemon_counter(jsonb,jsonb)')$$),
	('blank name', $$SELECT bgworker_demo.spawn('  ', 'daemon_counter(jsonb,jsonb)')$$),
	('null step', $$SELECT bgworker_demo.spawn('x', NULL)$$),
	('unknown function', $$SELECT bgworker_demo.spawn('x', 'daemon_nosuch(jsonb,jsonb)')$$),
	('unknown OID', $$SELECT bgworker_demo.spawn('x', 0::regprocedure)$$),
	('one argument', $$SELECT bgworker_demo.spawn('x', 'daemon_one_arg(jsonb)')$$),
	('text message', $$SELECT bgworker_demo.spawn('x', 'daemon_text_arg(jsonb,text)')$$),
	('returns text', $$SELECT bgworker_demo.spawn('x', 'daemon_returns_text(jsonb,jsonb)')$$),
	('returns a set', $$SELECT bgworker_demo.spawn('x', 'daemon_returns_set(jsonb,jsonb)')$$),
	('strict', $$SELECT bgworker_demo.spawn('x', 'daemon_strict(jsonb,jsonb)')$$),
	('procedure', $$SELECT bgworker_demo.spawn('x', 'daemon_procedure(jsonb,jsonb)')$$),
	('null state', $$SELECT bgworker_demo.spawn('x', 'daemon_counter(jsonb,jsonb)', NULL)$$),
	('bad restart', $$SELECT bgworker_demo.spawn('x', 'daemon_counter(jsonb,jsonb)', restart => 'forever')$$),
	('null restart', $$SELECT bgworker_demo.spawn('x', 'daemon_counter(jsonb,jsonb)', restart => NULL)$$),
	('zero sleep', $$SELECT bgworker_demo.spawn('x', 'daemon_counter(jsonb,jsonb)', sleep => '0')$$),
	('negative sleep', $$SELECT bgworker_demo.spawn('x', 'daemon_counter(jsonb,jsonb)', sleep => '-1 s')$$),
	('null sleep', $$SELECT bgworker_demo.spawn('x', 'daemon_counter(jsonb,jsonb)', sleep => NULL)$$),
	('send to unknown', $$SELECT bgworker_demo.send('nosuch', '{}')$$),
	('stop unknown', $$SELECT bgworker_demo.stop('nosuch')$$)
) c(what, sql), daemon_try(c.sql) t;

-- A function the caller may not execute; a role that cannot log in.
SET ROLE regress_alice;
SELECT * FROM daemon_try($$SELECT bgworker_demo.spawn('x', 'daemon_private(jsonb,jsonb)')$$);
SET ROLE regress_nologin;
SELECT * FROM daemon_try($$SELECT bgworker_demo.spawn('x', 'daemon_counter(jsonb,jsonb)')$$);
RESET ROLE;

SELECT count(*) AS daemons FROM bgworker_demo.daemons;

--
-- A counter: it steps, takes a message, shows up in workers()
--
SELECT bgworker_demo.spawn('counter', 'daemon_counter(jsonb,jsonb)',
						   '{"n": 0}', sleep => '10 ms') > 0 AS spawned;
SELECT wait_for($$(SELECT status = 'running' AND (state->>'n')::int >= 3
				   FROM bgworker_demo.daemons WHERE name = 'counter')$$);

SELECT * FROM daemon_try($$SELECT bgworker_demo.spawn('counter', 'daemon_counter(jsonb,jsonb)')$$);

SELECT bgworker_demo.send('counter', '{"hello": "world"}');
SELECT wait_for($$(SELECT state->'last' = '{"hello": "world"}'
				   FROM bgworker_demo.daemons WHERE name = 'counter')$$);

SELECT name, username = current_user::regrole AS mine, step, status,
	pid IS NOT NULL AS has_pid, restarts, last_error,
	(state->>'n')::int >= 4 AS counted, state->'last' AS last
FROM bgworker_demo.daemons;
SELECT count(*) AS unread FROM bgworker_demo.messages;
SELECT w.type, w.state IN ('idle', 'running') AS alive
FROM bgworker_demo.workers() w
JOIN bgworker_demo.daemons d ON w.type = 'daemon' AND w.job_id = d.id;

--
-- Other roles neither see nor touch it
--
SET ROLE regress_bob;
SELECT count(*) AS visible FROM bgworker_demo.daemons;
SELECT * FROM daemon_try($$SELECT bgworker_demo.send('counter', '{}')$$);
SELECT * FROM daemon_try($$SELECT bgworker_demo.stop('counter')$$);
SELECT * FROM daemon_try($$SELECT bgworker_demo.spawn('counter', 'daemon_counter(jsonb,jsonb)')$$);
RESET ROLE;

--
-- stop(): the process ends its step and goes; a second stop() is false
--
SELECT bgworker_demo.stop('counter');
SELECT wait_for($$(SELECT status = 'stopped' FROM bgworker_demo.daemons WHERE name = 'counter')
				  AND NOT EXISTS (SELECT 1 FROM bgworker_demo.workers() WHERE type = 'daemon')$$);
SELECT bgworker_demo.stop('counter');
SELECT * FROM daemon_try($$SELECT bgworker_demo.send('counter', '{}')$$);
SELECT name, status, pid, last_exit FROM bgworker_demo.daemons;

-- A stopped daemon's name can be spawned again by its owner.
SELECT bgworker_demo.spawn('counter', 'daemon_counter(jsonb,jsonb)',
						   '{"n": 100}', sleep => '10 ms') > 0 AS spawned;
SELECT wait_for($$(SELECT status = 'running' AND (state->>'n')::int > 100
				   FROM bgworker_demo.daemons WHERE name = 'counter')$$);
SELECT bgworker_demo.stop('counter');
SELECT wait_for($$(SELECT status = 'stopped' FROM bgworker_demo.daemons WHERE name = 'counter')
				  AND NOT EXISTS (SELECT 1 FROM bgworker_demo.workers() WHERE type = 'daemon')$$);

--
-- A daemon of another role runs as that role
--
SET ROLE regress_alice;
SELECT bgworker_demo.spawn('alice', 'daemon_counter(jsonb,jsonb)', '{"n": 0}',
						   sleep => '1 h') > 0 AS spawned;
SELECT wait_for($$(SELECT status = 'running' AND (state->>'n')::int = 1
				   FROM bgworker_demo.daemons WHERE name = 'alice')$$);
SELECT name, status, (state->>'n')::int AS n FROM bgworker_demo.daemons;
SELECT w.username FROM bgworker_demo.workers() w WHERE w.type = 'daemon';
SET ROLE regress_bob;
SELECT * FROM daemon_try($$SELECT bgworker_demo.stop('alice')$$);
SET ROLE regress_alice;
SELECT bgworker_demo.stop('alice');
SELECT wait_for($$(SELECT status = 'stopped' FROM bgworker_demo.daemons WHERE name = 'alice')$$);
RESET ROLE;

--
-- Restart policies
--
-- transient: a NULL from the step is a normal end, not restarted
SELECT bgworker_demo.spawn('countdown', 'daemon_countdown(jsonb,jsonb)',
						   '{"n": 3}', 'transient', '10 ms') > 0 AS spawned;
-- temporary: an error ends it for good
SELECT bgworker_demo.spawn('boom', 'daemon_boom(jsonb,jsonb)',
						   '{"n": 1}', 'temporary', '10 ms') > 0 AS spawned;
-- permanent: restarted even after a normal end, until the intensity
-- (bgworker_demo.max_restarts = 3 within 60 s) is exceeded
SELECT bgworker_demo.spawn('forever', 'daemon_countdown(jsonb,jsonb)',
						   '{"n": 2}', 'permanent', '10 ms') > 0 AS spawned;
SELECT wait_for($$(SELECT bool_and(status IN ('finished', 'failed'))
				   FROM bgworker_demo.daemons
				   WHERE name IN ('countdown', 'boom', 'forever'))$$);
SELECT name, restart, status, steps, restarts, last_exit, last_error, state
FROM bgworker_demo.daemons WHERE name IN ('countdown', 'boom', 'forever')
ORDER BY name;
SELECT bgworker_demo.stop('boom');

-- clean up
DELETE FROM bgworker_demo.daemons;
DROP FUNCTION daemon_try(text), daemon_counter(jsonb, jsonb),
	daemon_countdown(jsonb, jsonb), daemon_boom(jsonb, jsonb),
	daemon_one_arg(jsonb), daemon_text_arg(jsonb, text),
	daemon_returns_text(jsonb, jsonb), daemon_returns_set(jsonb, jsonb),
	daemon_strict(jsonb, jsonb), daemon_private(jsonb, jsonb);
DROP PROCEDURE daemon_procedure(jsonb, jsonb);
