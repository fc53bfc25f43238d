/*-------------------------------------------------------------------------
 *
 * cron.h
 *		Schedule specs (cron expressions and intervals): parsing and
 *		computation of the next due time.
 *
 * Copyright (c) 2026, bgworker_demo developers
 *
 * IDENTIFICATION
 *		bgworker_demo/cron.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef BGWD_CRON_H
#define BGWD_CRON_H

#include "datatype/timestamp.h"
#include "pgtime.h"

/*
 * A parsed cron expression: one bit per value that each field selects.
 */
typedef struct CronSpec
{
	uint64		minutes;		/* bit m set: minute m, 0-59 */
	uint32		hours;			/* bits 0-23 */
	uint32		days;			/* bits 1-31, day of month */
	uint16		months;			/* bits 1-12 */
	uint8		weekdays;		/* bits 0-6, Sunday = 0 (7 also accepted as
								 * Sunday in input) */
	bool		days_star;		/* day-of-month field was '*' (or '?') */
	bool		weekdays_star;	/* day-of-week field was '*' (or '?') */
} CronSpec;

/*
 * A parsed schedule spec: an interval or a cron expression.
 */
typedef struct BgwdSpec
{
	bool		is_interval;
	int64		interval_us;	/* when is_interval: period in microseconds */
	CronSpec	cron;			/* otherwise */
} BgwdSpec;

/*
 * Parses text into *spec; ereports ERROR (ERRCODE_INVALID_PARAMETER_VALUE)
 * naming the bad field.
 */
extern void BgwdParseSpec(const char *text, BgwdSpec *spec);

/*
 * First due time strictly after "after".  For an interval: after + period.
 * For cron: evaluated in bgworker_demo's time zone (see cron.c).
 */
extern TimestampTz BgwdSpecNext(const BgwdSpec *spec, TimestampTz after);

/* The pg_tz that cron specs are evaluated in. */
extern pg_tz *BgwdScheduleTimezone(void);

#endif							/* BGWD_CRON_H */
