--
-- jobs: submit(), wait(), cancel(), the jobs table and its security.
--

-- Bad input: a clear error and nothing written.
SELECT bgworker_demo.submit(NULL);
SELECT bgworker_demo.submit('');
SELECT bgworker_demo.submit('  ; ');
SELECT bgworker_demo.submit('SELEC 1');
SELECT bgworker_demo.submit('SELECT 1', max_attempts => 0);
SELECT bgworker_demo.submit('SELECT 1', max_attempts => NULL);
SELECT bgworker_demo.submit('SELECT 1', timeout => '-1 s');
SELECT bgworker_demo.submit('SELECT 1', timeout => '0');
SELECT bgworker_demo.submit('SELECT 1', timeout => '30 days');
SELECT bgworker_demo.submit('SELECT 1', run_at => 'infinity');
SELECT bgworker_demo.submit('SELECT 1', transactional => NULL);
SELECT count(*) AS jobs_written FROM bgworker_demo.jobs;

-- A job runs, and wait() returns its final status.
CREATE TABLE job_effects (id serial PRIMARY KEY, who name, what text);
GRANT SELECT, INSERT ON job_effects TO PUBLIC;
GRANT USAGE ON SEQUENCE job_effects_id_seq TO PUBLIC;

SELECT bgworker_demo.submit($$INSERT INTO job_effects (who, what) VALUES (current_user, 'first')$$) AS j1 \gset
SELECT bgworker_demo.wait(:j1);
SELECT username, status, attempts, max_attempts, result, last_error,
	   started_at >= submitted_at AS ordered, finished_at >= started_at AS finished
FROM bgworker_demo.jobs WHERE id = :j1;
SELECT who, what FROM job_effects;

-- Waiting in the transaction that submitted the job cannot work.
BEGIN;
SELECT bgworker_demo.submit('SELECT 1') AS j_same \gset
SELECT bgworker_demo.wait(:j_same);
ROLLBACK;
-- The rolled-back job was never queued.
SELECT count(*) FROM bgworker_demo.jobs WHERE id = :j_same;
-- wait() needs READ COMMITTED.
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT bgworker_demo.wait(:j1);
ROLLBACK;
SELECT bgworker_demo.wait(:j1, '0');
SELECT bgworker_demo.wait(-1);

-- A job runs as the role that submitted it.
SET ROLE regress_alice;
SELECT bgworker_demo.submit($$INSERT INTO job_effects (who, what) VALUES (current_user, session_user)$$) AS ja \gset
SELECT bgworker_demo.wait(:ja);
SELECT who, what FROM job_effects WHERE id > 1;
-- Alice sees only her own jobs.
SELECT username, status FROM bgworker_demo.jobs;
-- And cannot write the queue directly.
INSERT INTO bgworker_demo.jobs (command, username, run_at, submitted_at)
VALUES ('SELECT 1', 'regress_bob', now(), now());
UPDATE bgworker_demo.jobs SET status = 'queued';
RESET ROLE;

-- Bob's job is invisible to Alice: she can neither wait for nor cancel it.
SET ROLE regress_bob;
SELECT bgworker_demo.submit('SELECT pg_sleep(0)', run_at => now() + interval '1 hour') AS jb \gset
RESET ROLE;
SET ROLE regress_alice;
SELECT bgworker_demo.wait(:jb, '10 ms');
SELECT bgworker_demo.cancel(:jb);
RESET ROLE;

-- A job has no more rights than its owner.
CREATE TABLE secrets (s text);
INSERT INTO secrets VALUES ('top secret');
SET ROLE regress_alice;
SELECT bgworker_demo.submit('INSERT INTO job_effects (who, what) SELECT current_user, s FROM secrets') AS jsec \gset
SELECT bgworker_demo.wait(:jsec);
SELECT status, sqlstate, last_error FROM bgworker_demo.jobs WHERE id = :jsec;
RESET ROLE;
SELECT count(*) AS leaked FROM job_effects WHERE what = 'top secret';

-- An error is recorded with its SQLSTATE; retries back off, then fail.
SELECT bgworker_demo.submit('SELECT 1/0', max_attempts => 3) AS jerr \gset
SELECT bgworker_demo.wait(:jerr);
SELECT status, attempts, sqlstate, last_error, result
FROM bgworker_demo.jobs WHERE id = :jerr;

