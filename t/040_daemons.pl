# Copyright (c) 2026, bgworker_demo developers
#
# Supervised daemons: a counter advances; a transient daemon that errors
# every third step is restarted and resumes from its last committed state;
# a temporary one is not restarted; a crash loop hits the restart
# intensity; messages are consumed exactly once and in order across a
# SIGKILL (crash restart of the cluster); stop() is prompt; daemons come
# back after a server restart without counting it as a restart.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $node = PostgreSQL::Test::Cluster->new('daemons');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'bgworker_demo'
bgworker_demo.databases = 'postgres'
bgworker_demo.monitor_interval = 0
bgworker_demo.restart_interval = 1
bgworker_demo.max_restarts = 5
bgworker_demo.max_seconds = 60
restart_after_crash = on
max_worker_processes = 16
});
$node->start;
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION bgworker_demo;
CREATE TABLE consumed (seq bigserial PRIMARY KEY, daemon text, item int);
CREATE SEQUENCE calls;

CREATE FUNCTION counter(state jsonb, message jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT jsonb_build_object('n', (state->>'n')::int + 1) $$;

-- Fails every third call (the first three times: three restarts stay
-- within max_restarts); a committed step appends its n to consumed.
CREATE FUNCTION flaky(state jsonb, message jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
	n int := (state->>'n')::int + 1;
	c int8 := nextval('calls');
BEGIN
	INSERT INTO consumed (daemon, item) VALUES ('flaky', n);
	IF c % 3 = 0 AND c <= 9 THEN
		RAISE EXCEPTION 'flaky call fails';
	END IF;
	RETURN jsonb_build_object('n', n);
END
$$;

CREATE FUNCTION boom(state jsonb, message jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'boom'; END $$;

-- Takes its time over each message and appends it to consumed.
CREATE FUNCTION consumer(state jsonb, message jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
	IF message IS NULL THEN
		RETURN state;
	END IF;
	PERFORM pg_sleep(0.05);
	INSERT INTO consumed (daemon, item) VALUES ('consumer', (message->>'i')::int);
	RETURN jsonb_build_object('n', (state->>'n')::int + 1);
END
$$;
});

# One column of a daemon's row.
sub daemon_field
{
	my ($name, $expr) = @_;
	return $node->safe_psql('postgres',
		"SELECT $expr FROM bgworker_demo.daemons WHERE name = '$name'");
}

# Waits until the condition holds for the daemon's row.
sub wait_daemon
{
	my ($name, $cond, $what) = @_;
	$node->poll_query_until('postgres',
		"SELECT $cond FROM bgworker_demo.daemons WHERE name = '$name'")
	  or die "timed out waiting for daemon $name: $what";
}

# --- a counter advances ------------------------------------------------------

$node->safe_psql('postgres',
	q{SELECT bgworker_demo.spawn('counter', 'counter(jsonb,jsonb)', '{"n": 0}', 'permanent', '10 ms')}
);
wait_daemon('counter', q{(state->>'n')::int >= 20}, 'counting');
is(daemon_field('counter', 'status'), 'running', 'counter is running');
is( $node->safe_psql(
		'postgres',
		q{SELECT count(*) FROM bgworker_demo.workers() w
		  JOIN bgworker_demo.daemons d ON w.type = 'daemon' AND w.job_id = d.id
		  WHERE d.name = 'counter' AND w.pid = d.pid}),
	'1',
	'counter has its process in workers()');

# --- transient: errors are restarted, the state resumes ------------------------

$node->safe_psql('postgres',
	q{SELECT bgworker_demo.spawn('flaky', 'flaky(jsonb,jsonb)', '{"n": 0}', 'transient', '10 ms')}
);
wait_daemon('flaky', q{(state->>'n')::int >= 9}, 'flaky steps');
is(daemon_field('flaky', q{status || ' ' || restarts}),
	'running 3', 'flaky was restarted after each of its three errors');

# The committed steps appended 1..n exactly once each: failed steps left
# nothing, and each restart went on from the last committed n.
is( $node->safe_psql(
		'postgres', q{
SELECT count(*) = (d.state->>'n')::int
	AND array_agg(c.item ORDER BY c.seq) = ARRAY(SELECT generate_series(1, (d.state->>'n')::int))
FROM bgworker_demo.daemons d, consumed c
WHERE d.name = 'flaky' AND c.daemon = 'flaky'
GROUP BY d.state}),
	't',
	'flaky resumed from its last committed state after each error');
like(daemon_field('flaky', 'last_error'),
	qr/^P0001: flaky call fails$/, 'flaky records its last error');
ok($node->log_contains(qr/bgworker_demo daemon "flaky" of role \w+ restarts in \d+ ms after an error/),
	'restarts are logged');
$node->safe_psql('postgres', q{SELECT bgworker_demo.stop('flaky')});
wait_daemon('flaky', q{status = 'stopped'}, 'flaky stopped');

# --- temporary: an error is the end -------------------------------------------

$node->safe_psql('postgres',
	q{SELECT bgworker_demo.spawn('temp', 'boom(jsonb,jsonb)', '{}', 'temporary', '10 ms')}
);
wait_daemon('temp', q{status IN ('failed', 'finished')}, 'temp ended');
is( daemon_field('temp', q{status || ' ' || restarts || ' ' || last_error}),
	'failed 0 P0001: boom',
	'temporary daemon failed without a restart');
$node->wait_for_log(
	qr/bgworker_demo daemon "temp" of role \w+ failed and is not restarted \(restart is temporary\)/
);
pass('the failure of a temporary daemon is logged');

# --- restart intensity: a crash loop ends failed --------------------------------

my $start = time;
$node->safe_psql('postgres',
	q{SELECT bgworker_demo.spawn('looper', 'boom(jsonb,jsonb)', '{}', 'permanent', '10 ms')}
);
wait_daemon('looper', q{status = 'failed'}, 'looper gave up');
my $elapsed = time - $start;
is(daemon_field('looper', 'restarts'),
	'5', 'looper restarted max_restarts times, then failed');
# Back-offs 0.1 + 0.2 + 0.4 + 0.8 + 1.6 s: well within max_seconds.
cmp_ok($elapsed, '<', 30, "looper failed within the bound ($elapsed s)");
$node->wait_for_log(
	qr/bgworker_demo daemon "looper" of role \w+ failed: it would restart more than 5 times within 60 s/
);
ok($node->log_contains(qr/DETAIL:  Last error: P0001: boom/),
	'the last error is logged with it');
pass('giving up is logged with name, owner and last error');

# --- messages: exactly once, in order, across a SIGKILL --------------------------

$node->safe_psql('postgres',
	q{SELECT bgworker_demo.spawn('consumer', 'consumer(jsonb,jsonb)', '{"n": 0}', 'permanent', '1 hour')}
);
wait_daemon('consumer', q{status = 'running'}, 'consumer started');

# Each send() commits on its own; the daemon sleeps an hour between steps,
# so only the latch set by send() wakes it.
$node->safe_psql('postgres',
	join('', map { "SELECT bgworker_demo.send('consumer', '{\"i\": $_}');\n" } 1 .. 30));
$node->poll_query_until('postgres',
	q{SELECT count(*) >= 5 FROM consumed WHERE daemon = 'consumer'})
  or die 'consumer did not consume';

my $victim = daemon_field('consumer', 'pid');
my $log_offset = -s $node->logfile;
kill 'KILL', $victim;
$node->wait_for_log(qr/all server processes terminated; reinitializing/,
	$log_offset);
pass("SIGKILL of daemon process $victim made the cluster restart");

wait_daemon('consumer', qq{status = 'running' AND pid <> $victim},
	'consumer back after the crash');
$node->safe_psql('postgres',
	join('', map { "SELECT bgworker_demo.send('consumer', '{\"i\": $_}');\n" } 31 .. 40));
$node->poll_query_until('postgres',
	q{SELECT count(*) = 0 FROM bgworker_demo.messages})
  or die 'messages were not all consumed';

is( $node->safe_psql(
		'postgres', q{
SELECT count(*) || ' ' || count(DISTINCT item) || ' '
	|| (array_agg(item ORDER BY seq) = ARRAY(SELECT generate_series(1, 40)))
FROM consumed WHERE daemon = 'consumer'}),
	'40 40 true',
	'40 messages consumed exactly once each, in order');
is(daemon_field('consumer', q{(state->>'n') || ' ' || restarts || ' ' || last_exit}),
	'40 1 crash', 'state counts 40 steps; the crash was one restart');

# --- stop() is prompt ----------------------------------------------------------

my $consumer_id = daemon_field('consumer', 'id');
$start = time;
is($node->safe_psql('postgres', q{SELECT bgworker_demo.stop('consumer')}),
	't', 'stop() of a running daemon returns true');
$node->poll_query_until('postgres',
	qq{SELECT status = 'stopped'
	   AND NOT EXISTS (SELECT 1 FROM bgworker_demo.workers() WHERE type = 'daemon' AND job_id = $consumer_id)
	   FROM bgworker_demo.daemons WHERE name = 'consumer'})
  or die 'consumer did not stop';
$elapsed = time - $start;
cmp_ok($elapsed, '<', 10,
	"a daemon sleeping for an hour stopped in $elapsed s");
is($node->safe_psql('postgres', q{SELECT bgworker_demo.stop('consumer')}),
	'f', 'stop() of a stopped daemon returns false');

# --- server restart: daemons come back, not counted --------------------------------

$node->safe_psql('postgres',
	q{SELECT bgworker_demo.spawn('trans', 'counter(jsonb,jsonb)', '{"n": 0}', 'transient', '10 ms'),
	         bgworker_demo.spawn('tmp', 'counter(jsonb,jsonb)', '{"n": 0}', 'temporary', '10 ms')}
);
wait_daemon('trans', q{(state->>'n')::int > 0}, 'trans running');
wait_daemon('tmp', q{(state->>'n')::int > 0}, 'tmp running');

my $before = daemon_field('counter', q{restarts});
$node->restart;
my $n_after_stop = daemon_field('counter', q{(state->>'n')::int});
is(daemon_field('counter', 'last_exit'),
	'shutdown', 'the shutdown was recorded as such');
wait_daemon('counter', qq{status = 'running' AND (state->>'n')::int > $n_after_stop},
	'counter back after the restart');
pass('the permanent daemon came back and went on from its state');
is(daemon_field('counter', 'restarts'),
	$before, 'the server restart did not count as a restart');
wait_daemon('trans', q{status = 'running' AND restarts = 0},
	'trans back after the restart');
pass('the transient daemon came back too');
is(daemon_field('tmp', q{status || ' ' || restarts || ' ' || last_exit}),
	'stopped 0 shutdown', 'the temporary daemon did not come back');
is( $node->safe_psql(
		'postgres',
		q{SELECT string_agg(name || ' ' || status, ', ' ORDER BY name)
		  FROM bgworker_demo.daemons WHERE name IN ('consumer', 'flaky', 'looper', 'temp')}),
	'consumer stopped, flaky stopped, looper failed, temp failed',
	'ended daemons stay ended');
ok($node->log_contains(qr/bgworker_demo daemon "counter" of role \w+ interrupted by SIGTERM; it will be started again/),
	'the shutdown is logged');

$node->stop;
done_testing();
