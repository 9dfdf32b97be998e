#!/usr/bin/env bash
# Make sure the local PostgreSQL that the tests use is accepting connections.
set -euo pipefail
host=${PGHOST_TEST:-127.0.0.1}
port=${PGPORT_TEST:-5432}
if pg_isready -q -h "$host" -p "$port"; then
    exit 0
fi
echo "PostgreSQL is not running on $host:$port; starting the local cluster" >&2
version=$(ls /etc/postgresql | sort -V | tail -n 1)
pg_ctlcluster --skip-systemctl-redirect "$version" main start
for _ in $(seq 1 30); do
    pg_isready -q -h "$host" -p "$port" && exit 0
    sleep 1
done
echo "PostgreSQL did not come up on $host:$port" >&2
exit 1
