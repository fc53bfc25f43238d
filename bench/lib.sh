# bench/lib.sh: helpers shared by the benchmark scripts (sourced, not run).
#
# Every script starts its own throwaway clusters under /tmp (initdb as the
# postgres OS user, unix socket in the cluster's own folder, no TCP), and a
# trap stops exactly those clusters (by data directory) and removes them on
# exit.  Set KEEP=1 to keep the folders (the clusters are stopped anyway).
#
# Environment:
#   SCALE=full|small   full sizes (default) or quick ones for trying things out
#   NO_BUILD=1         do not run "make install" (use what is installed)
#   KEEP=1             keep the cluster folders after the run

set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MAIN_DIR=$(dirname "$BENCH_DIR")
PGBIN=/usr/lib/postgresql/15/bin
PG_CONFIG=$PGBIN/pg_config
OUT=$BENCH_DIR/out
SCALE=${SCALE:-full}
BENCH_NAME=$(basename "$0")

mkdir -p "$OUT" "$OUT/logs"

log() { printf '%s [%s] %s\n' "$(date +%T)" "$BENCH_NAME" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (clusters are started as the postgres OS user)"

case "$SCALE" in
	full|small) ;;
	*) die "SCALE must be full or small, not '$SCALE'" ;;
esac

# pick VALUE_FOR_FULL VALUE_FOR_SMALL
pick() { if [ "$SCALE" = small ]; then echo "$2"; else echo "$1"; fi; }

as_pg() { runuser -u postgres -- "$@"; }

# Seconds since the epoch with microseconds.
now_s() { date +%s.%6N; }
# elapsed_ms START [END]: milliseconds between two now_s values.
elapsed_ms() { awk -v a="$1" -v b="${2:-$(now_s)}" 'BEGIN { printf "%.1f", (b - a) * 1000 }'; }

#---------------------------------------------------------------------------
# What the benchmarks need on the machine
#---------------------------------------------------------------------------

ensure_packages() {
	local missing=() p
	for p in "$@"; do
		dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		log "installing ${missing[*]}"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	fi
}

# Builds and installs the extension from the work tree, unless NO_BUILD=1.
# Other people edit the tree meanwhile: a failed build falls back to what
# is installed, with a warning.  Done once per run-all (BENCH_BUILT).
ensure_extension() {
	ensure_packages postgresql-15 postgresql-server-dev-15
	if [ -z "${NO_BUILD:-}" ] && [ -z "${BENCH_BUILT:-}" ]; then
		if make -C "$MAIN_DIR" -s USE_PGXS=1 PG_CONFIG=$PG_CONFIG install >"$OUT/logs/build.log" 2>&1; then
			log "built and installed bgworker_demo from $MAIN_DIR"
		else
			log "WARNING: make install failed (see $OUT/logs/build.log); using the installed copy"
		fi
		export BENCH_BUILT=1
	fi
	[ -f "$($PG_CONFIG --pkglibdir)/bgworker_demo.so" ] ||
		die "bgworker_demo is not installed"
}

#---------------------------------------------------------------------------
# Throwaway clusters
#---------------------------------------------------------------------------

BENCH_CLUSTERS=()

# Stops a cluster by its data directory, immediately; falls back to
# SIGKILL of the postmaster recorded in its own postmaster.pid.
stop_cluster_dir() {
	local data=$1 pid
	[ -f "$data/postmaster.pid" ] || return 0
	pid=$(head -1 "$data/postmaster.pid" 2>/dev/null || true)
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		as_pg $PGBIN/pg_ctl -D "$data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
		if kill -0 "$pid" 2>/dev/null &&
			tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$data"; then
			kill -9 "$pid" 2>/dev/null || true
		fi
	fi
}

