/*-------------------------------------------------------------------------
 *
 * cron.c
 *		Parsing of schedule specs (cron expressions and intervals) and
 *		computation of the next due time.
 *
 * A schedule spec is either a cron expression or an interval.
 *
 * A cron expression has five fields separated by white space: minute
 * (0-59), hour (0-23), day of month (1-31), month (1-12, or jan-dec) and
 * day of week (0-7, or sun-sat; both 0 and 7 mean Sunday).  A field is a
 * comma-separated list of items.  An item is "*" (every value), a value,
 * or a range "a-b"; it may end in "/n" to keep every n-th value only:
 * "*" followed by "/n" steps through the whole field, "a-b/n" through the
 * range, and "a/n" from a to the end of the field.  Names are matched
 * without regard to case and may be used in ranges ("mon-fri"; "sun" may
 * end a range, as in "fri-sun").  "?" is accepted in place of "*" in the
 * two day fields.  The macros @yearly (or @annually), @monthly, @weekly,
 * @daily (or @midnight) and @hourly stand for "0 0 1 1 *", "0 0 1 * *",
 * "0 0 * * 0", "0 0 * * *" and "0 * * * *"; @reboot is not supported.
 *
 * As in Vixie cron, when both day fields are restricted (neither is a
 * plain "*" or "?"), a day matches if either of them matches; when one of
 * them is "*", only the other one counts.  Unlike Vixie cron, a stepped
 * "*" in a day field counts as a restriction.  An expression whose days
 * of month exist in none of its months, such as "0 0 31 2 *", is rejected
 * when parsed rather than found never to come due.  February counts as
 * having 29 days, so "0 0 29 2 *" is accepted; it comes due in leap years
 * only.
 *
 * Any other spec is read as an interval, in the syntax of the interval
 * type ("250 milliseconds", "1 hour", "1 day 12:00").  A day counts as 24
 * hours; months and years are refused, as their length varies.  The
 * interval must be at least 10 milliseconds.  An interval comes due at the
 * previous due time plus the interval, regardless of time zones.
 *
 * Cron expressions match the wall-clock time of the time zone named by
 * bgworker_demo.timezone, or of the server's TimeZone setting when that is
 * empty.  Daylight saving time makes the wall clock jump forward or back,
 * and one rule covers both: a matching wall-clock minute W comes due at the
 * first instant at which the clock reads W or later.  Hence every matching
 * wall-clock time runs once:
 *
 * - When the clocks go back, a wall time that occurs twice runs at its
 *	 first occurrence only; nothing runs during the second pass through the
 *	 repeated times.
 *
 * - When the clocks go forward, a wall time in the gap does not exist; it
 *	 runs once at the first instant after the gap, which is the moment of
 *	 the transition.  All matching times of one gap share that one run.
 *
 * To find the first due time after a given instant, BgwdSpecNext() first
 * takes the "high-water mark" of the wall clock: the latest reading the
 * clock has shown up to that instant.  That is normally the current
 * reading, but during the second pass through a repeated hour, it is the
 * end of the first pass.  The matching wall-clock minute that follows the
 * mark is the wall time of the answer, and the first instant at which the
 * clock reaches that minute is the answer, which is therefore always later
 * than the given instant.  A run in the second pass of a repeated hour
 * would be the second run of that wall time, and the mark skips them.
 *
 * The search for the matching minute steps through the calendar, skipping
 * a whole month, day or hour as soon as it cannot match, so it takes a few
 * hundred steps at most.  It gives up after nine years, which is more than
 * the longest wait for a February 29 (eight years, around 2100); given the
 * check made when parsing, that never happens to a parsed spec.
 *
 * Copyright (c) 2026, bgworker_demo developers
 *
 * IDENTIFICATION
 *		bgworker_demo/cron.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>

#include "common/int.h"
#include "datatype/timestamp.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "pgtime.h"
#include "port/pg_bitutils.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "bgworker_demo.h"
#include "cron.h"

PG_FUNCTION_INFO_V1(bgworker_demo_next_run);

/* Number of fields of a cron expression. */
#define CRON_NFIELDS			5

/* Shortest interval accepted, in microseconds. */
#define MIN_INTERVAL_US			(10 * INT64CONST(1000))

/* How many calendar years the search for a matching minute may cover. */
#define SEARCH_YEARS			9

/*
 * How far before a time we start following the time zone's transitions.
 * This must exceed twice the largest UTC offset, which is about 15 hours.
 */
#define TZ_LOOKBEHIND_SECS		(3 * SECS_PER_DAY)

/* Most transitions we expect to step over while following them. */
#define TZ_MAX_STEPS			64

/* Hint attached to all errors about the syntax of a spec. */
#define SPEC_HINT \
	"A spec is a cron expression such as \"%s\" or an interval such as \"%s\"."
#define SPEC_HINT_CRON			"*/5 * * * *"
#define SPEC_HINT_INTERVAL		"250 milliseconds"

/* Characters that may appear in a cron field, besides letters of names. */
#define CRON_CHARS				"0123456789*,-/?"

