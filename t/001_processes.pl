# Copyright (c) 2026, bgworker_demo developers
#
# The static workers and their life cycle: start times, backend types,
# reload, SIGTERM and restart, crash restart, bad configuration, the
# standby reporter on a streaming standby, fast shutdown and postmaster
# death.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);

my $node = PostgreSQL::Test::Cluster->new('primary');
$node->init(allows_streaming => 1);
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'bgworker_demo'
bgworker_demo.databases = 'postgres, nosuchdb, noconn'
bgworker_demo.restart_interval = 1
bgworker_demo.monitor_interval = 0
bgworker_demo.standby_interval = 1
bgworker_demo.log_jobs = all
restart_after_crash = on
max_worker_processes = 16
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION bgworker_demo');

# --- Start times and backend types -------------------------------------

# The monitor starts with the postmaster and has no database.
ok($node->log_contains('bgworker_demo monitor started \(no database connection\)'),
	'monitor started at postmaster start');
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) FROM bgworker_demo.workers() WHERE type = 'monitor' AND database IS NULL"
	),
	'1',
	'monitor is in workers() without a database');

# The launcher (recovery finished) is a backend of its own type.
$node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'bgworker_demo launcher' AND datname = 'postgres'"
) or die 'launcher did not appear in pg_stat_activity';
pass('launcher appears in pg_stat_activity');

# The standby reporter (consistent state) knows it is on a primary.
$node->wait_for_log(
	qr/bgworker_demo standby reporter: this server is not a standby; idle until shutdown/);
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'bgworker_demo standby'"
	),
	'1',
	'standby reporter appears in pg_stat_activity');

# A job worker is started on demand, with its own backend type.
$node->safe_psql('postgres',
	"SELECT bgworker_demo.submit('SELECT pg_sleep(0.5)')");
$node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'bgworker_demo worker'"
) or die 'no job worker';
pass('job worker appears in pg_stat_activity');

# --- Bad configuration ---------------------------------------------------

# A database that does not exist: a clear line with a hint, and the rest
# carries on.
$node->wait_for_log(qr/FATAL:  database "nosuchdb" does not exist/);
ok( $node->log_contains(
		'HINT:  Create the database, allow connections to it, or remove it from bgworker_demo.databases'
	),
	'unknown database: the failure has a hint');
ok($node->log_contains('CONTEXT:  bgworker_demo launcher for database "nosuchdb"'),
	'unknown database: the line says which launcher');

# A database that does not allow connections.
$node->safe_psql('postgres',
	'CREATE DATABASE noconn; ALTER DATABASE noconn ALLOW_CONNECTIONS false');
$node->wait_for_log(
	qr/FATAL:  database "noconn" is not currently accepting connections/);
pass('database that refuses connections is reported');

# --- SIGHUP: an interval changes without a restart ------------------------

my $monitor_pid = $node->safe_psql('postgres',
	"SELECT pid FROM bgworker_demo.workers() WHERE type = 'monitor'");
my $offset = -s $node->logfile;
$node->safe_psql('postgres',
	"ALTER SYSTEM SET bgworker_demo.monitor_interval = '1s'; SELECT pg_reload_conf()"
);
# The monitor is sleeping with no timeout (interval 0): the reload wakes it.
$node->wait_for_log(qr/bgworker_demo monitor: launchers \d\/3/, $offset);
is( $node->safe_psql(
		'postgres',
		"SELECT pid FROM bgworker_demo.workers() WHERE type = 'monitor'"),
	$monitor_pid,
	'monitor took the new interval without a restart');
$node->safe_psql('postgres',
	"ALTER SYSTEM RESET bgworker_demo.monitor_interval; SELECT pg_reload_conf()");

# --- SIGTERM: the launcher exits with 1 and comes back --------------------

my $launcher_pid = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'bgworker_demo launcher'");
$offset = -s $node->logfile;
kill 'TERM', $launcher_pid;
$node->wait_for_log(
	qr/background worker "bgworker_demo launcher" \(PID $launcher_pid\) exited with exit code 1/,
	$offset);
pass('launcher exits with exit code 1 on SIGTERM');
$node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'bgworker_demo launcher' AND pid <> $launcher_pid"
) or die 'launcher did not come back';
pass('launcher restarted after restart_interval');
# And it works: a job runs.
my $job = $node->safe_psql('postgres', "SELECT bgworker_demo.submit('SELECT 1')");
is($node->safe_psql('postgres', "SELECT bgworker_demo.wait($job)"),
	'succeeded', 'the restarted launcher runs jobs');

# --- The standby reporter on a streaming standby ---------------------------

