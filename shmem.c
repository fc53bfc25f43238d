/*-------------------------------------------------------------------------
 *
 * shmem.c
 *		The shared memory of bgworker_demo: process slots, launchers and
 *		counters.
 *
 * The struct (BgwdShared, in bgworker_demo.h) is created once by the
 * postmaster in shmem_startup_hook and found again by every process of the
 * module and by every backend that calls one of our SQL functions.  After
 * a crash the postmaster creates it anew, which is why nothing in it needs
 * cleaning up after a crash restart.
 *
 * A slot is owned by one process at a time.  Static workers claim a free
 * slot themselves; a dynamic worker's slot is reserved by whoever registers
 * it, so that the registrant can count it at once and the worker can find
 * it through bgw_extra.  The owner releases its slot in a
 * before_shmem_exit callback, after which nobody may set its latch: the
 * latch pointer is cleared under the same lock that guards its readers.
 *
 * Copyright (c) 2026, bgworker_demo developers
 *
 * IDENTIFICATION
 *		bgworker_demo/shmem.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

#include "bgworker_demo.h"

static Size bgwd_shmem_size(void);
static int	count_slots(void);

/* Our struct in shared memory; NULL until attached */
BgwdShared *BgwdShmem = NULL;

/* The slot this process owns, or -1 */
int			MyBgwdSlot = -1;

/*
 * count_slots
 *		Number of process slots: every background worker the server can run,
 *		plus our static ones (counted in max_worker_processes too, but this
 *		keeps the sum safe if a slot's release is late).
 */
static int
count_slots(void)
{
	return max_worker_processes + BGWD_MAX_DATABASES + 2;
}

/*
 * bgwd_shmem_size
 *		Bytes needed for BgwdShared with its slots.
 */
static Size
bgwd_shmem_size(void)
{
	return add_size(offsetof(BgwdShared, slots),
					mul_size(count_slots(), sizeof(BgwdSlot)));
}

/*
 * BgwdShmemRequest
 *		Called from shmem_request_hook: reserves our space and one LWLock.
 */
void
BgwdShmemRequest(void)
{
	RequestAddinShmemSpace(bgwd_shmem_size());
	RequestNamedLWLockTranche(BGWD_TRANCHE_NAME, 1);
}

/*
 * BgwdShmemStartup
 *		Called from shmem_startup_hook in the postmaster (and, with
 *		EXEC_BACKEND, in every child): creates or attaches the struct.
 *
 * The postmaster fills in the launcher names from bgworker_demo.databases,
 * in the order in which _PG_init registered the launchers.
 */