/*
 * Description of one field of a cron expression.
 */
typedef struct CronFieldDesc
{
	const char *label;			/* name of the field, for messages */
	int			min;			/* smallest value accepted */
	int			max;			/* largest value accepted */
	int			last;			/* end of "*" and of "a/n" */
	const char *const *names;	/* names of min, min + 1, ...; or NULL */
	int			nnames;			/* length of names[] */
	bool		question_ok;	/* is "?" accepted for "*"? */
} CronFieldDesc;

static const char *const month_names[] = {
	"jan", "feb", "mar", "apr", "may", "jun",
	"jul", "aug", "sep", "oct", "nov", "dec"
};

static const char *const weekday_names[] = {
	"sun", "mon", "tue", "wed", "thu", "fri", "sat"
};

static const CronFieldDesc cron_fields[CRON_NFIELDS] = {
	{"minute", 0, 59, 59, NULL, 0, false},
	{"hour", 0, 23, 23, NULL, 0, false},
	{"day of month", 1, 31, 31, NULL, 0, true},
	{"month", 1, 12, 12, month_names, lengthof(month_names), false},
	/* 7 is Sunday again: accepted, but "*" stops at 6 */
	{"day of week", 0, 7, 6, weekday_names, lengthof(weekday_names), true}
};

/*
 * The macros, and what they stand for.
 */
typedef struct CronMacro
{
	const char *name;			/* without the '@' */
	const char *expansion;		/* a cron expression */
} CronMacro;

static const CronMacro cron_macros[] = {
	{"yearly", "0 0 1 1 *"},
	{"annually", "0 0 1 1 *"},
	{"monthly", "0 0 1 * *"},
	{"weekly", "0 0 * * 0"},
	{"daily", "0 0 * * *"},
	{"midnight", "0 0 * * *"},
	{"hourly", "0 * * * *"}
};

/*
 * Where the parser of a cron expression is, for its error messages.
 */
typedef struct CronParseState
{
	const char *spec;			/* the whole spec, as given */
	int			fieldno;		/* 1-based number of the field */
	const CronFieldDesc *desc;	/* its description */
	const char *field;			/* its text */
} CronParseState;

static char *format_detail(const char *fmt, va_list args) pg_attribute_printf(1, 0);
static void report_invalid_spec(const char *spec, const char *fmt,...)
			pg_attribute_printf(2, 3) pg_attribute_noreturn();
static void report_field_error(const CronParseState *state,
							   const char *fmt,...)
			pg_attribute_printf(2, 3) pg_attribute_noreturn();
static void parse_macro(const char *spec, const char *macro, BgwdSpec *result);
static void parse_cron(const char *spec, char **fields, CronSpec *cron);
static uint64 parse_cron_field(const CronParseState *state, bool *star);
static int	parse_cron_value(const CronParseState *state, const char **pos,
							 bool ends_range);
static int	parse_cron_step(const CronParseState *state, const char **pos);
static void check_days_exist(const char *spec, const CronSpec *cron);
static void parse_interval(const char *spec, int nfields, BgwdSpec *result);
static void report_not_a_spec(const char *spec, int nfields)
			pg_attribute_noreturn();
static bool is_cron_field(const char *field);
static TimestampTz next_cron_time(const CronSpec *cron, TimestampTz after,
								  pg_tz *tz);
static bool find_matching_minute(const CronSpec *cron, Timestamp start,
								 Timestamp *result);
static bool day_matches(const CronSpec *cron, int year, int month, int day);
static int	find_next_bit(uint64 bits, int from);
static Timestamp get_wall_clock_high_water(TimestampTz after, pg_tz *tz);
static TimestampTz get_first_instant_reaching(Timestamp wall, pg_tz *tz);
static void get_offset_at(pg_tz *tz, pg_time_t t, long *gmtoff,
						  pg_time_t *until);
static pg_time_t to_pg_time(int64 t);
static int64 from_pg_time(pg_time_t t);
static void report_timestamp_out_of_range(void) pg_attribute_noreturn();


/*
 * BgwdParseSpec
 *		Parses a schedule spec: a cron expression, a macro or an interval.
 *
 * text is the spec as the user wrote it; leading and trailing white space
 * is ignored.  Fills in *spec.  Reports an ERROR if text is NULL, empty or
 * not a valid spec, naming the faulty field of a cron expression.
 */
