# Copyright (c) 2026, bgworker_demo developers
#
# The job queue under load, crashes, shutdowns and signals: fairness
# between roles, exactly-once effects across SIGKILL and immediate
# shutdown, requeue on SIGTERM, poison jobs, backoff, non-transactional
# jobs, durability across restarts, dropped roles, and a full worker pool.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $node = PostgreSQL::Test::Cluster->new('jobs');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'bgworker_demo'
bgworker_demo.databases = 'postgres'
bgworker_demo.max_workers = 2
bgworker_demo.retry_backoff = '200ms'
bgworker_demo.idle_timeout = '5s'
bgworker_demo.monitor_interval = 0
bgworker_demo.log_jobs = errors
restart_after_crash = on
max_worker_processes = 16
});
$node->start;
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION bgworker_demo;
CREATE ROLE r1 LOGIN;
CREATE ROLE r2 LOGIN;
CREATE ROLE r3 LOGIN;
CREATE TABLE effects (marker text, who name DEFAULT current_user,
					  at timestamptz DEFAULT clock_timestamp());
GRANT INSERT, SELECT ON effects TO PUBLIC;
});

# Waits until every job matching the condition has finished.
sub wait_jobs
{
	my ($cond, $what) = @_;
	$node->poll_query_until('postgres',
		"SELECT count(*) = 0 FROM bgworker_demo.jobs WHERE ($cond) AND status IN ('queued', 'running')"
	) or die "jobs did not finish: $what";
}

# --- 1,000 jobs from three roles: all succeed, no role waits behind another

# All three roles' jobs are queued by one transaction, so that they compete
# from the start.
my $batch = "BEGIN;\n";
for my $r (1 .. 3)
{
	my $n = $r == 1 ? 334 : 333;
	$batch .= qq{SET ROLE r$r;
SELECT count(bgworker_demo.submit(format('INSERT INTO effects (marker) VALUES (%L)', 'load-r$r-' || i)))
FROM generate_series(1, $n) i;
RESET ROLE;
};
}
$node->safe_psql('postgres', $batch . "COMMIT;\n");
wait_jobs("command LIKE '%load-r%'", 'load');
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) || ' ' || count(*) FILTER (WHERE status = 'succeeded') FROM bgworker_demo.jobs WHERE command LIKE '%load-r%'"
	),
	'1000 1000',
	'1,000 jobs from three roles all succeed');
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) || ' ' || count(DISTINCT marker) FROM effects WHERE marker LIKE 'load-%'"
	),
	'1000 1000',
	'each job had its effect exactly once');
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) FROM effects WHERE marker LIKE 'load-r1-%' AND who <> 'r1'"),
	'0',
	'each job ran as the role that submitted it');

# With two worker slots and three roles, every role must get a turn before
# any role is done: each role's first start precedes every role's last end.
is( $node->safe_psql(
		'postgres', q{
WITH per_role AS (
	SELECT username, min(started_at) AS first_start, max(finished_at) AS last_end
	FROM bgworker_demo.jobs WHERE command LIKE '%load-r%' GROUP BY username)
SELECT bool_and(first_start < (SELECT min(last_end) FROM per_role)) FROM per_role
}),
	't',
	'no role waits behind another');
note(
	$node->safe_psql(
		'postgres', q{
SELECT string_agg(format('%s: first start +%s ms, last end +%s ms', username,
	round(extract(epoch FROM first_start - t0) * 1000),
	round(extract(epoch FROM last_end - t0) * 1000)), '; ')
FROM (SELECT username, min(started_at) AS first_start, max(finished_at) AS last_end,
			 (SELECT min(submitted_at) FROM bgworker_demo.jobs WHERE command LIKE '%load-r%') AS t0
	  FROM bgworker_demo.jobs WHERE command LIKE '%load-r%' GROUP BY username) s
}));

# --- SIGKILL of a worker mid-job: nothing lost, nothing applied twice ------

$node->safe_psql('postgres',
	q{SELECT count(bgworker_demo.submit(format($$INSERT INTO effects (marker) VALUES (%L); SELECT pg_sleep(0.1)$$, 'kill-' || i), max_attempts => 5))
	  FROM generate_series(1, 20) i});
$node->poll_query_until('postgres',
	"SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'bgworker_demo worker' AND wait_event = 'PgSleep'"
) or die 'no job in progress';
my $victim = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'bgworker_demo worker' AND wait_event = 'PgSleep' LIMIT 1"
);
kill 'KILL', $victim;
$node->wait_for_log(qr/all server processes terminated; reinitializing/);
wait_jobs("command LIKE '%kill-%'", 'after SIGKILL');
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) FILTER (WHERE status = 'succeeded') FROM bgworker_demo.jobs WHERE command LIKE '%kill-%'"
	),
	'20',
	'after a SIGKILL mid-job every job succeeds');
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) || ' ' || count(DISTINCT marker) FROM effects WHERE marker LIKE 'kill-%'"
	),
	'20 20',
	'after a SIGKILL mid-job every effect is there exactly once');
