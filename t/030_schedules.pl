# Copyright (c) 2026, bgworker_demo developers
#
# Clock-driven schedules on a live server: the rate of a sub-second
# schedule and its lag, run_now(), the overlap rule, an edit that wakes a
# sleeping launcher, the launcher's sleep for a far deadline (its timeout
# must not overflow an int), a schedule locked by an open edit (no busy
# loop), schedules across a restart, a single catch-up run after downtime,
# and no runs on a hot standby but runs after its promotion.
#
# Every wait has a deadline (poll_query_until, or poll_within below); no
# assertion relies on having slept long enough.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $node = PostgreSQL::Test::Cluster->new('primary');
$node->init(allows_streaming => 1);

# idle_timeout is long so that no worker exits while a test runs: an exiting
# worker wakes the launcher, which would hide a missing wake-up.
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'bgworker_demo'
bgworker_demo.databases = 'postgres'
bgworker_demo.log_jobs = 'all'
bgworker_demo.idle_timeout = '1h'
bgworker_demo.monitor_interval = 0
max_worker_processes = 16
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION bgworker_demo');

# Runs a query on a node and returns its output.
sub query
{
	my ($n, $sql) = @_;
	return $n->safe_psql('postgres', $sql);
}

# Waits until this database's launcher is there.
sub wait_launcher
{
	my ($n) = @_;
	$n->poll_query_until('postgres',
		"SELECT count(*) > 0 FROM bgworker_demo.workers() WHERE type = 'launcher' AND database = current_database()"
	) or die 'the launcher did not start';
}

# Polls a query until it returns 't', for at most $secs seconds; returns
# whether it did.  For waits that must end sooner than poll_query_until's
# default timeout for the feature to count as working.
sub poll_within
{
	my ($n, $sql, $secs) = @_;
	my $deadline = time() + $secs;
	while (time() < $deadline)
	{
		return 1 if query($n, $sql) eq 't';
		usleep(50_000);
	}
	return 0;
}

# Waits until no job of the schedule is queued or running.
sub wait_schedule_jobs
{
	my ($n, $id, $what) = @_;
	$n->poll_query_until('postgres',
		"SELECT count(*) = 0 FROM bgworker_demo.jobs WHERE schedule_id = $id AND status IN ('queued', 'running')"
	) or die "jobs of schedule $id did not finish: $what";
}

wait_launcher($node);

# --- A 200 ms schedule runs five times a second, with little lag ----------

my $rate = query($node,
	"SELECT bgworker_demo.schedule('rate', '200 milliseconds', 'SELECT 1')");
$node->poll_query_until('postgres',
	"SELECT runs >= 2 FROM bgworker_demo.schedules WHERE id = $rate")
  or die 'the 200 ms schedule does not run';
# A window of 3 s from now, on the server's clock; runs are queued in
# order of their due time, so once a run due after the window is queued,
# all runs due in it are.
my $t0 = query($node, 'SELECT clock_timestamp()');
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) > 0 FROM bgworker_demo.jobs WHERE schedule_id = $rate AND run_at >= '$t0'::timestamptz + interval '3 s'"
	),
	'the 200 ms schedule keeps running');
query($node, "SELECT bgworker_demo.unschedule('rate')");
wait_schedule_jobs($node, $rate, 'rate');
my $in_window =
  "schedule_id = $rate AND run_at >= '$t0' AND run_at < '$t0'::timestamptz + interval '3 s'";
my $n_window = query($node, "SELECT count(*) FROM bgworker_demo.jobs WHERE $in_window");
ok($n_window >= 10 && $n_window <= 20,
	"about 15 runs due in 3 s of a 200 ms schedule (got $n_window)");
is( query($node,
		"SELECT bool_and(status = 'succeeded') FROM bgworker_demo.jobs WHERE schedule_id = $rate"),
	't',
	'all runs of the 200 ms schedule succeeded');
is( query($node,
		"SELECT bool_and(started_at >= run_at) AND max(started_at - run_at) < interval '1 s' FROM bgworker_demo.jobs WHERE $in_window"
	),
	't',
	'every run starts at or after its due time, less than 1 s late');
note(
	query($node,
		"SELECT format('lag ms: avg %s, max %s', round(avg(extract(epoch FROM started_at - run_at)) * 1000, 1), round(max(extract(epoch FROM started_at - run_at)) * 1000, 1)) FROM bgworker_demo.jobs WHERE $in_window"
	));

# --- run_now() queues a run at once ----------------------------------------