-- A job's effects and its completion commit together: a failing job
-- leaves nothing behind.
SELECT bgworker_demo.submit($$INSERT INTO job_effects (who, what) VALUES (current_user, 'half'); SELECT 1/0$$) AS jhalf \gset
SELECT bgworker_demo.wait(:jhalf);
SELECT count(*) AS half_done FROM job_effects WHERE what = 'half';

-- timeout applies statement_timeout to that job.
SELECT bgworker_demo.submit('SELECT pg_sleep(30)', timeout => '200 ms') AS jto \gset
SELECT bgworker_demo.wait(:jto);
SELECT status, sqlstate, last_error FROM bgworker_demo.jobs WHERE id = :jto;

-- cancel() of a queued job.
SELECT bgworker_demo.submit('SELECT 1', run_at => now() + interval '1 hour') AS jq \gset
SELECT bgworker_demo.cancel(:jq);
SELECT bgworker_demo.wait(:jq);
SELECT status, finished_at IS NOT NULL AS finished, last_error FROM bgworker_demo.jobs WHERE id = :jq;
-- Again: it has finished already.
SELECT bgworker_demo.cancel(:jq);
SELECT bgworker_demo.cancel(-1);

-- cancel() of a running job interrupts it; the worker goes on.
SELECT bgworker_demo.submit('SELECT pg_sleep(60)') AS jrun \gset
SELECT wait_for(format('(SELECT status = %L FROM bgworker_demo.jobs WHERE id = %s)', 'running', :jrun));
SELECT bgworker_demo.cancel(:jrun);
SELECT bgworker_demo.wait(:jrun);
SELECT status, attempts, sqlstate, last_error FROM bgworker_demo.jobs WHERE id = :jrun;
SELECT bgworker_demo.submit('SELECT 2') AS jnext \gset
SELECT bgworker_demo.wait(:jnext);

-- A delayed job waits for its time; wait() returns the status at timeout.
SELECT bgworker_demo.submit('SELECT 3', run_at => clock_timestamp() + interval '500 ms') AS jlater \gset
SELECT bgworker_demo.wait(:jlater, '10 ms');
SELECT bgworker_demo.wait(:jlater);
SELECT started_at >= run_at AS not_early FROM bgworker_demo.jobs WHERE id = :jlater;

-- VACUUM cannot run inside a transaction: transactional => false runs it
-- as a top-level statement.
SELECT bgworker_demo.submit('VACUUM job_effects') AS jvac_tx \gset
SELECT bgworker_demo.wait(:jvac_tx);
SELECT status, sqlstate, last_error FROM bgworker_demo.jobs WHERE id = :jvac_tx;
-- (CREATE INDEX CONCURRENTLY is tested in t/020_jobs.pl: it waits for
-- older snapshots, such as the one of a session blocked in wait().)
SELECT bgworker_demo.submit('VACUUM job_effects; ANALYZE job_effects',
							transactional => false) AS jvac \gset
SELECT bgworker_demo.wait(:jvac);
SELECT status, result, last_error FROM bgworker_demo.jobs WHERE id = :jvac;
SELECT last_vacuum IS NOT NULL AS vacuumed, last_analyze IS NOT NULL AS analyzed
FROM pg_stat_user_tables WHERE relname = 'job_effects';
SELECT bgworker_demo.submit('BEGIN; SELECT 1; COMMIT', transactional => false) AS jtxn \gset
SELECT bgworker_demo.wait(:jtxn);
SELECT status, last_error FROM bgworker_demo.jobs WHERE id = :jtxn;

-- A SET in one job does not leak into the next job of the same role.
SELECT bgworker_demo.submit($$SET search_path = nowhere; SET application_name = 'leaked'$$) AS jset \gset
SELECT bgworker_demo.wait(:jset);
SELECT bgworker_demo.submit($$INSERT INTO public.job_effects (who, what) VALUES (current_user, current_setting('search_path'))$$) AS jget \gset
SELECT bgworker_demo.wait(:jget);
SELECT what FROM job_effects WHERE id = (SELECT max(id) FROM job_effects);

-- A role that cannot log in cannot have a worker: its jobs fail, clearly.
GRANT regress_nologin TO CURRENT_USER;
SET ROLE regress_nologin;
SELECT bgworker_demo.submit('SELECT 1') AS jnl \gset
SELECT bgworker_demo.wait(:jnl, '30 s');
SELECT status, sqlstate, last_error FROM bgworker_demo.jobs WHERE id = :jnl;
RESET ROLE;

-- Every job has finished but Bob's, which is due in an hour.
SELECT status, count(*) FROM bgworker_demo.jobs GROUP BY status ORDER BY status;