ok( $node->safe_psql(
		'postgres',
		"SELECT max(attempts) FROM bgworker_demo.jobs WHERE command LIKE '%kill-%'") >= 2,
	'the interrupted job was counted as an attempt');

# --- Immediate shutdown mid-job ---------------------------------------------

$node->safe_psql('postgres',
	q{SELECT count(bgworker_demo.submit(format($$INSERT INTO effects (marker) VALUES (%L); SELECT pg_sleep(0.1)$$, 'imm-' || i), max_attempts => 5))
	  FROM generate_series(1, 20) i});
$node->poll_query_until('postgres',
	"SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'bgworker_demo worker' AND wait_event = 'PgSleep'"
) or die 'no job in progress';
$node->stop('immediate');
$node->start;
wait_jobs("command LIKE '%imm-%'", 'after immediate shutdown');
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) FILTER (WHERE status = 'succeeded') FROM bgworker_demo.jobs WHERE command LIKE '%imm-%'"
	),
	'20',
	'after an immediate shutdown mid-job every job succeeds');
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) || ' ' || count(DISTINCT marker) FROM effects WHERE marker LIKE 'imm-%'"
	),
	'20 20',
	'after an immediate shutdown every effect is there exactly once');

# --- SIGTERM mid-job requeues it, without counting the attempt -------------

my $job = $node->safe_psql('postgres',
	q{SELECT bgworker_demo.submit($$SELECT pg_sleep(2); INSERT INTO effects (marker) VALUES ('term')$$)}
);
$node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'bgworker_demo worker' AND wait_event = 'PgSleep'"
) or die 'job did not start';
$victim = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'bgworker_demo worker' AND wait_event = 'PgSleep'"
);
kill 'TERM', $victim;
$node->wait_for_log(qr/bgworker_demo job $job by \S+ interrupted by SIGTERM, requeued/);
wait_jobs("id = $job", 'after SIGTERM');
is( $node->safe_psql(
		'postgres',
		"SELECT status || ' ' || attempts FROM bgworker_demo.jobs WHERE id = $job"),
	'succeeded 1',
	'a job interrupted by SIGTERM is requeued and runs again, one attempt counted');
is($node->safe_psql('postgres', "SELECT count(*) FROM effects WHERE marker = 'term'"),
	'1', 'its effect is there once');

# --- A poison job that crashes its worker fails after max_attempts -----------

$job = $node->safe_psql('postgres',
	q{SELECT bgworker_demo.submit($$COPY (SELECT 1) TO PROGRAM 'kill -9 $PPID'$$, max_attempts => 2)}
);
wait_jobs("id = $job", 'poison job');
is( $node->safe_psql(
		'postgres',
		"SELECT status || ' ' || attempts || ' ' || sqlstate FROM bgworker_demo.jobs WHERE id = $job"
	),
	'failed 2 57P02',
	'a job that crashes the server ends failed after max_attempts');
like(
	$node->safe_psql(
		'postgres', "SELECT last_error FROM bgworker_demo.jobs WHERE id = $job"),
	qr/exited during attempt 2 of 2 \(crash or immediate shutdown\)/,
	'with a message that says so');
is( scalar(() = slurp_file($node->logfile) =~ /was terminated by signal 9/g),
	3,
	'two crashes for the poison job (plus the one of the SIGKILL test): no crash loop');

# --- Retries back off ----------------------------------------------------------

$job = $node->safe_psql('postgres',
	"SELECT bgworker_demo.submit('SELECT 1/0', max_attempts => 3)");
wait_jobs("id = $job", 'retries');
my $span = $node->safe_psql('postgres',
	"SELECT extract(epoch FROM finished_at - submitted_at) FROM bgworker_demo.jobs WHERE id = $job"
);
cmp_ok($span, '>=', 0.6,
	'three attempts take at least retry_backoff * (1 + 2) = 600 ms');
is( $node->safe_psql(
		'postgres',
		"SELECT status || ' ' || attempts || ' ' || sqlstate FROM bgworker_demo.jobs WHERE id = $job"
	),
	'failed 3 22012',
	'and the job fails after the last one');

# --- Non-transactional jobs: CREATE INDEX CONCURRENTLY and VACUUM ------------

$job = $node->safe_psql('postgres',
	"SELECT bgworker_demo.submit('CREATE INDEX CONCURRENTLY effects_marker ON effects (marker); VACUUM effects', transactional => false)"
);
wait_jobs("id = $job", 'CREATE INDEX CONCURRENTLY');
is( $node->safe_psql(
		'postgres',
		"SELECT status || ' ' || result FROM bgworker_demo.jobs WHERE id = $job"),
	'succeeded VACUUM',
	'a non-transactional job runs CREATE INDEX CONCURRENTLY and VACUUM');