my $manual =
  query($node, "SELECT bgworker_demo.schedule('manual', '0 0 1 1 *', 'SELECT 2')");
my ($job, $queued) = split /\|/, query(
	$node, q{
SELECT bgworker_demo.run_now('manual') AS job \gset
SELECT :job, count(*) FROM bgworker_demo.jobs
WHERE id = :job AND run_at <= clock_timestamp() AND username = current_user::regrole
}
);
is($queued, '1', 'run_now() queues a run due now');
is(query($node, "SELECT bgworker_demo.wait($job, '30 s')"),
	'succeeded', 'the run_now() job succeeds');
is( query($node,
		"SELECT runs || ' ' || (last_job_id = $job) FROM bgworker_demo.schedules WHERE id = $manual"
	),
	'1 true',
	'run_now() counts in runs');
query($node, "SELECT bgworker_demo.unschedule('manual')");

# --- Overlap: a run still going makes the next due times be skipped --------

my $slow = query($node,
	"SELECT bgworker_demo.schedule('slow', '100 milliseconds', 'SELECT pg_sleep(1)')"
);
ok( $node->poll_query_until(
		'postgres', "SELECT skipped > 0 FROM bgworker_demo.schedules WHERE id = $slow"),
	'a due time is skipped while the run is going');
my $skipped1 =
  query($node, "SELECT skipped FROM bgworker_demo.schedules WHERE id = $slow");
ok( $node->poll_query_until(
		'postgres',
		"SELECT skipped >= $skipped1 + 5 AND runs >= 2 FROM bgworker_demo.schedules WHERE id = $slow"
	),
	'skipped keeps growing, and runs go on');
query($node, "SELECT bgworker_demo.unschedule('slow')");
wait_schedule_jobs($node, $slow, 'slow');
is( query($node, qq{
SELECT count(*) FROM bgworker_demo.jobs a JOIN bgworker_demo.jobs b
  ON a.schedule_id = b.schedule_id AND a.id < b.id
WHERE a.schedule_id = $slow
  AND tstzrange(a.started_at, a.finished_at) && tstzrange(b.started_at, b.finished_at)
}),
	'0',
	'no two runs of a schedule without overlap ran at the same time');
is( query($node,
		"SELECT bool_and(status = 'succeeded') FROM bgworker_demo.jobs WHERE schedule_id = $slow"),
	't',
	'all runs of the slow schedule succeeded');

# --- An edit takes effect at once, even while the launcher sleeps ----------

my $yearly =
  query($node, "SELECT bgworker_demo.schedule('yearly', '0 0 1 1 *', 'SELECT 3')");
# Nothing else is scheduled or queued: the launcher sleeps until next year.
$node->poll_query_until('postgres', q{
SELECT (SELECT count(*) FROM bgworker_demo.jobs WHERE status IN ('queued', 'running')) = 0
   AND (SELECT wait_event FROM pg_stat_activity
		WHERE backend_type = 'bgworker_demo launcher') = 'Extension'
}) or die 'the launcher did not go to sleep';
is(query($node, "SELECT runs FROM bgworker_demo.schedules WHERE id = $yearly"),
	'0', 'the yearly schedule has not run');
query($node,
	"SELECT bgworker_demo.alter_schedule('yearly', spec => '100 milliseconds')");
ok( poll_within(
		$node,
		"SELECT runs >= 2 FROM bgworker_demo.schedules WHERE id = $yearly", 10),
	'the edited schedule runs within seconds: the edit woke the launcher');
query($node, "SELECT bgworker_demo.unschedule('yearly')");
wait_schedule_jobs($node, $yearly, 'yearly');

# --- A far deadline: the launcher's sleep stays a valid timeout -----------

# WaitLatch takes at most INT_MAX ms (about 24.8 days); a schedule due in
# 30 days must give a shorter sleep (and a new look then), not an
# overflowed timeout, which epoll_wait reads as "forever" when negative.
# Seen through /proc/<pid>/syscall where it exists (Linux x86_64:
# epoll_wait is 232, epoll_pwait 281; the timeout is the fourth argument).
my $far =
  query($node, "SELECT bgworker_demo.schedule('far', '30 days', 'SELECT 0')");
