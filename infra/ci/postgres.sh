#!/usr/bin/env bash
# A throw-away PostgreSQL server for the test suite (the MLflow registry on PostgreSQL test).
#   source infra/ci/postgres.sh   -> installs Debian's postgresql if needed, starts a server in a
#                                    temporary data dir on a free port, exports LABSE_TEST_POSTGRES_URI,
#                                    and stops it (and deletes the data dir) when the shell exits.
# Needs root (apt-get, runuser) like the CI machines; without root or apt it prints why and returns
# without exporting anything (the test then says it was skipped for lack of a server).

labse_pg_start() {
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
      echo "postgres.sh: no PostgreSQL and no root/apt-get to install it; PostgreSQL tests will be skipped" >&2
      return 0
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null; } \
      || { echo "postgres.sh: apt-get install postgresql failed" >&2; return 1; }
  fi
  local bin port dir user
  bin=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  dir=$(mktemp -d /tmp/labse-pg.XXXXXX)
  user=postgres                                   # initdb refuses to run as root
  id "$user" >/dev/null 2>&1 || user=$(id -un)
  chown "$user" "$dir"
  local run=(runuser -u "$user" --)
  [ "$(id -u)" = 0 ] || run=()
  "${run[@]}" "$bin/initdb" -D "$dir/data" -U labse --auth=trust -E UTF8 >/dev/null
  "${run[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
  export LABSE_PG_DIR="$dir" LABSE_PG_BIN="$bin" LABSE_PG_USER="$user"
  # SQLAlchemy 2.1 (MLflow's engine) reads a bare postgresql:// as psycopg 3; psycopg2 is what is pinned.
  export LABSE_TEST_POSTGRES_URI="postgresql+psycopg2://labse@127.0.0.1:$port/postgres"
  trap labse_pg_stop EXIT
  echo "postgres.sh: PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port" >&2
}

labse_pg_stop() {
  [ -n "${LABSE_PG_DIR:-}" ] || return 0
  local run=(runuser -u "$LABSE_PG_USER" --)
  [ "$(id -u)" = 0 ] || run=()
  "${run[@]}" "$LABSE_PG_BIN/pg_ctl" -D "$LABSE_PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$LABSE_PG_DIR"
  unset LABSE_PG_DIR
}

labse_pg_start