void
BgwdShmemStartup(void)
{
	bool		found;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	BgwdShmem = ShmemInitStruct("bgworker_demo", bgwd_shmem_size(), &found);
	if (!found)
	{
		char	   *raw = pstrdup(bgworker_demo_databases);
		List	   *names = NIL;
		ListCell   *lc;

		memset(BgwdShmem, 0, bgwd_shmem_size());
		BgwdShmem->lock = &(GetNamedLWLockTranche(BGWD_TRANCHE_NAME))->lock;
		ConditionVariableInit(&BgwdShmem->job_done_cv);
		pg_atomic_init_u64(&BgwdShmem->jobs_submitted, 0);
		pg_atomic_init_u64(&BgwdShmem->jobs_succeeded, 0);
		pg_atomic_init_u64(&BgwdShmem->jobs_failed, 0);
		pg_atomic_init_u64(&BgwdShmem->workers_started, 0);
		pg_atomic_init_u64(&BgwdShmem->workers_exited, 0);
		BgwdShmem->nslots = count_slots();

		/* A bad list was reported by _PG_init already. */
		(void) SplitIdentifierString(raw, ',', &names);
		foreach(lc, names)
		{
			BgwdLauncher *l;

			if (BgwdShmem->nlaunchers >= BGWD_MAX_DATABASES)
				break;
			l = &BgwdShmem->launchers[BgwdShmem->nlaunchers++];
			strlcpy(l->dbname, (char *) lfirst(lc), NAMEDATALEN);
		}
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * BgwdShmemAttach
 *		Makes sure BgwdShmem is set in this process.
 *
 * It always is when the library was preloaded, since the startup hook ran
 * in the postmaster; the check protects SQL functions called in a server
 * where the library was loaded some other way.
 */
void
BgwdShmemAttach(void)
{
	if (BgwdShmem == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("bgworker_demo is not loaded through shared_preload_libraries"),
				 errhint("Add bgworker_demo to shared_preload_libraries in postgresql.conf and restart the server.")));
}

/*
 * BgwdClaimSlot
 *		A static worker takes a free slot for itself.
 *
 * Returns the slot index, or -1 if all are in use (cannot happen unless
 * slots leak: there are more slots than background workers).
 */
int
BgwdClaimSlot(BgwdKind kind, Oid dboid, Oid roleid)
{
	uint32		generation;
	int			slot = BgwdReserveSlot(kind, dboid, roleid, &generation);

	if (slot >= 0 && !BgwdAdoptSlot(slot, generation))
		slot = -1;				/* cannot happen: nobody else knows it */
	return slot;
}

/*
 * BgwdReserveSlot
 *		Reserves a free slot for a dynamic worker about to be registered.
 *
 * The slot stays STARTING until the worker adopts it (BgwdAdoptSlot) or
 * the caller gives it back (BgwdReleaseSlot).  Returns the index and the
 * new generation, or -1 if no slot is free.
 */
int
BgwdReserveSlot(BgwdKind kind, Oid dboid, Oid roleid, uint32 *generation)
{
	int			i;
	int			result = -1;

	LWLockAcquire(BgwdShmem->lock, LW_EXCLUSIVE);
	for (i = 0; i < BgwdShmem->nslots; i++)
	{
		BgwdSlot   *s = &BgwdShmem->slots[i];
		uint32		gen;

		if (s->state != BGWD_STATE_FREE)
			continue;
		gen = s->generation + 1;
		memset(s, 0, sizeof(BgwdSlot));
		s->generation = gen;
		s->kind = kind;
		s->state = BGWD_STATE_STARTING;
		s->dboid = dboid;
		s->roleid = roleid;
		s->reserved_at = GetCurrentTimestamp();
		*generation = gen;
		result = i;
		break;
	}
	LWLockRelease(BgwdShmem->lock);

	return result;
}

/*
 * BgwdAdoptSlot
 *		A dynamic worker takes over the slot reserved for it.
 *
 * Returns false if the slot is no longer ours to take: the reservation was
 * given back (the registrant thought the start failed) or reused.  The
 * worker should then exit quietly.
 */
bool
BgwdAdoptSlot(int slot, uint32 generation)
{
	BgwdSlot   *s;
	bool		ok = false;

	if (slot < 0 || slot >= BgwdShmem->nslots)
		return false;

	s = &BgwdShmem->slots[slot];
	LWLockAcquire(BgwdShmem->lock, LW_EXCLUSIVE);
	if (s->state == BGWD_STATE_STARTING && s->generation == generation)
	{
		s->state = BGWD_STATE_IDLE;
		s->pid = MyProcPid;
		s->latch = MyLatch;
		s->started_at = GetCurrentTimestamp();
		ok = true;
	}
	LWLockRelease(BgwdShmem->lock);

	if (ok)
		MyBgwdSlot = slot;
	return ok;
}

/*
 * BgwdReleaseSlot
 *		Marks a slot free.  Used by its owner on exit and by a registrant
 *		whose worker never started.
 */
void
BgwdReleaseSlot(int slot)
{
	BgwdSlot   *s;

	if (slot < 0 || BgwdShmem == NULL)
		return;
	s = &BgwdShmem->slots[slot];
	LWLockAcquire(BgwdShmem->lock, LW_EXCLUSIVE);
	s->state = BGWD_STATE_FREE;
	s->pid = 0;
	s->latch = NULL;
	s->job_id = 0;
	s->cancel_job_id = 0;
	s->exit_requested = false;
	LWLockRelease(BgwdShmem->lock);

	if (slot == MyBgwdSlot)
		MyBgwdSlot = -1;
}

/*
 * BgwdReleaseSlotAndWake
 *		before_shmem_exit callback of dynamic workers: gives back our slot
 *		and wakes our database's launcher, which decides what comes next.
 *		The launcher that started us may have been replaced since, so
 *		bgw_notify_pid alone is not enough.
 */
void
BgwdReleaseSlotAndWake(int code, Datum arg)
{
	Oid			dboid = InvalidOid;

	if (MyBgwdSlot >= 0)
		dboid = BgwdShmem->slots[MyBgwdSlot].dboid;
	BgwdReleaseSlot(MyBgwdSlot);
	/* Tells the launchers' orphan checks that there is something to look at. */
	pg_atomic_fetch_add_u64(&BgwdShmem->workers_exited, 1);
	if (OidIsValid(dboid))
		BgwdWakeLauncher(dboid, NULL);
}

/*
 * BgwdSetSlotState
 *		The owner of a slot publishes what it is doing.
 */
void
BgwdSetSlotState(int slot, BgwdState state, int64 job_id)
{
	BgwdSlot   *s;

	if (slot < 0)
		return;
	s = &BgwdShmem->slots[slot];
	LWLockAcquire(BgwdShmem->lock, LW_EXCLUSIVE);
	s->state = state;
	s->job_id = job_id;
	LWLockRelease(BgwdShmem->lock);
}

/*
 * BgwdFindLauncher
 *		The launcher entry for a database, by OID once connected or else by
 *		name; NULL if the database has no launcher.
 *
 * The caller must hold BgwdShmem->lock (shared is enough).
 */
BgwdLauncher *
BgwdFindLauncher(Oid dboid, const char *dbname)
{
	int			i;

	for (i = 0; i < BgwdShmem->nlaunchers; i++)
	{
		BgwdLauncher *l = &BgwdShmem->launchers[i];

		if (OidIsValid(dboid) && l->dboid == dboid)
			return l;
		if (dbname != NULL && strcmp(l->dbname, dbname) == 0)
			return l;
	}
	return NULL;
}

/*
 * BgwdWakeLauncher
 *		Sets the latch of a database's launcher, or, if it is not running
 *		(waiting to be restarted after a failed start), leaves a note that
 *		makes it skip its back-off when it starts.
 */
void
BgwdWakeLauncher(Oid dboid, const char *dbname)
{
	BgwdLauncher *l;

	LWLockAcquire(BgwdShmem->lock, LW_EXCLUSIVE);
	l = BgwdFindLauncher(dboid, dbname);
	if (l != NULL)
	{
		if (l->latch != NULL)
			SetLatch(l->latch);
		else
			l->wake_requested = true;
	}
	LWLockRelease(BgwdShmem->lock);
}

/*
 * BgwdKindName
 *		What workers() shows in its "type" column.
 */
const char *
BgwdKindName(BgwdKind kind)
{
	switch (kind)
	{
		case BGWD_KIND_LAUNCHER:
			return "launcher";
		case BGWD_KIND_MONITOR:
			return "monitor";
		case BGWD_KIND_STANDBY:
			return "standby";
		case BGWD_KIND_WORKER:
			return "worker";
		case BGWD_KIND_DAEMON:
			return "daemon";
		case BGWD_KIND_RAW:
			return "raw";
	}
	return "unknown";
}

/*
 * BgwdStateName
 *		What workers() shows in its "state" column.
 */
const char *
BgwdStateName(BgwdState state)
{
	switch (state)
	{
		case BGWD_STATE_FREE:
			return "free";
		case BGWD_STATE_STARTING:
			return "starting";
		case BGWD_STATE_IDLE:
			return "idle";
		case BGWD_STATE_RUNNING:
			return "running";
	}
	return "unknown";
}