$node->poll_query_until('postgres', q{
SELECT (SELECT count(*) FROM bgworker_demo.jobs WHERE status IN ('queued', 'running')) = 0
   AND (SELECT wait_event FROM pg_stat_activity
		WHERE backend_type = 'bgworker_demo launcher') = 'Extension'
}) or die 'the launcher did not go to sleep';
my $launcher_pid = query($node,
	"SELECT pid FROM bgworker_demo.workers() WHERE type = 'launcher' AND database = current_database()"
);
my @syscall;
if (open my $fh, '<', "/proc/$launcher_pid/syscall")
{
	@syscall = split ' ', (<$fh> // '');
	close $fh;
}
SKIP:
{
	skip "cannot see the launcher's system call here", 1
	  unless @syscall >= 5 && ($syscall[0] eq '232' || $syscall[0] eq '281');
	my $timeout = unpack('l', pack('L', hex($syscall[4]) & 0xffffffff));
	ok($timeout > 0,
		"the launcher sleeps with a valid timeout for a deadline in 30 days (epoll_wait timeout $timeout ms)"
	);
}
query($node, "SELECT bgworker_demo.unschedule('far')");

# --- A due schedule locked by an open edit is left alone, without spinning -

# The launcher skips a due schedule whose row another session holds (an
# edit or a run_now() not yet committed); it must look again later rather
# than at once in a loop.  Its CPU time is read from /proc/<pid>/stat.
my $locked = query($node,
	"SELECT bgworker_demo.schedule('locked', '100 milliseconds', 'SELECT 7')");
$node->poll_query_until('postgres',
	"SELECT runs >= 1 FROM bgworker_demo.schedules WHERE id = $locked")
  or die 'the locked schedule does not run';
my $editor = $node->background_psql('postgres');
$editor->query_safe('BEGIN');
$editor->query_safe(
	"SELECT bgworker_demo.alter_schedule('locked', command => 'SELECT 8')");
my $runs_locked =
  query($node, "SELECT runs FROM bgworker_demo.schedules WHERE id = $locked");

# CPU time (user + system) of a process in clock ticks, or undef.
sub cpu_ticks
{
	my ($pid) = @_;
	open my $fh, '<', "/proc/$pid/stat" or return undef;
	my $line = <$fh>;
	close $fh;
	$line =~ s/^.*\)\s+//s;    # the command name may contain blanks
	my @f = split ' ', $line;
	return $f[11] + $f[12];
}
my $ticks0 = cpu_ticks($launcher_pid);
# A window of 2 s during which the row stays locked.
my $window_end = time() + 2;
usleep(50_000) while time() < $window_end;
my $ticks1 = cpu_ticks($launcher_pid);
SKIP:
{
	skip 'no /proc/<pid>/stat here', 1 unless defined $ticks0 && defined $ticks1;
	my $used = $ticks1 - $ticks0;
	ok($used < 50,
		"the launcher does not spin while a due schedule is locked ($used ticks in 2 s)"
	);
}
is(query($node, "SELECT runs FROM bgworker_demo.schedules WHERE id = $locked"),
	$runs_locked, 'a locked schedule is not run meanwhile');
$editor->query_safe('COMMIT');
$editor->quit;
ok( poll_within(
		$node,
		"SELECT count(*) > 0 FROM bgworker_demo.jobs WHERE schedule_id = $locked AND command = 'SELECT 8'",
		10),
	'once the edit commits, the schedule runs with the new command');
query($node, "SELECT bgworker_demo.unschedule('locked')");
wait_schedule_jobs($node, $locked, 'locked');

# --- Schedules survive a restart -------------------------------------------

my $durable = query($node,
	"SELECT bgworker_demo.schedule('durable', '200 milliseconds', 'SELECT 4')");
$node->poll_query_until('postgres',
	"SELECT runs >= 1 FROM bgworker_demo.schedules WHERE id = $durable")
  or die 'the durable schedule does not run';
$node->restart;
wait_launcher($node);
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) >= 3 FROM bgworker_demo.jobs WHERE schedule_id = $durable AND submitted_at > pg_postmaster_start_time() AND status = 'succeeded'"
	),
	'a schedule defined before a restart runs after it');
query($node, "SELECT bgworker_demo.unschedule('durable')");
wait_schedule_jobs($node, $durable, 'durable');

# --- One catch-up run after downtime ---------------------------------------

my $catchup = query($node,
	"SELECT bgworker_demo.schedule('catchup', '1 second', 'SELECT 5')");
$node->poll_query_until('postgres',
	"SELECT runs >= 2 FROM bgworker_demo.schedules WHERE id = $catchup")
  or die 'the 1 s schedule does not run';
