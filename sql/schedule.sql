--
-- schedule: schedule(), unschedule(), run_now(), alter_schedule(), the
-- schedules table and its security, and the runs the launcher queues.
--
-- Timing-dependent values (times, run counts) are only ever compared, so
-- that the output does not depend on the speed of the machine; every wait
-- has a deadline (wait_for, wait).
--

-- Bad input: a clear error and nothing written.
SELECT bgworker_demo.schedule(NULL, '1 minute', 'SELECT 1');
SELECT bgworker_demo.schedule('', '1 minute', 'SELECT 1');
SELECT bgworker_demo.schedule('s', NULL, 'SELECT 1');
SELECT bgworker_demo.schedule('s', '', 'SELECT 1');
SELECT bgworker_demo.schedule('s', '*/0 * * * *', 'SELECT 1');
SELECT bgworker_demo.schedule('s', '60 * * * *', 'SELECT 1');
SELECT bgworker_demo.schedule('s', 'every minute', 'SELECT 1');
SELECT bgworker_demo.schedule('s', '5 ms', 'SELECT 1');
SELECT bgworker_demo.schedule('s', '1 month', 'SELECT 1');
SELECT bgworker_demo.schedule('s', '1 minute', NULL);
SELECT bgworker_demo.schedule('s', '1 minute', '');
SELECT bgworker_demo.schedule('s', '1 minute', ' ; ');
SELECT bgworker_demo.schedule('s', '1 minute', 'SELEC 1');
-- Unknown schedules.
SELECT bgworker_demo.alter_schedule('nosuch', enabled => false);
SELECT bgworker_demo.alter_schedule('nosuch', enabled => true);
SELECT bgworker_demo.alter_schedule('nosuch', spec => '1 hour');
SELECT bgworker_demo.alter_schedule(NULL, enabled => false);
SELECT bgworker_demo.alter_schedule('', enabled => false);
SELECT bgworker_demo.run_now('nosuch');
SELECT bgworker_demo.unschedule('nosuch');
SELECT bgworker_demo.unschedule(NULL);
SELECT count(*) AS schedules_written FROM bgworker_demo.schedules;
SELECT count(*) AS jobs_written FROM bgworker_demo.jobs WHERE schedule_id IS NOT NULL;

-- schedule() returns the id; the same name again replaces spec, command
-- and overlap and keeps the id.
SELECT bgworker_demo.schedule('nightly', '0 3 * * *', 'SELECT 1') AS s_night \gset
SELECT bgworker_demo.schedule('nightly', '30 4 * * *', 'SELECT 2', overlap => true) AS s_night2 \gset
SELECT :s_night = :s_night2 AS same_id;
SELECT name, username, spec, command, enabled, overlap, runs, skipped,
	   last_job_id, last_run_at, created_at <= now() AS created
FROM bgworker_demo.schedules;

-- next_run is set, in the future, and next_run() agrees with it.
SELECT next_run > now() AS in_future,
	   next_run <= now() + interval '1 day' AS within_a_day,
	   next_run = bgworker_demo.next_run(spec, now()) AS agrees,
	   next_run = bgworker_demo.next_run(spec, next_run - interval '1 minute') AS on_spec
FROM bgworker_demo.schedules WHERE id = :s_night;

-- alter_schedule(): a bad spec or command changes nothing.
SELECT bgworker_demo.alter_schedule('nightly', spec => '0 0 31 2 *');
SELECT bgworker_demo.alter_schedule('nightly', spec => '');
SELECT bgworker_demo.alter_schedule('nightly', command => 'SELEC 2');
SELECT bgworker_demo.alter_schedule('nightly', command => '');
SELECT spec, command, enabled, overlap FROM bgworker_demo.schedules WHERE id = :s_night;
-- A new spec moves next_run; NULL arguments leave things as they are.
SELECT bgworker_demo.alter_schedule('nightly', spec => '@yearly', overlap => false);
SELECT spec, command, enabled, overlap,
	   next_run = bgworker_demo.next_run('0 0 1 1 *', now()) AS next_run_moved
FROM bgworker_demo.schedules WHERE id = :s_night;
SELECT bgworker_demo.alter_schedule('nightly', command => 'SELECT 3');
SELECT bgworker_demo.alter_schedule('nightly', enabled => false);
SELECT spec, command, enabled, overlap FROM bgworker_demo.schedules WHERE id = :s_night;
-- schedule() of an existing name enables it again.
SELECT bgworker_demo.schedule('nightly', '@yearly', 'SELECT 4') = :s_night AS same_id;
SELECT spec, command, enabled, overlap FROM bgworker_demo.schedules WHERE id = :s_night;