void
BgwdParseSpec(const char *text, BgwdSpec *spec)
{
	const char *p;
	char	   *fields[CRON_NFIELDS];
	int			nfields = 0;
	bool		cron_like = true;
	bool		all_cron_chars = true;	/* digits and * , - / ? only */
	int			i;

	if (text == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("schedule spec must not be null")));

	memset(spec, 0, sizeof(*spec));

	p = text;
	while (isspace((unsigned char) *p))
		p++;
	if (*p == '\0')
		report_invalid_spec(text, "The spec is empty.");

	/* "@name" is a macro; "@ 1 hour" is an interval in the verbose style */
	if (p[0] == '@' && isalpha((unsigned char) p[1]))
	{
		parse_macro(text, p, spec);
		return;
	}

	/* Split into fields, keeping the first five, and classify them */
	while (*p != '\0')
	{
		const char *start = p;

		while (*p != '\0' && !isspace((unsigned char) *p))
			p++;
		if (nfields < CRON_NFIELDS)
			fields[nfields] = pnstrdup(start, p - start);
		if (nfields >= CRON_NFIELDS || !is_cron_field(fields[nfields]))
			cron_like = false;
		if (strspn(start, CRON_CHARS) < (size_t) (p - start))
			all_cron_chars = false;
		nfields++;
		while (isspace((unsigned char) *p))
			p++;
	}

	/*
	 * Several fields of cron characters only, but not five: a cron
	 * expression with a field too many or too few (a six-field one with
	 * seconds, say), even if interval input would take it.
	 */
	if (all_cron_chars && nfields >= 2 && nfields != CRON_NFIELDS)
		report_invalid_spec(text, "A cron expression must have 5 fields, not %d.",
							nfields);

	if (cron_like && nfields == CRON_NFIELDS)
	{
		spec->is_interval = false;
		parse_cron(text, fields, &spec->cron);
	}
	else
		parse_interval(text, nfields, spec);

	for (i = 0; i < Min(nfields, CRON_NFIELDS); i++)
		pfree(fields[i]);
}

/*
 * BgwdSpecNext
 *		Computes the first time after "after" at which a spec comes due.
 *
 * spec must have been filled in by BgwdParseSpec().  An interval comes due
 * at after plus the interval; a cron expression at the time given by the
 * rules in the header comment of this file, in the time zone of
 * BgwdScheduleTimezone().  Returns a time strictly later than after.
 * Reports an ERROR if after is infinite or the result is out of the range
 * of timestamps, or if a cron expression does not come due for years.
 */
TimestampTz
BgwdSpecNext(const BgwdSpec *spec, TimestampTz after)
{
	TimestampTz result;

	if (TIMESTAMP_NOT_FINITE(after) || !IS_VALID_TIMESTAMP(after))
		report_timestamp_out_of_range();

	if (spec->is_interval)
	{
		Assert(spec->interval_us > 0);
		if (pg_add_s64_overflow(after, spec->interval_us, &result) ||
			!IS_VALID_TIMESTAMP(result))
			report_timestamp_out_of_range();
		return result;
	}

	return next_cron_time(&spec->cron, after, BgwdScheduleTimezone());
}

/*
 * BgwdScheduleTimezone
 *		Returns the time zone that cron expressions are evaluated in.
 *
 * That is the zone named by bgworker_demo.timezone, or the server's
 * TimeZone (its value from the configuration, not the session's) when the
 * setting is empty.  The zone last looked up is cached.  Reports an ERROR
 * if the zone is unknown.
 */
pg_tz *
BgwdScheduleTimezone(void)
{
	static char cached_name[TZ_STRLEN_MAX + 1];
	static pg_tz *cached_tz = NULL;
	const char *name = bgworker_demo_timezone;
	pg_tz	   *tz;

	if (name == NULL || name[0] == '\0')
		name = GetConfigOptionResetString("TimeZone");
	if (name == NULL)
		name = "GMT";

	if (cached_tz != NULL && strcmp(name, cached_name) == 0)
		return cached_tz;

	tz = pg_tzset(name);
	if (tz == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("time zone \"%s\" not recognized", name),
				 errhint("Set bgworker_demo.timezone to a time zone name such as \"UTC\" or \"Europe/Berlin\", or to an empty string for the server's time zone.")));
	if (!pg_tz_acceptable(tz))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("time zone \"%s\" appears to use leap seconds", name),
				 errdetail("PostgreSQL does not support leap seconds.")));

	strlcpy(cached_name, name, sizeof(cached_name));
	cached_tz = tz;
	return tz;
}

/*
 * bgworker_demo_next_run
 *		SQL function next_run(spec text, after timestamptz): the first time
 *		after "after" at which spec comes due.
 *
 * The function is strict, so neither argument is NULL.  Reports an ERROR
 * if the spec is invalid.
 */
Datum
bgworker_demo_next_run(PG_FUNCTION_ARGS)
{
	char	   *spec_text = text_to_cstring(PG_GETARG_TEXT_PP(0));
	TimestampTz after = PG_GETARG_TIMESTAMPTZ(1);
	BgwdSpec	spec;

	BgwdParseSpec(spec_text, &spec);
	PG_RETURN_TIMESTAMPTZ(BgwdSpecNext(&spec, after));
}


/*
 * format_detail
 *		Formats a detail message from fmt and a va_list into palloc'd memory.
 *		The list is copied for each try, so the caller's stays usable.
 */
static char *
format_detail(const char *fmt, va_list args)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (;;)
	{
		va_list		copy;
		int			needed;

		va_copy(copy, args);
		needed = appendStringInfoVA(&buf, fmt, copy);
		va_end(copy);
		if (needed == 0)
			break;
		enlargeStringInfo(&buf, needed);
	}
	return buf.data;
}