$node->backup('backup1');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($node, 'backup1', has_streaming => 1);
$standby->start;
$standby->wait_for_log(
	qr/bgworker_demo standby: replayed up to [0-9A-F]+\/[0-9A-F]+, replay lag/);
pass('standby reporter logs the replay lag on a hot standby');
ok($standby->log_contains('bgworker_demo standby reporter started in database "postgres" \(in recovery\)'),
	'standby reporter started during recovery');
is( $standby->safe_psql(
		'postgres',
		"SELECT string_agg(type, ',' ORDER BY type) FROM bgworker_demo.workers()"),
	'monitor,standby',
	'no launcher on a standby: it starts when recovery finishes');
$standby->stop('fast');

# --- A crash: SIGKILL of a worker restarts everything ----------------------

$node->safe_psql('postgres',
	"SELECT bgworker_demo.submit('SELECT pg_sleep(30)', max_attempts => 3)");
$node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'bgworker_demo worker' AND wait_event = 'PgSleep'"
) or die 'sleeping job did not start';
my $worker_pid = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'bgworker_demo worker'");
$launcher_pid = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'bgworker_demo launcher'");
$offset = -s $node->logfile;
kill 'KILL', $worker_pid;
$node->wait_for_log(qr/all server processes terminated; reinitializing/, $offset);
$node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'bgworker_demo launcher' AND pid <> $launcher_pid"
) or die 'launcher did not come back after the crash';
pass('launcher is back after a crash restart');
$node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM bgworker_demo.workers() WHERE type = 'monitor'")
  or die 'monitor did not come back';
pass('monitor is back after a crash restart');
# The interrupted job went back to the queue and runs again.
$node->poll_query_until('postgres',
	"SELECT status = 'running' AND attempts = 2 FROM bgworker_demo.jobs WHERE command = 'SELECT pg_sleep(30)'"
) or die 'the interrupted job did not run again';
pass('the job interrupted by the crash runs again, its attempt counted');

# --- Fast shutdown with a busy worker ----------------------------------------

my $start = time();
$node->stop('fast');
my $elapsed = time() - $start;
note(sprintf('pg_ctl stop -m fast with a busy worker took %.2f s', $elapsed));
ok($node->log_contains('bgworker_demo job \d+ by \S+ interrupted by SIGTERM, requeued'),
	'fast shutdown interrupts the running job and requeues it');
$node->start;
$node->poll_query_until('postgres',
	"SELECT status || ' ' || attempts FROM bgworker_demo.jobs WHERE command = 'SELECT pg_sleep(30)'",
	'running 2')
  or die 'the requeued job did not run again';
pass('after restart the requeued job runs again, without a new attempt counted');

# --- Postmaster death: every module process exits --------------------------

$node->poll_query_until('postgres',
	"SELECT count(*) >= 3 FROM bgworker_demo.workers() WHERE pid IS NOT NULL")
  or die 'processes did not start';
my @pids = split /\n/,
  $node->safe_psql('postgres',
	"SELECT pid FROM bgworker_demo.workers() WHERE pid IS NOT NULL");
note('module processes: ' . join(' ', @pids));
$node->kill9;
$start = time();
my $deadline = $start + $PostgreSQL::Test::Utils::timeout_default;
# A process that has exited but not been reaped yet (its parent died) is a
# zombie: count it as gone.
sub running
{
	my ($pid) = @_;
	open(my $fh, '<', "/proc/$pid/stat") or return 0;
	my $stat = <$fh>;
	close($fh);
	return ($stat =~ /^\d+ \(.*\) ([A-Z])/ && $1 ne 'Z' && $1 ne 'X') ? 1 : 0;
}
my @alive;
do
{
	@alive = grep { running($_) } @pids;
	usleep(5_000) if @alive;
} while (@alive && time() < $deadline);
is(scalar(@alive), 0, 'every module process exits when the postmaster dies');
note(sprintf('they were gone %.3f s after the SIGKILL', time() - $start));

# --- Too many launchers for max_worker_processes ----------------------------

my $small = PostgreSQL::Test::Cluster->new('small');
$small->init;
$small->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'bgworker_demo'
bgworker_demo.databases = 'postgres, template1, a, b'
max_worker_processes = 2
});
$small->start;
ok($small->log_contains('too many background workers'),
	'registering more workers than max_worker_processes is reported');
ok($small->log_contains('HINT:  Consider increasing the configuration parameter "max_worker_processes"'),
	'with a hint');
is($small->safe_psql('postgres', 'SELECT 1'),
	'1', 'and the server runs regardless');
$small->stop;

done_testing();
