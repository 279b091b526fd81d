"""Prints harmony output records (one JSON document per line on stdin) as a table."""
import json
import sys

print(f"{'system':6} {'op':2}  {'table':9} changed row")
for line in sys.stdin:
    if not line.strip():
        continue
    record = json.loads(line)
    row = record["after"] if record["after"] is not None else record["before"]
    row = {k: v for k, v in row.items() if k != "updated_at"}
    system = record["harmony"]["system"]
    table = record["source"]["table"]
    print(f"{system:6} {record['op']:2}  {table:9} {json.dumps(row)}")
