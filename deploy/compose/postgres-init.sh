#!/bin/sh
# First start of the compose Postgres: the `harmony` role and the three systems' databases,
# with the same schemas and seed rows as scripts/stack uses natively (scripts/sql/*.sql).
set -eu
psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d postgres <<SQL
CREATE ROLE harmony LOGIN REPLICATION PASSWORD '${HARMONY_DB_PASSWORD}';
CREATE DATABASE erp OWNER harmony;
CREATE DATABASE shop OWNER harmony;
CREATE DATABASE wms OWNER harmony;
SQL
for db in erp shop wms; do
  PGPASSWORD="$HARMONY_DB_PASSWORD" psql -v ON_ERROR_STOP=1 -h 127.0.0.1 -U harmony -d "$db" -f "/sql/$db.sql"
done
