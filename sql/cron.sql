--
-- cron: schedule specs (cron expressions and intervals) and next_run()
--
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';
SET bgworker_demo.timezone = 'UTC';

-- From Saturday 2026-01-31 23:59:30 UTC; 2026-02-01 is a Sunday.
SELECT spec, bgworker_demo.next_run(spec, '2026-01-31 23:59:30+00') AS next_run
FROM (VALUES
	-- minute and hour
	('* * * * *'),
	('*/5 * * * *'),
	('7 * * * *'),
	('5/20 * * * *'),
	('0-10/5 1 * * *'),
	('15,45 9-17/4 * * *'),
	('0 12 * * *'),
	('  0   12  *  *  *  '),
	-- day of month
	('30 6 15 * *'),
	('0 0 */10 * *'),
	('0 0 10/10 * *'),
	('0 0 15 * ?'),
	-- month ends: no 30th or 31st in February
	('0 0 30 * *'),
	('0 0 31 * *'),
	('0 0 31 1,3 *'),
	-- February 29: the next leap year is 2028
	('0 0 29 2 *'),
	-- month, by number and by name
	('0 0 1 */3 *'),
	('0 0 * jun *'),
	('0 0 1 jul-sep *'),
	('0 0 1 FEB,Mar *'),
	-- year end
	('59 23 31 12 *'),
	('59 23 31 1 *'),
	('0 0 1 1 *'),
	-- day of week: 0 and 7 are Sunday, names in any case, ranges
	('0 0 * * 1'),
	('0 0 * * 0'),
	('0 0 * * 7'),
	('0 0 * * sat'),
	('0 9 * * MON-FRI'),
	('0 0 * * fri-sun'),
	('0 0 ? * mon'),
	-- both day fields restricted: either one matches
	('0 0 13 * *'),
	('0 0 * * fri'),
	('0 0 13 * fri'),
	('0 0 15 * mon'),
	('0 0 29 2 mon'),
	-- macros
	('@yearly'),
	('@annually'),
	('@monthly'),
	('@weekly'),
	('@daily'),
	('@midnight'),
	('@hourly'),
	('@DAILY'),
	-- intervals
	('10 ms'),
	('250 milliseconds'),
	('10 seconds'),
	('90 minutes'),
	('1 hour'),
	('1 day'),
	('1 day 12:00:00'),
	('PT15M'),
	('@ 2 hours')
) v(spec);

-- Invalid cron expressions
SELECT bgworker_demo.next_run('*/0 * * * *', '2026-01-01');
SELECT bgworker_demo.next_run('0 */0 * * *', '2026-01-01');
SELECT bgworker_demo.next_run('*/61 * * * *', '2026-01-01');
SELECT bgworker_demo.next_run('60 * * * *', '2026-01-01');
SELECT bgworker_demo.next_run('0 24 * * *', '2026-01-01');
SELECT bgworker_demo.next_run('0 0 0 * *', '2026-01-01');
SELECT bgworker_demo.next_run('0 0 32 * *', '2026-01-01');
SELECT bgworker_demo.next_run('0 0 * 13 *', '2026-01-01');
SELECT bgworker_demo.next_run('0 0 * * 8', '2026-01-01');
SELECT bgworker_demo.next_run('5-3 * * * *', '2026-01-01');
SELECT bgworker_demo.next_run('0 0 * * sat-mon', '2026-01-01');
SELECT bgworker_demo.next_run('1,,2 * * * *', '2026-01-01');
SELECT bgworker_demo.next_run('1- * * * *', '2026-01-01');
SELECT bgworker_demo.next_run('0 0 * foo *', '2026-01-01');
SELECT bgworker_demo.next_run('0 0 * * monday', '2026-01-01');
SELECT bgworker_demo.next_run('0 0 * * mon#2', '2026-01-01');
SELECT bgworker_demo.next_run('0 0 ? ? *', '2026-01-01');
-- days that exist in none of the months
SELECT bgworker_demo.next_run('0 0 31 2 *', '2026-01-01');
SELECT bgworker_demo.next_run('0 0 30,31 feb *', '2026-01-01');
SELECT bgworker_demo.next_run('0 0 31 4,6,9,11 *', '2026-01-01');
-- wrong number of fields
SELECT bgworker_demo.next_run('* * * *', '2026-01-01');
SELECT bgworker_demo.next_run('0 0 * * * *', '2026-01-01');
-- macros
SELECT bgworker_demo.next_run('@reboot', '2026-01-01');
SELECT bgworker_demo.next_run('@fortnightly', '2026-01-01');
SELECT bgworker_demo.next_run('@daily 5', '2026-01-01');

