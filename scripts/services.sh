#!/usr/bin/env bash
# Starts the PostgreSQL and Redis the tests use, on 127.0.0.1, without systemd (containers, CI).
#
#   sudo scripts/services.sh                  # install if missing, start, check
#   eval "$(sudo scripts/services.sh)"        # ... and export the two variables below
#
# As root it installs Debian's `postgresql` and `redis-server` when missing (apt-get), then:
#   PostgreSQL: the newest installed major version's cluster `main` (created if there is none),
#     listening on 127.0.0.1:5432 (conf.d/conveyor.conf), user postgres without a password for
#     local-socket and 127.0.0.1 connections (`trust` lines put first in pg_hba.conf), and a
#     database `test`. Started with pg_ctlcluster (postgresql-common), which needs no systemd.
#   Redis: redis-server on 127.0.0.1:6379, daemonized, as user redis when it exists, with
#     Debian's /etc/redis/redis.conf when present.
# Idempotent: what already runs is left running (and said so); a second run only checks. Both
# are left running when the script ends. It finally checks that both answer
# (psql ... -c 'select 1', redis-cli ping) and prints, on stdout and nothing else:
#   export CONVEYOR_TEST_POSTGRES=postgres://postgres@127.0.0.1:5432/test
#   export CONVEYOR_TEST_REDIS=redis://127.0.0.1:6379
# Progress and errors go to stderr. Not for a machine whose PostgreSQL holds anything you care
# about: it makes user postgres password-less on 127.0.0.1.
set -euo pipefail

PG_PORT=5432
PG_DB="test"
REDIS_PORT=6379
HBA_MARK="# conveyor scripts/services.sh: password-less postgres on the socket and 127.0.0.1"

say() { echo "services.sh: $*" >&2; }
die() { say "$*"; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "$1: run as root (e.g. sudo $0)"; }

pg_answers() { psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -tAq -c 'select 1' >/dev/null 2>&1; }
redis_answers() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }

# --- packages ----------------------------------------------------------------------------------
pg_bin_dir() { # the newest /usr/lib/postgresql/VERSION/bin with a server in it
  local d best=""
  for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V); do
    [ -x "$d/postgres" ] && best=$d
  done
  [ -n "$best" ] && echo "$best"
}
missing=()
if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ -z "$(pg_bin_dir || true)" ]; then
  missing+=(postgresql)
fi
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
if [ "${#missing[@]}" -gt 0 ]; then
  need_root "installing ${missing[*]}"
  say "installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq -o Dpkg::Use-Pty=0 "${missing[@]}" >&2
fi

# --- PostgreSQL --------------------------------------------------------------------------------
bin=$(pg_bin_dir) || die "no PostgreSQL server under /usr/lib/postgresql/*/bin after installing"
PG_VERSION=$(basename "$(dirname "$bin")")
PG_CLUSTER=main
conf_dir="/etc/postgresql/$PG_VERSION/$PG_CLUSTER"

if [ ! -d "$conf_dir" ]; then
  need_root "creating the PostgreSQL $PG_VERSION cluster $PG_CLUSTER"
  say "creating the PostgreSQL $PG_VERSION cluster $PG_CLUSTER"
  pg_createcluster "$PG_VERSION" "$PG_CLUSTER" --port "$PG_PORT" >&2
fi

pg_changed=0
# Settings: conf.d is included last by Debian's postgresql.conf, so these win.
conf_d="$conf_dir/conf.d/conveyor.conf"
want_conf="# Written by conveyor's scripts/services.sh.
listen_addresses = '127.0.0.1'
port = $PG_PORT"
if [ "$(cat "$conf_d" 2>/dev/null || true)" != "$want_conf" ]; then
  need_root "configuring PostgreSQL"
  mkdir -p "$conf_dir/conf.d"
  printf '%s\n' "$want_conf" >"$conf_d"
  pg_changed=1