/*
 * report_invalid_spec
 *		Reports an ERROR about an invalid spec, with a detail message.
 *
 * spec is the spec as given; fmt and the arguments form the detail, a
 * complete sentence.  Does not return.
 */
static void
report_invalid_spec(const char *spec, const char *fmt,...)
{
	va_list		args;
	char	   *detail;

	va_start(args, fmt);
	detail = format_detail(fmt, args);
	va_end(args);

	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid schedule spec \"%s\"", spec),
			 errdetail_internal("%s", detail),
			 errhint(SPEC_HINT, SPEC_HINT_CRON, SPEC_HINT_INTERVAL)));
	pg_unreachable();
}

/*
 * report_field_error
 *		Reports an ERROR about one field of a cron expression.
 *
 * state tells which field; fmt and the arguments form the rest of the
 * detail message, which starts with the number and name of the field.
 * Does not return.
 */
static void
report_field_error(const CronParseState *state, const char *fmt,...)
{
	va_list		args;
	char	   *detail;

	va_start(args, fmt);
	detail = format_detail(fmt, args);
	va_end(args);

	report_invalid_spec(state->spec, "Field %d (%s): %s",
						state->fieldno, state->desc->label, detail);
}

/*
 * parse_macro
 *		Parses a macro such as "@daily" into *result.
 *
 * spec is the whole spec, for messages; macro points to its '@', after any
 * leading white space.  Only white space may follow the name.  Reports an
 * ERROR for an unknown macro and for @reboot, which we do not support.
 */
static void
parse_macro(const char *spec, const char *macro, BgwdSpec *result)
{
	const char *name = macro + 1;
	const char *p = name;
	int			len;
	int			i;

	while (isalpha((unsigned char) *p))
		p++;
	len = p - name;
	while (isspace((unsigned char) *p))
		p++;
	if (*p != '\0')
		report_invalid_spec(spec, "Unexpected text \"%s\" after macro \"%.*s\".",
							p, len + 1, macro);

	if (len == 6 && pg_strncasecmp(name, "reboot", 6) == 0)
		report_invalid_spec(spec, "The @reboot macro is not supported.");

	for (i = 0; i < (int) lengthof(cron_macros); i++)
	{
		if ((int) strlen(cron_macros[i].name) == len &&
			pg_strncasecmp(name, cron_macros[i].name, len) == 0)
		{
			BgwdParseSpec(cron_macros[i].expansion, result);
			return;
		}
	}

	report_invalid_spec(spec, "Unrecognized macro \"%.*s\".", len + 1, macro);
}

/*
 * parse_cron
 *		Parses the five fields of a cron expression into *cron.
 *
 * spec is the whole spec, for messages; fields holds the text of the five
 * fields.  Reports an ERROR naming the field at fault if one is invalid,
 * or if no selected day of month exists in any selected month.
 */
static void
parse_cron(const char *spec, char **fields, CronSpec *cron)
{
	uint64		bits[CRON_NFIELDS];
	bool		star[CRON_NFIELDS];
	int			i;

	for (i = 0; i < CRON_NFIELDS; i++)
	{
		CronParseState state;

		state.spec = spec;
		state.fieldno = i + 1;
		state.desc = &cron_fields[i];
		state.field = fields[i];
		bits[i] = parse_cron_field(&state, &star[i]);
	}

	/* Sunday may have been given as 7: fold it into 0 */
	if (bits[4] & (UINT64CONST(1) << 7))
		bits[4] = (bits[4] & ~(UINT64CONST(1) << 7)) | UINT64CONST(1);

	memset(cron, 0, sizeof(*cron));
	cron->minutes = bits[0];
	cron->hours = (uint32) bits[1];
	cron->days = (uint32) bits[2];
	cron->months = (uint16) bits[3];
	cron->weekdays = (uint8) bits[4];
	cron->days_star = star[2];
	cron->weekdays_star = star[4];

	check_days_exist(spec, cron);
}

/*
 * parse_cron_field
 *		Parses one field of a cron expression.
 *
 * state describes the field and holds its text.  Returns the set of
 * selected values, bit v standing for value v, and sets *star to whether
 * the field is a plain "*" (or "?" where allowed).  Reports an ERROR if the
 * field is invalid.
 */