-- Invalid intervals and garbage
SELECT bgworker_demo.next_run('5 ms', '2026-01-01');
SELECT bgworker_demo.next_run('1 month', '2026-01-01');
SELECT bgworker_demo.next_run('1 year 1 day', '2026-01-01');
SELECT bgworker_demo.next_run('-1 hour', '2026-01-01');
SELECT bgworker_demo.next_run('0 seconds', '2026-01-01');
SELECT bgworker_demo.next_run('2147483647 days', '2026-01-01');
SELECT bgworker_demo.next_run('garbage', '2026-01-01');
SELECT bgworker_demo.next_run('', '2026-01-01');
SELECT bgworker_demo.next_run(NULL, '2026-01-01') IS NULL AS is_null;

-- Out of range
SELECT bgworker_demo.next_run('* * * * *', 'infinity');
SELECT bgworker_demo.next_run('1 hour', '294276-12-31 23:30:00+00');

--
-- Time zones and daylight saving time.  runs() lists the first n due
-- times after "start", with the wall-clock time in bgworker_demo.timezone.
--
CREATE FUNCTION pg_temp.runs(spec text, start timestamptz, n int)
RETURNS TABLE (due timestamptz, wall_clock timestamp)
LANGUAGE sql
AS $$
	WITH RECURSIVE r(i, t) AS (
		SELECT 1, bgworker_demo.next_run(spec, start)
		UNION ALL
		SELECT i + 1, bgworker_demo.next_run(spec, t) FROM r WHERE i < n
	)
	SELECT t, t AT TIME ZONE current_setting('bgworker_demo.timezone')
	FROM r ORDER BY i
$$;

SET bgworker_demo.timezone = 'America/New_York';

-- Fixed local time of day: 09:00 EST is 14:00 UTC, 09:00 EDT is 13:00 UTC.
SELECT * FROM pg_temp.runs('0 9 * * mon', '2026-03-01 00:00+00', 2);

-- Spring forward, 2026-03-08: at 02:00 EST (07:00 UTC) the clocks jump to
-- 03:00 EDT.  02:30 does not exist that day: it runs once at 03:00 EDT.
SELECT * FROM pg_temp.runs('30 2 * * *', '2026-03-08 00:00-05', 3);
-- 02:00, 02:30 and 03:00 all run at once at 03:00 EDT.
SELECT * FROM pg_temp.runs('*/30 * * * *', '2026-03-08 01:00-05', 4);
SELECT * FROM pg_temp.runs('0 * * * *', '2026-03-08 00:30-05', 4);
-- Intervals do not care about time zones.
SELECT * FROM pg_temp.runs('1 hour', '2026-03-08 05:30+00', 3);

-- Fall back, 2026-11-01: at 02:00 EDT (06:00 UTC) the clocks go back to
-- 01:00 EST.  01:30 occurs twice; it runs at the first occurrence only.
SELECT * FROM pg_temp.runs('30 1 * * *', '2026-10-31 12:00+00', 3);
-- Nothing runs during the second pass through 01:00-01:59.
SELECT * FROM pg_temp.runs('*/30 * * * *', '2026-11-01 00:45-04', 5);
SELECT * FROM pg_temp.runs('0 * * * *', '2026-11-01 00:30-04', 3);
-- From inside the second pass: 01:30 and 01:45 already ran in the first.
SELECT bgworker_demo.next_run('30 1 * * *', '2026-11-01 01:15-05');
SELECT bgworker_demo.next_run('45 1 * * *', '2026-11-01 01:15-05');
SELECT bgworker_demo.next_run('0 2 * * *', '2026-11-01 01:15-05');
SELECT bgworker_demo.next_run('50 1 * * *', '2026-11-01 01:45-04');

-- Europe/Berlin: forward at 01:00 UTC on 2026-03-29 (02:00 CET becomes
-- 03:00 CEST), back at 01:00 UTC on 2026-10-25 (03:00 CEST becomes 02:00
-- CET).
SET bgworker_demo.timezone = 'Europe/Berlin';
SELECT * FROM pg_temp.runs('30 2 * * *', '2026-03-28 12:00+00', 2);
SELECT * FROM pg_temp.runs('30 2 * * *', '2026-10-24 12:00+00', 2);

-- Unknown time zone
SET bgworker_demo.timezone = 'Mars/Olympus_Mons';
SELECT bgworker_demo.next_run('0 0 * * *', '2026-01-01');

RESET bgworker_demo.timezone;
RESET datestyle;
RESET timezone;

-- A cron expression with a field too many (seconds) or too few is an
-- error, even though interval input would accept the text.
SELECT bgworker_demo.next_run('*/20 * * * * *', '2026-01-01 00:00:00+00');
SELECT bgworker_demo.next_run('0 0 * *', '2026-01-01 00:00:00+00');
-- An interval with words is still an interval.
SELECT bgworker_demo.next_run('10 seconds', '2026-01-01 00:00:00+00');
