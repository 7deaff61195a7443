#!/usr/bin/env bash
# Entrypoint of the orchestrate test PostgreSQL image (see README.md).
#
# It honours the contract of the official `postgres` image, which the product
# targets on users' machines:
#   - `docker run IMAGE -c name=value ...` runs `postgres -c name=value ...`;
#   - started as root, it fixes the ownership of $PGDATA and the socket dir,
#     then re-executes itself as the postgres user;
#   - on an empty $PGDATA (no PG_VERSION) it runs initdb with POSTGRES_USER,
#     POSTGRES_PASSWORD, POSTGRES_INITDB_ARGS, POSTGRES_HOST_AUTH_METHOD, creates
#     POSTGRES_DB and runs /docker-entrypoint-initdb.d/*; on an initialised
#     $PGDATA all POSTGRES_* variables are ignored;
#   - the server is finally exec'd, so it is PID 1 and gets docker's signals.
# The *_FILE variants (POSTGRES_PASSWORD_FILE, ...) are supported too.
set -Eeuo pipefail

export PGDATA="${PGDATA:-/var/lib/postgresql/data}"
SOCKET_DIR=/var/run/postgresql
INITDB_DIR=/docker-entrypoint-initdb.d
ME="${BASH_SOURCE[0]}"

err() { printf '%s\n' "$@" >&2; }

# usage: env_or_file VAR [DEFAULT] -- VAR, else the contents of the file named
# by VAR_FILE, else DEFAULT; exported as VAR.
env_or_file() {
	local var="$1" file_var="${1}_FILE" val="${2:-}"
	if [[ -n "${!var:-}" && -n "${!file_var:-}" ]]; then
		err "error: both $var and $file_var are set (but are exclusive)"
		exit 1
	fi
	if [[ -n "${!var:-}" ]]; then
		val="${!var}"
	elif [[ -n "${!file_var:-}" ]]; then
		val="$(<"${!file_var}")"
	fi
	export "$var=$val"
	unset "$file_var"
}

# True if the server arguments ask for something that exits at once
# (help, version): then no initialisation is done.
wants_help() {
	local a
	for a; do
		case "$a" in -'?' | --help | --describe-config | -V | --version) return 0 ;; esac
	done
	return 1
}

# True if the server arguments set listen_addresses themselves
# (-h HOST, -c listen_addresses=..., --listen_addresses=...).
sets_listen_addresses() {
	local a prev=""
	shopt -s nocasematch
	for a; do
		if [[ "$a" == -h* || "$a" == --listen[-_]addresses=* || "$a" == -clisten[-_]addresses=* ||
			("$prev" == -c && "$a" == listen[-_]addresses=*) ]]; then
			shopt -u nocasematch
			return 0
		fi
		prev="$a"
	done
	shopt -u nocasematch
	return 1
}

# Run psql against the temporary server, as POSTGRES_USER, stopping on errors.
run_sql() {
	psql -v ON_ERROR_STOP=1 --no-psqlrc --no-password --username "$POSTGRES_USER" "$@"
}

verify_minimum_env() {
	if [[ -z "$POSTGRES_PASSWORD" && "$POSTGRES_HOST_AUTH_METHOD" != trust ]]; then
		cat >&2 <<-'EOE'
			Error: Database is uninitialized and superuser password is not specified.
			       You must specify POSTGRES_PASSWORD to a non-empty value for the
			       superuser. For example, "-e POSTGRES_PASSWORD=password" on "docker run".

			       You may also use "POSTGRES_HOST_AUTH_METHOD=trust" to allow all
			       connections without a password. This is *not* recommended.
		EOE
		exit 1
	fi
	if [[ "$POSTGRES_HOST_AUTH_METHOD" == trust ]]; then
		err "WARNING: POSTGRES_HOST_AUTH_METHOD=trust: anyone who can reach the port can connect without a password."
	fi
}