static uint64
parse_cron_field(const CronParseState *state, bool *star)
{
	const CronFieldDesc *desc = state->desc;
	const char *p = state->field;
	uint64		bits = 0;

	*star = false;
	if (strcmp(p, "*") == 0 ||
		(desc->question_ok && strcmp(p, "?") == 0))
		*star = true;
	else if (strchr(p, '?') != NULL)
		report_field_error(state, desc->question_ok ?
						   "\"?\" must be the whole field." :
						   "\"?\" is not allowed in this field.");

	for (;;)
	{
		const char *item = p;
		int			lo;
		int			hi;
		int			step = 1;
		bool		single = false;
		int			v;

		if (*p == '*' || *p == '?')
		{
			lo = desc->min;
			hi = desc->last;
			p++;
		}
		else
		{
			lo = parse_cron_value(state, &p, false);
			if (*p == '-')
			{
				p++;
				hi = parse_cron_value(state, &p, true);
				if (hi < lo)
					report_field_error(state, "range \"%.*s\" is reversed.",
									   (int) (p - item), item);
			}
			else
			{
				hi = lo;
				single = true;
			}
		}

		if (*p == '/')
		{
			p++;
			step = parse_cron_step(state, &p);
			/* "a/n" runs from a to the end of the field */
			if (single)
				hi = Max(lo, desc->last);
		}

		if (*p != ',' && *p != '\0')
			report_field_error(state, "unexpected character at \"%s\".", p);

		for (v = lo; v <= hi; v += step)
			bits |= UINT64CONST(1) << v;

		if (*p == '\0')
			break;
		p++;					/* skip the comma */
	}

	return bits;
}

/*
 * parse_cron_value
 *		Parses one value in a field of a cron expression: a number or a name.
 *
 * *pos points to the value and is advanced past it.  ends_range tells if
 * the value ends a range, where the name "sun" means 7, so that "fri-sun"
 * is a valid range.  Returns the value.  Reports an ERROR if there is no
 * value at *pos, or if it is out of range or an unknown name.
 */
static int
parse_cron_value(const CronParseState *state, const char **pos,
				 bool ends_range)
{
	const CronFieldDesc *desc = state->desc;
	const char *start = *pos;
	const char *p = start;
	int			value = 0;
	int			i;

	if (isdigit((unsigned char) *p))
	{
		while (isdigit((unsigned char) *p))
		{
			/* stop accumulating once out of range: no overflow */
			if (value <= desc->max)
				value = value * 10 + (*p - '0');
			p++;
		}
		if (value < desc->min || value > desc->max)
			report_field_error(state, "value %.*s is out of range %d-%d.",
							   (int) (p - start), start,
							   desc->min, desc->max);
		*pos = p;
		return value;
	}

	if (isalpha((unsigned char) *p))
	{
		while (isalpha((unsigned char) *p))
			p++;
		for (i = 0; i < desc->nnames; i++)
		{
			if ((size_t) (p - start) == strlen(desc->names[i]) &&
				pg_strncasecmp(start, desc->names[i], p - start) == 0)
			{
				value = desc->min + i;
				/* the day of week is the only field where max > last */
				if (ends_range && value == desc->min && desc->max > desc->last)
					value = desc->max;
				*pos = p;
				return value;
			}
		}
		report_field_error(state, "unrecognized name \"%.*s\".",
						   (int) (p - start), start);
	}

	if (*p == '\0')
		report_field_error(state, "value missing at the end of \"%s\".",
						   state->field);
	report_field_error(state, "value missing at \"%s\".", p);
}

/*
 * parse_cron_step
 *		Parses the number after '/' in a field of a cron expression.
 *
 * *pos points after the '/' and is advanced past the number.  Returns the
 * step, which is between 1 and the number of values of the field.
 * Reports an ERROR if there is no number or it is out of that range.
 */
static int
parse_cron_step(const CronParseState *state, const char **pos)
{
	const CronFieldDesc *desc = state->desc;
	int			nvalues = desc->last - desc->min + 1;
	const char *start = *pos;
	const char *p = start;
	int			step = 0;

	if (!isdigit((unsigned char) *p))
		report_field_error(state, "step missing after \"/\" in \"%s\".",
						   state->field);
	while (isdigit((unsigned char) *p))
	{
		/* stop accumulating once out of range: no overflow */
		if (step <= nvalues)
			step = step * 10 + (*p - '0');
		p++;
	}
	if (step == 0)
		report_field_error(state, "step must be greater than zero.");
	if (step > nvalues)
		report_field_error(state, "step %.*s is out of range 1-%d.",
						   (int) (p - start), start, nvalues);
	*pos = p;
	return step;
}

/*
 * check_days_exist
 *		Checks that a cron expression restricted by day of month only
 *		selects a day that exists in some selected month.
 *
 * February counts as having 29 days.  When the day of week is restricted
 * too, every month has matching days, so there is nothing to check.
 * Reports an ERROR if the expression could never come due.
 */
static void
check_days_exist(const char *spec, const CronSpec *cron)
{
	int			month;

	if (cron->days_star || !cron->weekdays_star)
		return;

	for (month = 1; month <= MONTHS_PER_YEAR; month++)
	{
		/* day_tab[1] is for leap years, where February has 29 days */
		int			ndays = day_tab[1][month - 1];
		uint64		days_in_month;

		/* bits 1 to ndays */
		days_in_month = (UINT64CONST(1) << (ndays + 1)) - 2;
		if ((cron->months & (1 << month)) && (cron->days & days_in_month))
			return;
	}

	report_invalid_spec(spec, "Field 3 (day of month): none of the selected days exists in the selected months.");
}

