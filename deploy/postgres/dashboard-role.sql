-- A read-only PostgreSQL role for optuna-dashboard.
--
-- Run it as the owner of TuneFleet's tables (the role that `tunefleet migrate`
-- connects as), with psql:
--
--   psql "$OWNER_DATABASE_URL" -v ON_ERROR_STOP=1 \
--        -v dashboard_password="$DASHBOARD_DB_PASSWORD" -f deploy/postgres/dashboard-role.sql
--
-- It is idempotent (safe to run again, e.g. to change the password) and may run
-- before or after the first migration: the default privileges cover tables that
-- the owner creates later, and the explicit grant covers those that exist now.
--
-- Trade-off: optuna-dashboard writes for some features (study notes, marking a
-- trial's state or values by hand, creating or deleting studies). With this role
-- those features fail with "permission denied"; reading studies, trials,
-- intermediate values and plots works. The role can read every table in the
-- schema but the API tokens (tf_api_tokens): revoked below when the table exists
-- already, and by `tunefleet migrate` when it creates the table later. The
-- dashboard shows every owner's studies: give its address only to those who may
-- see them all.

SELECT 'CREATE ROLE dashboard_ro LOGIN'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'dashboard_ro')
\gexec

ALTER ROLE dashboard_ro WITH LOGIN PASSWORD :'dashboard_password';
ALTER ROLE dashboard_ro SET default_transaction_read_only = on;

GRANT CONNECT ON DATABASE :"DBNAME" TO dashboard_ro;
GRANT USAGE ON SCHEMA public TO dashboard_ro;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO dashboard_ro;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO dashboard_ro;

-- The API tokens' hashes are for the API only.
DO $$
BEGIN
  IF to_regclass('public.tf_api_tokens') IS NOT NULL THEN
    REVOKE ALL ON public.tf_api_tokens FROM dashboard_ro;
  END IF;
END
$$;