# First start on an empty $PGDATA: initdb, create POSTGRES_DB, run init scripts.
# "$@" are the server arguments (without "postgres"); the temporary server gets
# them too, like in the official image (e.g. shared_preload_libraries).
init_database() {
	env_or_file POSTGRES_PASSWORD
	env_or_file POSTGRES_USER postgres
	env_or_file POSTGRES_DB "$POSTGRES_USER"
	env_or_file POSTGRES_INITDB_ARGS
	export POSTGRES_HOST_AUTH_METHOD="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
	verify_minimum_env

	# Fail now, not half-way, if the init scripts are unreadable.
	if [[ -d "$INITDB_DIR" ]]; then ls "$INITDB_DIR" >/dev/null; fi

	local locale_arg=--locale=C.UTF-8
	if ! locale -a 2>/dev/null | grep -qiE '^c\.utf-?8$'; then locale_arg=--no-locale; fi

	# Our defaults come first so that POSTGRES_INITDB_ARGS can override them.
	# Local (socket) connections are trusted like in the official image, so
	# `docker exec ... psql/pg_dump/pg_isready -U user` work without a password.
	local initdb_args=(
		--username="$POSTGRES_USER" --encoding=UTF8 "$locale_arg"
		--auth-local=trust --auth-host="$POSTGRES_HOST_AUTH_METHOD"
	)
	# POSTGRES_INITDB_ARGS is shell-quoted text ("--locale='en US' ..."), as in
	# the official image; it comes from whoever runs the container anyway.
	local extra=()
	eval "extra=( $POSTGRES_INITDB_ARGS )"
	if [[ -n "$POSTGRES_PASSWORD" ]]; then
		# The password only ever travels through a pipe, never argv or the log.
		initdb "${initdb_args[@]}" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") "${extra[@]}"
	else
		initdb "${initdb_args[@]}" "${extra[@]}"
	fi

	{
		printf '\n# Added by docker-entrypoint.sh\n'
		printf 'host all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD"
	} >>"$PGDATA/pg_hba.conf"
	printf '\npassword_encryption = scram-sha-256\n' >>"$PGDATA/postgresql.conf"

	# Temporary server: no TCP, and its socket in a private directory, so that
	# a health check (pg_isready on the default socket) and clients on the
	# published port only see the final server, never this one.
	local init_socket
	init_socket="$(mktemp -d /tmp/pg-init-socket.XXXXXX)"
	export PGHOST="$init_socket" PGPORT="${PGPORT:-5432}"
	# Needed by psql if POSTGRES_INITDB_ARGS made local connections require a password.
	export PGPASSWORD="${PGPASSWORD:-$POSTGRES_PASSWORD}"
	local server_args=("$@" -c "listen_addresses=" -c "unix_socket_directories=$init_socket" -p "$PGPORT")
	pg_ctl -D "$PGDATA" -w start -o "$(printf '%q ' "${server_args[@]}")"

	if [[ "$POSTGRES_DB" != postgres ]]; then
		local exists
		exists="$(run_sql --dbname postgres --tuples-only --no-align --set db="$POSTGRES_DB" \
			<<<"SELECT 1 FROM pg_database WHERE datname = :'db';")"
		if [[ -z "$exists" ]]; then
			# :"db" makes psql quote the name as an identifier.
			run_sql --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
		fi
	fi

	if [[ -d "$INITDB_DIR" ]]; then
		local f
		for f in "$INITDB_DIR"/*; do
			[[ -e "$f" ]] || continue
			case "$f" in
				*.sh)
					if [[ -x "$f" ]]; then
						echo "$0: running $f"
						"$f"
					else
						echo "$0: sourcing $f"
						set +u
						# shellcheck disable=SC1090
						. "$f"
						set -u
					fi
					;;
				*.sql) echo "$0: running $f"; run_sql --dbname "$POSTGRES_DB" -f "$f" ;;
				*.sql.gz) echo "$0: running $f"; gzip -dc "$f" | run_sql --dbname "$POSTGRES_DB" ;;
				*) echo "$0: ignoring $f" ;;
			esac
		done
	fi

	pg_ctl -D "$PGDATA" -m fast -w stop
	rmdir "$init_socket" || :
	unset PGHOST PGPORT PGPASSWORD

	printf '\nPostgreSQL init process complete; ready for start up.\n\n'
}

main() {
	# `docker run IMAGE -c x=y`: only server options were given.
	if [[ $# -eq 0 || "${1:0:1}" == - ]]; then
		set -- postgres "$@"
	fi

	if [[ "$1" != postgres ]] || wants_help "$@"; then
		exec "$@"
	fi

	if [[ "$(id -u)" == 0 ]]; then
		mkdir -p "$PGDATA" "$SOCKET_DIR"
		# Also repairs a volume written by an image whose postgres uid differs.
		find "$PGDATA" "$SOCKET_DIR" \! -user postgres -exec chown postgres:postgres '{}' +
		chmod 0700 "$PGDATA"
		chmod 3775 "$SOCKET_DIR"
		export HOME=/var/lib/postgresql
		exec setpriv --reuid=postgres --regid=postgres --init-groups -- "$ME" "$@"
	fi

	# From here on we are the postgres user (or whatever --user was given).
	mkdir -p "$PGDATA"
	chmod 0700 "$PGDATA" 2>/dev/null || :

	if [[ -s "$PGDATA/PG_VERSION" ]]; then
		printf '\nPostgreSQL Database directory appears to contain a database; Skipping initialization\n\n'
	else
		init_database "${@:2}"
	fi

	if ! sets_listen_addresses "${@:2}"; then
		set -- "$@" -c "listen_addresses=*"
	fi
	exec "$@"
}

main "$@"