-- Every role has its own names: Alice may have a "nightly" too.
CREATE TABLE schedule_effects (id serial PRIMARY KEY, who name, what text);
GRANT SELECT, INSERT ON schedule_effects TO PUBLIC;
GRANT USAGE ON SEQUENCE schedule_effects_id_seq TO PUBLIC;
SET ROLE regress_alice;
SELECT bgworker_demo.schedule('nightly', '@daily',
	$$INSERT INTO schedule_effects (who, what) VALUES (current_user, 'nightly')$$) AS s_alice \gset
SELECT :s_alice <> :s_night AS own_schedule;
-- She sees only her own schedules.
SELECT name, username, spec FROM bgworker_demo.schedules;
-- And cannot write them directly.
INSERT INTO bgworker_demo.schedules (name, username, spec, command)
VALUES ('sneaky', 'regress_alice', '1 hour', 'SELECT 1');
UPDATE bgworker_demo.schedules SET command = 'SELECT 0';
DELETE FROM bgworker_demo.schedules;
-- run_now() of her schedule runs it as her, and counts in runs.
SELECT bgworker_demo.run_now('nightly') AS j_alice \gset
SELECT bgworker_demo.wait(:j_alice);
SELECT username, status, result, schedule_id = :s_alice AS from_schedule
FROM bgworker_demo.jobs WHERE id = :j_alice;
SELECT runs, skipped, last_job_id = :j_alice AS last_job, last_run_at IS NOT NULL AS last_run
FROM bgworker_demo.schedules;
RESET ROLE;
SELECT who, what FROM schedule_effects;

-- Bob sees neither schedule, and can neither run nor change nor drop them.
SET ROLE regress_bob;
SELECT count(*) AS visible FROM bgworker_demo.schedules;
SELECT bgworker_demo.run_now('nightly');
SELECT bgworker_demo.alter_schedule('nightly', enabled => false);
SELECT bgworker_demo.unschedule('nightly');
RESET ROLE;
-- run_now() did not move Alice's next_run; both schedules are intact.
SELECT username, name, spec, enabled, runs,
	   next_run = bgworker_demo.next_run(spec, created_at) AS next_run_kept
FROM bgworker_demo.schedules ORDER BY id;

-- run_now() returns a job that wait() reports succeeded; it counts in runs.
SELECT bgworker_demo.run_now('nightly') AS j_now \gset
SELECT bgworker_demo.wait(:j_now);
SELECT username, status, result, schedule_id = :s_night AS from_schedule,
	   started_at >= run_at AS not_early
FROM bgworker_demo.jobs WHERE id = :j_now;
SELECT runs, skipped, last_job_id = :j_now AS last_job
FROM bgworker_demo.schedules WHERE id = :s_night;

-- A 100 ms schedule runs, as the launcher queues it.
SELECT bgworker_demo.schedule('fast', '100 milliseconds', 'SELECT 5') AS s_fast \gset
SELECT wait_for(format('(SELECT runs >= 3 FROM bgworker_demo.schedules WHERE id = %s)', :s_fast));
-- Drop it while holding its row, so that the launcher cannot add a run
-- between the count and the drop.
BEGIN;
SELECT runs AS fast_runs FROM bgworker_demo.schedules WHERE id = :s_fast FOR UPDATE \gset
SELECT bgworker_demo.unschedule('fast');
COMMIT;
SELECT count(*) AS fast_left FROM bgworker_demo.schedules WHERE name = 'fast';
-- Its jobs stay, one per run; they all succeed.
SELECT count(*) = :fast_runs AS one_job_per_run
FROM bgworker_demo.jobs WHERE schedule_id = :s_fast;
SELECT wait_for(format('NOT EXISTS (SELECT 1 FROM bgworker_demo.jobs WHERE schedule_id = %s AND status IN (%L, %L))',
					   :s_fast, 'queued', 'running'));
-- Each run is due at a point of the schedule's 100 ms grid and does not
-- start before it.
SELECT username, status, count(*) >= 3 AS three_or_more,
	   bool_and(started_at >= run_at) AS not_early,
	   bool_and(finished_at >= started_at) AS finished,
	   count(DISTINCT run_at) = count(*) AS distinct_due_times,
	   bool_and((extract(epoch FROM run_at - first_run) * 1000000)::int8 % 100000 = 0) AS on_grid
FROM (SELECT *, min(run_at) OVER () AS first_run
	  FROM bgworker_demo.jobs WHERE schedule_id = :s_fast) j
GROUP BY username, status;