$node->stop;
# Three or four due times pass while the server is down.  Nothing races
# here: the wait only makes the downtime long enough.
my $down_until = time() + 3.5;
usleep(100_000) while time() < $down_until;
$node->start;
wait_launcher($node);
# Runs due after the restart are queued only after the catch-up round.
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) >= 2 FROM bgworker_demo.jobs WHERE schedule_id = $catchup AND run_at > pg_postmaster_start_time()"
	),
	'the 1 s schedule runs again after the downtime');
query($node, "SELECT bgworker_demo.unschedule('catchup')");
wait_schedule_jobs($node, $catchup, 'catchup');
# The runs due during the downtime: after the last one queued before the
# stop, and before the start.
my ($n_catchup, $last_pending) = split /\|/, query(
	$node, qq{
WITH before AS (
	SELECT * FROM bgworker_demo.jobs
	WHERE schedule_id = $catchup AND submitted_at < pg_postmaster_start_time()
	ORDER BY run_at DESC LIMIT 1)
SELECT (SELECT count(*) FROM bgworker_demo.jobs j, before b
		WHERE j.schedule_id = $catchup AND j.run_at > b.run_at
		  AND j.run_at < pg_postmaster_start_time()),
	   (SELECT started_at > pg_postmaster_start_time() FROM before)
});
ok($n_catchup <= 1, "at most one run for the downtime (got $n_catchup)");
# Unless the last run before the stop was still waiting then (the overlap
# rule then skips the catch-up), exactly one catch-up run was queued.
is($n_catchup, $last_pending eq 't' ? 0 : 1,
	'one catch-up run for the missed due times');

# --- No runs on a hot standby; runs after promotion ------------------------

$node->backup('bk');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($node, 'bk', has_streaming => 1);
$standby->start;
my $promoted = query($node,
	"SELECT bgworker_demo.schedule('promoted', '200 milliseconds', 'SELECT 6')");
$node->poll_query_until('postgres',
	"SELECT runs >= 1 FROM bgworker_demo.schedules WHERE id = $promoted")
  or die 'the schedule does not run on the primary';
$node->wait_for_catchup($standby);
is( query($standby,
		"SELECT count(*) FROM bgworker_demo.schedules WHERE id = $promoted"),
	'1',
	'the schedule has reached the standby');
is( query($standby,
		"SELECT count(*) FROM bgworker_demo.workers() WHERE type = 'launcher'"),
	'0',
	'no launcher runs on a hot standby');
$node->stop;

my ($jobs_before, $max_id) = split /\|/, query($standby,
	"SELECT count(*), max(id) FROM bgworker_demo.jobs WHERE schedule_id = $promoted"
);
# The schedule comes due on the standby's clock: a launcher would queue it.
$standby->poll_query_until('postgres',
	"SELECT clock_timestamp() > next_run + interval '1 s' FROM bgworker_demo.schedules WHERE id = $promoted"
) or die 'the schedule did not come due on the standby';
is( query($standby,
		"SELECT count(*) FROM bgworker_demo.jobs WHERE schedule_id = $promoted"),
	$jobs_before,
	'a due schedule is not run on a hot standby');
is( query($standby,
		"SELECT count(*) FROM bgworker_demo.workers() WHERE type IN ('launcher', 'worker')"),
	'0',
	'still no launcher nor worker on the standby');
unlike(
	slurp_file($standby->logfile),
	qr/read-only transaction|recovery is in progress/,
	'bgworker_demo tried no write on the standby');

$standby->promote;
wait_launcher($standby);
ok( $standby->poll_query_until(
		'postgres',
		"SELECT count(*) >= 3 FROM bgworker_demo.jobs WHERE schedule_id = $promoted AND id > $max_id AND status = 'succeeded'"
	),
	'after promotion the schedule runs');
is( query($standby, qq{
SELECT count(*) FROM bgworker_demo.jobs
WHERE schedule_id = $promoted AND id > $max_id
  AND run_at < (SELECT started_at FROM bgworker_demo.workers()
				WHERE type = 'launcher' AND database = current_database())
}) <= 1 ? 'ok' : 'burst',
	'ok',
	'at most one catch-up run after promotion');
query($standby, "SELECT bgworker_demo.unschedule('promoted')");
wait_schedule_jobs($standby, $promoted, 'promoted');
is( query($standby,
		"SELECT bool_and(status = 'succeeded') FROM bgworker_demo.jobs WHERE schedule_id = $promoted AND id > $max_id"
	),
	't',
	'the runs after promotion succeeded');

$standby->stop;
done_testing();
