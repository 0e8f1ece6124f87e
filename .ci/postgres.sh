#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on 127.0.0.1 for the test suite, from Debian's packages.
#   source .ci/postgres.sh        # exports LLM_API_TEST_POSTGRES_URL; stop it with: pg_test_stop
# Runs the server as the `postgres` system user (PostgreSQL refuses to run as root).
# Sourced: it leaves the caller's shell options alone and checks each step itself.

PG_TEST_PORT="${PG_TEST_PORT:-54329}"
PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
if [ -z "$PG_BIN" ]; then
  echo "postgres.sh: no PostgreSQL server found (apt-get install postgresql)" >&2
  return 1 2>/dev/null || exit 1
fi
PG_TEST_DIR="$(mktemp -d /tmp/llm-api-pg.XXXXXX)"
as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
[ "$(id -u)" = 0 ] && chown postgres "$PG_TEST_DIR"
if ! as_postgres "$PG_BIN/initdb" -D "$PG_TEST_DIR/data" -A trust -U postgres -E UTF8 >/dev/null ||
   ! as_postgres "$PG_BIN/pg_ctl" -D "$PG_TEST_DIR/data" -l "$PG_TEST_DIR/server.log" -w \
       -o "-h 127.0.0.1 -p $PG_TEST_PORT -k $PG_TEST_DIR -c fsync=off -c max_connections=200" start >/dev/null; then
  echo "postgres.sh: PostgreSQL did not start (see $PG_TEST_DIR/server.log)" >&2
  return 1 2>/dev/null || exit 1
fi
export LLM_API_TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:$PG_TEST_PORT/postgres"
pg_test_stop() {
  as_postgres "$PG_BIN/pg_ctl" -D "$PG_TEST_DIR/data" -m fast -w stop >/dev/null || true
  rm -rf "$PG_TEST_DIR"
}
echo "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_TEST_PORT"