-- A launcher-queued run of Alice's schedule runs as Alice.
SET ROLE regress_alice;
SELECT bgworker_demo.schedule('alice_fast', '100 milliseconds',
	$$INSERT INTO schedule_effects (who, what) VALUES (current_user, 'alice_fast')$$) AS s_alice_fast \gset
SELECT wait_for(format('(SELECT runs >= 1 FROM bgworker_demo.schedules WHERE id = %s)', :s_alice_fast));
SELECT bgworker_demo.unschedule('alice_fast');
SELECT wait_for(format('NOT EXISTS (SELECT 1 FROM bgworker_demo.jobs WHERE schedule_id = %s AND status IN (%L, %L))',
					   :s_alice_fast, 'queued', 'running'));
SELECT DISTINCT username, status FROM bgworker_demo.jobs WHERE schedule_id = :s_alice_fast;
RESET ROLE;
SELECT DISTINCT who, what FROM schedule_effects WHERE what = 'alice_fast';

-- Overlap: a run that is still going makes the next due times be skipped.
SELECT bgworker_demo.schedule('slow', '100 milliseconds', 'SELECT pg_sleep(1)') AS s_slow \gset
SELECT wait_for(format('(SELECT skipped > 0 FROM bgworker_demo.schedules WHERE id = %s)', :s_slow));
SELECT overlap,
	   (SELECT count(*) FROM bgworker_demo.jobs
		WHERE schedule_id = :s_slow AND status IN ('queued', 'running')) <= 1 AS one_at_a_time
FROM bgworker_demo.schedules WHERE id = :s_slow;
-- With overlap allowed, runs pile up instead.
SELECT bgworker_demo.alter_schedule('slow', overlap => true);
SELECT wait_for(format('(SELECT count(*) >= 2 FROM bgworker_demo.jobs WHERE schedule_id = %s AND status IN (%L, %L))',
					   :s_slow, 'queued', 'running'));
SELECT bgworker_demo.unschedule('slow');
SELECT wait_for(format('NOT EXISTS (SELECT 1 FROM bgworker_demo.jobs WHERE schedule_id = %s AND status IN (%L, %L))',
					   :s_slow, 'queued', 'running'));
SELECT DISTINCT status FROM bgworker_demo.jobs WHERE schedule_id = :s_slow;

-- A disabled schedule does not run; enabled again, it resumes.
SELECT bgworker_demo.schedule('ticker', '100 milliseconds', 'SELECT 6') AS s_ticker \gset
SELECT bgworker_demo.schedule('pacer', '100 milliseconds', 'SELECT 7') AS s_pacer \gset
SELECT wait_for(format('(SELECT runs >= 1 FROM bgworker_demo.schedules WHERE id = %s)', :s_ticker));
SELECT bgworker_demo.alter_schedule('ticker', enabled => false);
SELECT runs AS ticker_runs FROM bgworker_demo.schedules WHERE id = :s_ticker \gset
SELECT runs AS pacer_runs FROM bgworker_demo.schedules WHERE id = :s_pacer \gset
-- While pacer runs three more times, ticker's due times pass unused.
SELECT wait_for(format('(SELECT runs >= %s + 3 FROM bgworker_demo.schedules WHERE id = %s)',
					   :pacer_runs, :s_pacer));
SELECT enabled, runs = :ticker_runs AS runs_unchanged
FROM bgworker_demo.schedules WHERE id = :s_ticker;
SELECT count(*) = :ticker_runs AS no_new_job
FROM bgworker_demo.jobs WHERE schedule_id = :s_ticker;
SELECT bgworker_demo.alter_schedule('ticker', enabled => true);
SELECT wait_for(format('(SELECT runs > %s FROM bgworker_demo.schedules WHERE id = %s)',
					   :ticker_runs, :s_ticker));
SELECT bgworker_demo.unschedule('ticker'), bgworker_demo.unschedule('pacer');
SELECT wait_for('NOT EXISTS (SELECT 1 FROM bgworker_demo.jobs WHERE schedule_id IS NOT NULL AND status IN (''queued'', ''running''))');
SELECT DISTINCT status FROM bgworker_demo.jobs
WHERE schedule_id IN (:s_ticker, :s_pacer);

-- What is left: the two "nightly" schedules.
SELECT username, name, spec, enabled FROM bgworker_demo.schedules ORDER BY id;
SET ROLE regress_alice;
SELECT bgworker_demo.unschedule('nightly');
RESET ROLE;
SELECT bgworker_demo.unschedule('nightly');
SELECT count(*) AS schedules_left FROM bgworker_demo.schedules;
DROP TABLE schedule_effects;
