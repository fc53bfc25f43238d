# bgworker_demo/Makefile

MODULE_big = bgworker_demo
OBJS = \
	$(WIN32RES) \
	bgworker_demo.o \
	cron.o \
	daemon.o \
	jobs.o \
	launcher.o \
	monitor.o \
	schedule.o \
	shmem.o \
	worker.o

EXTENSION = bgworker_demo
DATA = bgworker_demo--1.0.sql
PGFILEDESC = "bgworker_demo - background workers, job queue and schedules"

REGRESS = setup workers jobs cron schedule daemon
REGRESS_OPTS = --temp-config=$(top_srcdir_abs)regress.conf \
	--temp-instance=./tmp_check_regress
TAP_TESTS = 1

# -Werror is added by CI only (WERROR=1), so that a new compiler's new
# warning does not break a user's build.
PG_CFLAGS = -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers
ifdef WERROR
PG_CFLAGS += -Werror
endif

ifdef USE_PGXS
PG_CONFIG = pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
top_srcdir_abs = $(CURDIR)/
include $(PGXS)
else
subdir = contrib/bgworker_demo
top_builddir = ../..
top_srcdir_abs = $(CURDIR)/
include $(top_builddir)/src/Makefile.global
include $(top_srcdir)/contrib/contrib-global.mk
endif