/*
 * parse_interval
 *		Parses a spec that is not a cron expression as an interval.
 *
 * spec is the whole spec; nfields is the number of its white-space
 * separated words, for messages.  The syntax is that of the interval type,
 * but the checks are made here, so that errors report the spec.  Sets
 * result to the interval, with days of 24 hours.  Reports an ERROR if the
 * spec is no interval, has months or years, is not positive or is shorter
 * than the minimum.
 */
static void
parse_interval(const char *spec, int nfields, BgwdSpec *result)
{
	struct pg_itm_in itm_in;
	char		workbuf[256];
	char	   *field[MAXDATEFIELDS];
	int			ftype[MAXDATEFIELDS];
	int			nf;
	int			dtype = DTK_DELTA;
	int			dterr;
	Interval	interval;
	int64		period;

	memset(&itm_in, 0, sizeof(itm_in));
	dterr = ParseDateTime(spec, workbuf, sizeof(workbuf), field, ftype,
						  MAXDATEFIELDS, &nf);
	if (dterr == 0)
		dterr = DecodeInterval(field, ftype, nf, INTERVAL_FULL_RANGE,
							   &dtype, &itm_in);
	/* like interval_in(), try ISO 8601 ("PT1H") if the rest did not fit */
	if (dterr == DTERR_BAD_FORMAT)
	{
		char	   *copy = pstrdup(spec);
		char	   *end;

		/* DecodeISO8601Interval() does not skip white space */
		while (isspace((unsigned char) *copy))
			copy++;
		end = copy + strlen(copy);
		while (end > copy && isspace((unsigned char) end[-1]))
			*--end = '\0';
		memset(&itm_in, 0, sizeof(itm_in));
		dterr = DecodeISO8601Interval(copy, &dtype, &itm_in);
	}
	if (dterr == 0 && dtype != DTK_DELTA)
		dterr = DTERR_BAD_FORMAT;

	if (dterr == DTERR_FIELD_OVERFLOW || dterr == DTERR_INTERVAL_OVERFLOW ||
		(dterr == 0 && itmin2interval(&itm_in, &interval) != 0))
		report_invalid_spec(spec, "The interval is out of range.");
	if (dterr != 0)
		report_not_a_spec(spec, nfields);

	if (interval.month != 0)
		report_invalid_spec(spec, "An interval must not contain months or years, as their length varies.");

	if (pg_mul_s64_overflow(interval.day, USECS_PER_DAY, &period) ||
		pg_add_s64_overflow(period, interval.time, &period))
		report_invalid_spec(spec, "The interval is out of range.");
	if (period <= 0)
		report_invalid_spec(spec, "An interval must be positive.");
	if (period < MIN_INTERVAL_US)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("interval \"%s\" is shorter than the minimum of 10 milliseconds",
						spec)));

	result->is_interval = true;
	result->interval_us = period;
}

/*
 * report_not_a_spec
 *		Reports an ERROR for a spec that is neither a cron expression nor
 *		an interval.
 *
 * spec is the whole spec and nfields the number of its white-space
 * separated words.  With five words, the spec was surely meant as a cron
 * expression, and we name the first character that cannot appear in one;
 * if it has cron characters only, it has the wrong number of fields.
 * Does not return.
 */
static void
report_not_a_spec(const char *spec, int nfields)
{
	const char *p = spec;
	int			fieldno = 0;
	bool		has_star = (strchr(spec, '*') != NULL);
	bool		cron_chars_only = true;

	while (*p != '\0')
	{
		while (isspace((unsigned char) *p))
			p++;
		if (*p == '\0')
			break;
		fieldno++;
		while (*p != '\0' && !isspace((unsigned char) *p))
		{
			if (strchr(CRON_CHARS, *p) == NULL &&
				!isalpha((unsigned char) *p))
			{
				if (nfields == CRON_NFIELDS)
					report_invalid_spec(spec, "Field %d (%s): unexpected character \"%.*s\".",
										fieldno, cron_fields[fieldno - 1].label,
										pg_mblen(p), p);
				cron_chars_only = false;
			}
			else if (isalpha((unsigned char) *p))
				cron_chars_only = false;
			p++;
		}
	}

	if (has_star || cron_chars_only)
		report_invalid_spec(spec, "A cron expression must have 5 fields, not %d.",
							nfields);
	report_invalid_spec(spec, "It is neither a cron expression nor an interval.");
}

/*
 * is_cron_field
 *		Tells if a word consists of characters of cron expressions only.
 *
 * Those are digits, "*,-/?" and letters (of names).
 */
static bool
is_cron_field(const char *field)
{
	const char *p;

	for (p = field; *p != '\0'; p++)
	{
		if (strchr(CRON_CHARS, *p) == NULL && !isalpha((unsigned char) *p))
			return false;
	}
	return true;
}

/*
 * next_cron_time
 *		Computes the first time after "after" at which a cron expression
 *		comes due in time zone tz.
 *
 * after must be a valid, finite timestamp.  See the header comment of this
 * file for the rules.  Returns a time later than after.  Reports an ERROR
 * if the result is out of range, or if the expression does not come due
 * in the years searched.
 */