cleanup_clusters() {
	local rc=$? dir
	set +e
	for dir in "${BENCH_CLUSTERS[@]}"; do
		[ -d "$dir" ] || continue
		stop_cluster_dir "$dir/data"
		[ -f "$dir/server.log" ] && cp "$dir/server.log" "$OUT/logs/$(basename "$dir").log"
		if [ -z "${KEEP:-}" ]; then
			rm -rf "$dir"
		else
			log "kept $dir"
		fi
	done
	[ $rc -ne 0 ] && log "failed (exit $rc); server logs are in $OUT/logs/"
	exit $rc
}
trap cleanup_clusters EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# new_cluster VAR NAME PORT: initdb a cluster in /tmp/bgwd-bench-NAME.XXXXXX,
# with the common settings plus the lines given on stdin (@DIR@ there is
# replaced by the cluster's folder, which is also its socket directory),
# and start it.
# Sets VAR to the cluster's folder (data in VAR/data, socket and
# server.log in VAR) and makes it the current cluster (use_cluster).
new_cluster() {
	local var=$1 name=$2 port=$3 dir  # var must not be "dir" or "var"
	case "$port" in 554[0-9][0-9]) ;; *) die "port $port is outside 55400-55499" ;; esac
	dir=$(mktemp -d "/tmp/bgwd-bench-$name.XXXXXX")
	BENCH_CLUSTERS+=("$dir")
	chown postgres:postgres "$dir"
	chmod 700 "$dir"
	echo "$port" >"$dir/port"
	as_pg $PGBIN/initdb -D "$dir/data" -A trust -U postgres -N -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 ||
		die "initdb failed: $(tail -5 "$dir/initdb.log")"
	{
		cat <<-CONF
		# bench common settings
		listen_addresses = ''
		port = $port
		unix_socket_directories = '$dir'
		shared_buffers = 256MB
		max_wal_size = 8GB
		checkpoint_timeout = 1h
		log_line_prefix = '%m [%p] %b: '
		log_min_messages = log
		CONF
		sed "s|@DIR@|$dir|g"
	} >>"$dir/data/postgresql.conf"
	printf -v "$var" '%s' "$dir"
	start_cluster "$dir"
	use_cluster "$dir"
}

start_cluster() {
	local dir=$1
	as_pg $PGBIN/pg_ctl -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null ||
		die "could not start $dir: $(tail -20 "$dir/server.log")"
}

# Makes DIR the cluster that psql_ and friends talk to.
use_cluster() {
	CUR_DIR=$1
	CUR_PORT=$(cat "$1/port")
}

postmaster_pid() { head -1 "${1:-$CUR_DIR}/data/postmaster.pid"; }

# psql_ ARGS...: psql on the current cluster as postgres, unaligned, tuples
# only, stop on error, killed after PSQL_TIMEOUT seconds (default 900).
psql_() {
	timeout -k 5 "${PSQL_TIMEOUT:-900}" runuser -u postgres -- \
		$PGBIN/psql -X -q -At -v ON_ERROR_STOP=1 \
		-h "$CUR_DIR" -p "$CUR_PORT" -d postgres "$@"
}
# q SQL: one query (one transaction), its result on stdout.
q() { psql_ -c "$1"; }

# set_conf 'name = value' ...: appends settings and reloads.
set_conf() {
	local line
	for line in "$@"; do
		echo "$line" >>"$CUR_DIR/data/postgresql.conf"
	done
	q "SELECT pg_reload_conf()" >/dev/null
	sleep 0.3
}

# wait_for SECONDS WHAT SQL [INTERVAL]: runs SQL (must return t or f) every
# INTERVAL seconds (0.1) until it returns t; dies after SECONDS.  Each
# check is its own short session: a session that stayed in one statement
# (a DO loop) would hold back the xmin horizon, so dead queue entries could
# not be marked dead in the indexes and every claim would get slower.
wait_for() {
	local limit=$1 what=$2 sql=$3 interval=${4:-0.1} deadline
	deadline=$(($(date +%s) + limit))
	while :; do
		[ "$(q "$sql" 2>/dev/null || true)" = t ] && return 0
		[ "$(date +%s)" -ge "$deadline" ] && die "timed out after ${limit}s waiting for $what"
		sleep "$interval"
	done
}

