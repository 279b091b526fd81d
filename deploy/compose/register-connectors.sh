#!/bin/sh
# Registers every connector of deploy/connectors/ with Kafka Connect, filling in the
# ${PLACEHOLDERS} that differ between docker-compose and the native scripts/stack.
set -eu
until curl -fsS "$CONNECT_URL/connector-plugins" | grep -q PostgresConnector; do
  echo "waiting for Kafka Connect at $CONNECT_URL"; sleep 2
done
for file in /connectors/*.json; do
  name="$(basename "$file" .json)"
  sed -e "s/\${PG_HOST}/$PG_HOST/g" -e "s/\${PG_PORT}/$PG_PORT/g" \
      -e "s/\${PG_PASSWORD}/$PG_PASSWORD/g" -e "s/\${REPLICATION_FACTOR}/$REPLICATION_FACTOR/g" \
      "$file" >"/tmp/$name.json"
  code="$(curl -sS -o /tmp/answer -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
    --data-binary "@/tmp/$name.json" "$CONNECT_URL/connectors")"
  case "$code" in
    201) echo "registered $name" ;;
    409) echo "$name already registered" ;;
    *) echo "registering $name failed ($code): $(cat /tmp/answer)"; exit 1 ;;
  esac
done