static TimestampTz
next_cron_time(const CronSpec *cron, TimestampTz after, pg_tz *tz)
{
	Timestamp	high_water;
	Timestamp	start;
	Timestamp	wall;
	TimestampTz result;

	high_water = get_wall_clock_high_water(after, tz);

	/* the first whole minute after the mark: round down, add a minute */
	start = high_water - high_water % USECS_PER_MINUTE;
	if (start > high_water)
		start -= USECS_PER_MINUTE;	/* before 2000, % is negative */
	start += USECS_PER_MINUTE;

	if (!find_matching_minute(cron, start, &wall))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("schedule spec never comes due"),
				 errdetail("No time matches the spec within %d years after %s.",
						   SEARCH_YEARS, timestamptz_to_str(after))));

	result = get_first_instant_reaching(wall, tz);
	if (!IS_VALID_TIMESTAMP(result))
		report_timestamp_out_of_range();
	if (result <= after)
		elog(ERROR, "next due time %s is not after %s",
			 timestamptz_to_str(result), timestamptz_to_str(after));
	return result;
}

/*
 * find_matching_minute
 *		Finds the first wall-clock minute at or after start that a cron
 *		expression matches.
 *
 * start is a wall-clock time, on a whole minute.  Sets *result to the
 * minute found and returns true, or returns false if none is found in the
 * SEARCH_YEARS calendar years after that of start.  Reports an ERROR if a
 * time is out of the range of timestamps.
 */
static bool
find_matching_minute(const CronSpec *cron, Timestamp start,
					 Timestamp *result)
{
	struct pg_tm tm;
	fsec_t		fsec;
	int			year;
	int			month;
	int			day;
	int			hour;
	int			minute;
	int			last_year;

	/* a parsed spec selects something in each field; be safe anyway */
	if (cron->minutes == 0 || cron->hours == 0 || cron->months == 0 ||
		(cron->days == 0 && cron->weekdays == 0))
		return false;

	if (timestamp2tm(start, NULL, &tm, &fsec, NULL, NULL) != 0)
		report_timestamp_out_of_range();
	year = tm.tm_year;
	month = tm.tm_mon;
	day = tm.tm_mday;
	hour = tm.tm_hour;
	minute = tm.tm_min;
	last_year = year + SEARCH_YEARS;

	while (year <= last_year)
	{
		int			next;

		/* month: else skip to the first day of the next selected one */
		if (!(cron->months & (1 << month)))
		{
			next = find_next_bit(cron->months, month + 1);
			if (next < 0)
			{
				year++;
				next = find_next_bit(cron->months, 1);
			}
			month = next;
			day = 1;
			hour = minute = 0;
			continue;
		}

		/* day: else skip to the next day */
		if (day > day_tab[isleap(year) ? 1 : 0][month - 1] ||
			!day_matches(cron, year, month, day))
		{
			day++;
			hour = minute = 0;
			if (day > day_tab[isleap(year) ? 1 : 0][month - 1])
			{
				day = 1;
				if (++month > MONTHS_PER_YEAR)
				{
					month = 1;
					year++;
				}
			}
			continue;
		}

		/* hour: else skip to the next selected one, or the next day */
		next = find_next_bit(cron->hours, hour);
		if (next < 0)
		{
			day++;
			hour = minute = 0;
			continue;			/* the day check above handles day overflow */
		}
		if (next != hour)
		{
			hour = next;
			minute = 0;
		}

		/* minute: else skip to the next hour */
		next = find_next_bit(cron->minutes, minute);
		if (next < 0)
		{
			hour++;
			minute = 0;
			if (hour >= HOURS_PER_DAY)
			{
				day++;
				hour = 0;
			}
			continue;
		}
		minute = next;

		memset(&tm, 0, sizeof(tm));
		tm.tm_year = year;
		tm.tm_mon = month;
		tm.tm_mday = day;
		tm.tm_hour = hour;
		tm.tm_min = minute;
		if (tm2timestamp(&tm, 0, NULL, result) != 0)
			report_timestamp_out_of_range();
		return true;
	}

	return false;
}

/*
 * day_matches
 *		Tells if a cron expression matches a day, by its day-of-month and
 *		day-of-week fields.
 *
 * The day must exist.  When both fields are restricted, either may match;
 * otherwise the one restricted must (the other selects every day).
 */
static bool
day_matches(const CronSpec *cron, int year, int month, int day)
{
	bool		dom_ok = (cron->days & ((uint32) 1 << day)) != 0;
	bool		dow_ok;

	if (cron->weekdays_star)
		return dom_ok;
	dow_ok = (cron->weekdays & (1 << j2day(date2j(year, month, day)))) != 0;
	if (cron->days_star)
		return dow_ok;
	return dom_ok || dow_ok;
}

/*
 * find_next_bit
 *		Returns the number of the lowest bit set in bits that is at least
 *		"from", or -1 if there is none.
 */
static int
find_next_bit(uint64 bits, int from)
{
	if (from >= 64)
		return -1;
	bits &= ~UINT64CONST(0) << from;
	if (bits == 0)
		return -1;
	return pg_rightmost_one_pos64(bits);
}