is( $node->safe_psql(
		'postgres',
		"SELECT indisvalid FROM pg_index WHERE indexrelid = 'effects_marker'::regclass"),
	't',
	'the index is valid');

# --- The queue survives a restart ----------------------------------------------

$node->safe_psql('postgres',
	q{SELECT count(bgworker_demo.submit(format($$INSERT INTO effects (marker) VALUES (%L)$$, 'later-' || i),
										run_at => now() + interval '2 s'))
	  FROM generate_series(1, 5) i});
$node->restart;
wait_jobs("command LIKE '%later-%'", 'after restart');
is($node->safe_psql('postgres', "SELECT count(*) FROM effects WHERE marker LIKE 'later-%'"),
	'5', 'jobs queued before a restart run after it');

# --- A role dropped while its jobs waited ----------------------------------------

$node->safe_psql('postgres', 'CREATE ROLE gone LOGIN');
$job = $node->safe_psql('postgres',
	"SET ROLE gone; SELECT bgworker_demo.submit('SELECT 1', run_at => now() + interval '1 s')"
);
$node->safe_psql('postgres', 'DROP ROLE gone');
wait_jobs("id = $job", 'dropped role');
like(
	$node->safe_psql(
		'postgres',
		"SELECT status || ': ' || last_error FROM bgworker_demo.jobs WHERE id = $job"),
	qr/^failed: role with OID \d+ does not exist$/,
	'the job of a dropped role fails with a clear message');
my $launchers = $node->safe_psql('postgres',
	"SELECT count(*) FROM bgworker_demo.workers() WHERE type = 'launcher'");
is($launchers, '1', 'and the launcher carries on');

# --- No free background worker slot: jobs wait, the log says so once --------

$node->stop;
$node->append_conf('postgresql.conf', 'max_worker_processes = 4');
$node->start;
# Logical replication launcher + our launcher + monitor + one more: take
# the last slot with a raw worker.
my $raw = $node->safe_psql('postgres',
	"SELECT bgworker_demo.launch_worker('SELECT pg_sleep(600)')");
my $offset = -s $node->logfile;
$job = $node->safe_psql('postgres', "SELECT bgworker_demo.submit('SELECT 42')");
$node->wait_for_log(
	qr/bgworker_demo could not start a job worker: no background worker slot is free/,
	$offset);
is($node->safe_psql('postgres', "SELECT status FROM bgworker_demo.jobs WHERE id = $job"),
	'queued', 'the job waits in the queue');
# Free the slot; the launcher retries and the job runs.
kill 'TERM', $raw;
wait_jobs("id = $job", 'after the slot was freed');
is($node->safe_psql('postgres', "SELECT status FROM bgworker_demo.jobs WHERE id = $job"),
	'succeeded', 'the job runs once a slot is free');
my $log = slurp_file($node->logfile, $offset);
is(scalar(() = $log =~ /could not start a job worker/g),
	1, 'the full pool was reported once, not at every retry');

# --- History is pruned after history_retention, by an otherwise idle launcher

$job = $node->safe_psql('postgres', "SELECT bgworker_demo.submit('SELECT 43')");
wait_jobs("id = $job", 'last job');
$node->safe_psql('postgres',
	"ALTER SYSTEM SET bgworker_demo.history_retention = '2s'; SELECT pg_reload_conf()");
$node->poll_query_until('postgres',
	"SELECT count(*) = 0 FROM bgworker_demo.jobs WHERE finished_at IS NOT NULL")
  or die 'history was not pruned';
pass('finished jobs are deleted after history_retention');
# The youngest job was not yet 2 s old at the reload: only a launcher that
# woke for it (nothing else happens now) could have deleted it.
is($node->safe_psql('postgres', "SELECT count(*) FROM bgworker_demo.jobs WHERE id = $job"),
	'0', 'the launcher woke to prune the last one');

# --- bgworker_demo.enabled = off pauses the queue; on resumes it -----------

$offset = -s $node->logfile;
$node->safe_psql('postgres',
	"ALTER SYSTEM SET bgworker_demo.enabled = off; SELECT pg_reload_conf()");
$node->wait_for_log(qr/bgworker_demo is paused in database "postgres"/, $offset);
$job = $node->safe_psql('postgres', "SELECT bgworker_demo.submit('SELECT 44')");
is($node->safe_psql('postgres', "SELECT bgworker_demo.wait($job, '1 s')"),
	'queued', 'while paused, a job stays queued');
$node->safe_psql('postgres',
	"ALTER SYSTEM RESET bgworker_demo.enabled; SELECT pg_reload_conf()");
wait_jobs("id = $job", 'after resume');
is($node->safe_psql('postgres', "SELECT status FROM bgworker_demo.jobs WHERE id = $job"),
	'succeeded', 'after resuming, it runs');

$node->stop;
done_testing();
