#!/usr/bin/env bash
# Bring up the real PostgreSQL and Redis the suite and the benchmarks use, on any Debian machine:
# install them from Debian's packages when missing, create a dedicated PostgreSQL cluster for the
# tests (its own port, listening on localhost only, trust on loopback) so a developer's own cluster is never
# touched or loosened, start both, and wait until they answer. Run by `make services` as root.
#
# Any failure is fatal: the suite never skips a missing service.
set -euo pipefail

PG_PORT=${CALLGATE_TEST_PG_PORT:-54329}
REDIS_PORT=${CALLGATE_TEST_REDIS_PORT:-6379}
CLUSTER=callgate-test

need=()
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
command -v pg_createcluster >/dev/null || need+=(postgresql-common)
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-cli >/dev/null || need+=(redis-tools)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need[*]}"
  if [ "$(id -u)" != 0 ]; then
    echo "need root to install ${need[*]} (or install them yourself)" >&2
    exit 1
  fi
  # Package scripts try to start services; on a machine without an init system that is noise.
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

version=$(ls /usr/lib/postgresql | sort -V | tail -1)

# The dedicated cluster: created once, then reused (each test makes its own databases in it).
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$version $CLUSTER"; then
  echo "creating PostgreSQL $version cluster '$CLUSTER' on 127.0.0.1:$PG_PORT"
  pg_createcluster "$version" "$CLUSTER" --port "$PG_PORT" \
    -o max_connections=300 \
    -- --auth-host=trust --auth-local=peer >/dev/null
fi
if ! pg_isready -q -h 127.0.0.1 -p "$PG_PORT"; then
  pg_ctlcluster --skip-systemctl-redirect "$version" "$CLUSTER" start
fi

if ! redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/callgate-test.log
fi
