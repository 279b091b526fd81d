"""Prints harmony conflict records (one JSON document per line on stdin) as a table."""
import json
import sys


def show(value):
    """A typed value ({"int": 93}, {"text": "…"}) as plain text."""
    if isinstance(value, dict) and len(value) == 1:
        return json.dumps(next(iter(value.values())))
    return json.dumps(value)


print(f"{'field':9} {'strategy':9} {'candidates':52} resolved")
for line in sys.stdin:
    if not line.strip().startswith("{"):
        continue
    record = json.loads(line)
    candidates = ", ".join(f"{c['system']}={show(c['value'])}" for c in record["candidates"])
    winner = f" ({record['winner']} wins)" if record.get("winner") else ""
    print(f"{record['field']:9} {record['strategy']:9} {candidates:52} {show(record['resolved'])}{winner}")