/*
 * get_wall_clock_high_water
 *		Returns the latest wall-clock reading of zone tz up to and including
 *		the instant "after".
 *
 * Wall-clock readings are returned as a Timestamp (without time zone).
 * This is the reading at "after", unless the clocks were turned back a
 * short while before, and the clock has not yet caught up: then it is the
 * reading just before the clocks were turned back (one microsecond before
 * the transition).  after must be a valid, finite timestamp.
 */
static Timestamp
get_wall_clock_high_water(TimestampTz after, pg_tz *tz)
{
	pg_time_t	after_secs = to_pg_time(after);
	pg_time_t	t = after_secs - TZ_LOOKBEHIND_SECS;
	Timestamp	high_water = DT_NOBEGIN;
	int			i;

	/* follow the periods of constant offset from t to the one with after */
	for (i = 0; i < TZ_MAX_STEPS; i++)
	{
		long		gmtoff;
		pg_time_t	until;

		get_offset_at(tz, t, &gmtoff, &until);
		if (until > after_secs)
			return Max(high_water, after + gmtoff * USECS_PER_SEC);

		/* the period ends at until; the clock read up to just before */
		high_water = Max(high_water,
						 from_pg_time(until) + gmtoff * USECS_PER_SEC - 1);
		t = until;
	}

	elog(ERROR, "too many transitions in time zone \"%s\" around %s",
		 pg_get_timezone_name(tz), timestamptz_to_str(after));
	pg_unreachable();
}

/*
 * get_first_instant_reaching
 *		Returns the first instant at which the wall clock of zone tz reads
 *		"wall" or later.
 *
 * wall is a wall-clock reading, as a Timestamp (without time zone).  If
 * that reading occurs twice, the result is its first occurrence; if it
 * does not occur, because the clocks skip it, the result is the instant
 * they jumped.
 */
static TimestampTz
get_first_instant_reaching(Timestamp wall, pg_tz *tz)
{
	/* the clock surely reads less than wall at t */
	pg_time_t	t = to_pg_time(wall) - TZ_LOOKBEHIND_SECS;
	int			i;

	/* follow the periods of constant offset until one reaches wall */
	for (i = 0; i < TZ_MAX_STEPS; i++)
	{
		long		gmtoff;
		pg_time_t	until;
		TimestampTz candidate;

		get_offset_at(tz, t, &gmtoff, &until);
		candidate = Max(wall - gmtoff * USECS_PER_SEC, from_pg_time(t));
		if (until == PG_INT64_MAX || candidate < from_pg_time(until))
			return candidate;
		t = until;
	}

	elog(ERROR, "too many transitions in time zone \"%s\"",
		 pg_get_timezone_name(tz));
	pg_unreachable();
}

/*
 * get_offset_at
 *		Finds the UTC offset in effect at time t in zone tz, and until when.
 *
 * Sets *gmtoff to the offset (seconds east of Greenwich) in effect at t,
 * and *until to the next transition after t, that is the first second
 * that has another offset, or PG_INT64_MAX if there is none.  A transition
 * may keep the offset and change the abbreviation only.
 */
static void
get_offset_at(pg_tz *tz, pg_time_t t, long *gmtoff, pg_time_t *until)
{
	long		before_gmtoff;
	long		after_gmtoff;
	int			before_isdst;
	int			after_isdst;
	pg_time_t	boundary = 0;
	int			found;

	found = pg_next_dst_boundary(&t, &before_gmtoff, &before_isdst,
								 &boundary, &after_gmtoff, &after_isdst, tz);
	if (found == 1 && boundary <= t)
	{
		/* t is a transition itself: ask about the period that starts */
		pg_time_t	next = t + 1;

		found = pg_next_dst_boundary(&next, &before_gmtoff, &before_isdst,
									 &boundary, &after_gmtoff, &after_isdst,
									 tz);
	}
	if (found < 0)
		elog(ERROR, "could not find the UTC offset of time zone \"%s\"",
			 pg_get_timezone_name(tz));

	*gmtoff = before_gmtoff;
	*until = (found == 1) ? boundary : PG_INT64_MAX;
}

/*
 * to_pg_time
 *		Converts a timestamp to the pg_time_t second that contains it.
 *
 * Works for TimestampTz and, for wall-clock readings, for Timestamp.
 * Rounds down, also before 1970.
 */
static pg_time_t
to_pg_time(int64 t)
{
	int64		secs = t / USECS_PER_SEC;

	if (t % USECS_PER_SEC < 0)
		secs--;
	return secs + (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY;
}

/*
 * from_pg_time
 *		Converts a pg_time_t to a timestamp (TimestampTz, or Timestamp for
 *		wall-clock readings).
 */
static int64
from_pg_time(pg_time_t t)
{
	return (t - (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY) *
		USECS_PER_SEC;
}

/*
 * report_timestamp_out_of_range
 *		Reports the usual ERROR for a timestamp out of range.
 */
static void
report_timestamp_out_of_range(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
			 errmsg("timestamp out of range")));
	pg_unreachable();
}