# wait_sql SECONDS WHAT CONDITION: wait_for of a boolean SQL expression,
# checked every 0.25 s (for the longer waits, such as a queue draining).
wait_sql() {
	wait_for "$1" "$2" "SELECT ($3)" 0.25
}

# Settings every bgworker_demo cluster gets: quiet, no monitor lines.
BGWD_CONF="shared_preload_libraries = 'bgworker_demo'
bgworker_demo.databases = 'postgres'
bgworker_demo.log_jobs = 'off'
bgworker_demo.monitor_interval = 0"

# Module processes of the current cluster: "pid<TAB>title" lines, found
# among the postmaster's children by process title (the monitor has no
# pg_stat_activity row).
module_pids() {
	local pm
	pm=$(postmaster_pid)
	ps -o pid=,args= --ppid "$pm" | awk '/bgworker_demo/ { pid = $1; $1 = ""; sub(/^ /, ""); print pid "\t" $0 }'
}
all_child_pids() {
	ps -o pid=,args= --ppid "$(postmaster_pid)" | awk '{ pid = $1; $1 = ""; sub(/^ /, ""); print pid "\t" $0 }'
}

# proc_sample PID: "cpu_ns run_count voluntary nonvoluntary" of a process.
# cpu_ns and run_count come from /proc/PID/schedstat (ns on CPU, times
# scheduled), the switches from /proc/PID/status.
proc_sample() {
	local pid=$1 s v n
	s=$(cat "/proc/$pid/schedstat" 2>/dev/null) || { echo "- - - -"; return; }
	v=$(awk '/^voluntary_ctxt_switches/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo -)
	n=$(awk '/^nonvoluntary_ctxt_switches/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo -)
	set -- $s
	echo "$1 $3 $v $n"
}

# proc_ticks PID: utime+stime in clock ticks, from /proc/PID/stat.
proc_ticks() {
	sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $12 + $13 }' || echo -
}

#---------------------------------------------------------------------------
# Tables
#---------------------------------------------------------------------------

# md_table FILE: prints a tab-separated file (first line = header) as an
# aligned markdown table.
md_table() {
	awk -F'\t' '
		{ for (i = 1; i <= NF; i++) { cell[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) } if (NF > nf) nf = NF; rows = NR }
		END {
			for (r = 1; r <= rows; r++) {
				line = "|"
				for (i = 1; i <= nf; i++) line = line sprintf(" %-*s |", w[i], cell[r, i])
				print line
				if (r == 1) {
					line = "|"
					for (i = 1; i <= nf; i++) { d = ""; for (k = 0; k < w[i]; k++) d = d "-"; line = line " " d " |" }
					print line
				}
			}
		}' "$1"
}

# emit_table FILE TITLE: prints the table under a title to stdout and saves
# it as out/<script>.txt (appending: a script may emit several tables).
emit_table() {
	local file=$1 title=$2 txt="$OUT/$BENCH_NAME.txt"
	{
		echo
		echo "### $title"
		echo
		md_table "$file"
	} | tee -a "$txt"
}

# begin_report: starts out/<script>.txt afresh, with the conditions.
begin_report() {
	local txt="$OUT/$BENCH_NAME.txt"
	{
		echo "## $BENCH_NAME ($1)"
		echo
		echo "$(date -u '+%Y-%m-%d %H:%M:%S UTC'), SCALE=$SCALE, load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
	} >"$txt"
	cat "$txt"
}
note() { echo "$*" | tee -a "$OUT/$BENCH_NAME.txt"; }

# SQL expression giving "n, median, p99, max" (ms, 3 decimals) of a column
# of milliseconds named ms in a subquery.
stats_sql() {
	cat <<SQL
SELECT count(*),
	round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 3),
	round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 3),
	round(max(ms)::numeric, 3)
FROM ($1) s
SQL
}