fi
# Authentication: pg_hba.conf is first-match, so our lines go first.
hba="$conf_dir/pg_hba.conf"
if ! grep -qxF "$HBA_MARK" "$hba"; then
  need_root "configuring PostgreSQL authentication"
  tmp=$(mktemp "$hba.XXXXXX")
  {
    echo "$HBA_MARK"
    echo "local   all   postgres                 trust"
    echo "host    all   postgres   127.0.0.1/32  trust"
    echo "# end of conveyor's lines"
    cat "$hba"
  } >"$tmp"
  chown --reference="$hba" "$tmp"
  chmod --reference="$hba" "$tmp"
  mv "$tmp" "$hba"
  pg_changed=1
fi

pg_status=$(pg_lsclusters -h "$PG_VERSION" "$PG_CLUSTER" 2>/dev/null | awk '{print $4}')
if [ "$pg_status" = online ]; then
  if [ "$pg_changed" = 1 ]; then
    # listen_addresses and port need a restart, pg_hba.conf only a reload.
    say "PostgreSQL $PG_VERSION/$PG_CLUSTER is running; restarting it for the new settings"
    pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" restart >&2
  else
    say "PostgreSQL $PG_VERSION/$PG_CLUSTER already running"
  fi
else
  need_root "starting PostgreSQL"
  say "starting PostgreSQL $PG_VERSION/$PG_CLUSTER on 127.0.0.1:$PG_PORT"
  install -d -o postgres -g postgres -m 2775 /var/run/postgresql
  pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start >&2 ||
    { tail -n 30 "/var/log/postgresql/postgresql-$PG_VERSION-$PG_CLUSTER.log" >&2 || true
      die "PostgreSQL did not start (log above)"; }
fi
for _ in $(seq 1 100); do pg_answers && break; sleep 0.1; done
pg_answers || die "PostgreSQL does not answer on 127.0.0.1:$PG_PORT as user postgres"
if [ -z "$(psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -tAq \
  -c "select 1 from pg_database where datname = '$PG_DB'")" ]; then
  say "creating database $PG_DB"
  psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -q -c "create database $PG_DB" >&2
fi

# --- Redis -------------------------------------------------------------------------------------
if redis_answers; then
  say "Redis already running on 127.0.0.1:$REDIS_PORT"
else
  need_root "starting Redis"
  say "starting Redis on 127.0.0.1:$REDIS_PORT"
  redis_args=(--daemonize yes --supervised no --bind 127.0.0.1 --port "$REDIS_PORT")
  run_as=()
  if id redis >/dev/null 2>&1; then
    install -d -o redis -g redis -m 2775 /run/redis
    install -d -o redis -g redis -m 750 /var/lib/redis /var/log/redis
    redis_args+=(--pidfile /run/redis/redis-server.pid --dir /var/lib/redis
      --logfile /var/log/redis/redis-server.log)
    run_as=(runuser -u redis --)
  fi
  if [ -r /etc/redis/redis.conf ]; then
    "${run_as[@]}" redis-server /etc/redis/redis.conf "${redis_args[@]}" >&2
  else
    "${run_as[@]}" redis-server "${redis_args[@]}" >&2
  fi
  for _ in $(seq 1 50); do redis_answers && break; sleep 0.1; done
fi

# --- check, print ------------------------------------------------------------------------------
psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d "$PG_DB" -c 'select 1' >&2 ||
  die "PostgreSQL: psql -h 127.0.0.1 -U postgres -d $PG_DB failed"
redis_answers || {
  tail -n 20 /var/log/redis/redis-server.log >&2 2>/dev/null || true
  die "Redis does not answer PING on 127.0.0.1:$REDIS_PORT"
}
say "redis-cli -h 127.0.0.1 -p $REDIS_PORT ping: PONG"
echo "export CONVEYOR_TEST_POSTGRES=postgres://postgres@127.0.0.1:$PG_PORT/$PG_DB"
echo "export CONVEYOR_TEST_REDIS=redis://127.0.0.1:$REDIS_PORT"
