#!/bin/sh
# Runs once, when the postgres container initialises an empty data volume.
# To add the role to an existing volume, run deploy/postgres/dashboard-role.sql
# by hand (docs/deployment.md).
set -eu
psql -v ON_ERROR_STOP=1 \
     --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v dashboard_password="$DASHBOARD_DB_PASSWORD" \
     -f /opt/tunefleet/dashboard-role.sql
