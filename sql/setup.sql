--
-- setup: install the extension and wait until this database's launcher
-- has connected.  The launcher starts before pg_regress creates this
-- database, fails to connect and backs off; the wakeup() at the end of
-- the extension script calls it back.
--
CREATE EXTENSION bgworker_demo;

-- Wait (with a deadline) for the launcher of contrib_regression.
DO $$
DECLARE
	deadline timestamptz := clock_timestamp() + interval '60 s';
BEGIN
	LOOP
		PERFORM 1 FROM bgworker_demo.workers()
		WHERE type = 'launcher' AND database = current_database();
		EXIT WHEN FOUND;
		IF clock_timestamp() > deadline THEN
			RAISE EXCEPTION 'launcher did not connect within 60 s';
		END IF;
		PERFORM pg_sleep(0.05);
		PERFORM bgworker_demo.wakeup();
	END LOOP;
END
$$;

-- Roles used by the tests.  Job workers connect as the submitting role,
-- which on PostgreSQL 15 needs LOGIN.
CREATE ROLE regress_alice LOGIN;
CREATE ROLE regress_bob LOGIN;
CREATE ROLE regress_nologin NOLOGIN;

-- A helper that waits for a condition with a deadline.
CREATE FUNCTION wait_for(cond text, seconds int DEFAULT 60) RETURNS bool
LANGUAGE plpgsql AS $$
DECLARE
	deadline timestamptz := clock_timestamp() + make_interval(secs => seconds);
	ok bool;
BEGIN
	LOOP
		EXECUTE 'SELECT (' || cond || ')' INTO ok;
		IF ok THEN
			RETURN true;
		END IF;
		IF clock_timestamp() > deadline THEN
			RAISE EXCEPTION 'condition not met within % s: %', seconds, cond;
		END IF;
		PERFORM pg_sleep(0.02);
	END LOOP;
END
$$;
GRANT EXECUTE ON FUNCTION wait_for(text, int) TO PUBLIC;
