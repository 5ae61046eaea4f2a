"""Hooks of .ci/api-fuzz's schemathesis runs.

POST /import takes NDJSON (the lossless export) or CSV (GoatCounter's export), media types
schemathesis has no serializer for. Its generated bodies are sent as bytes: text as UTF-8, anything else as its JSON, so the
route meets arbitrary lines (and, rarely, a valid one) and must answer each with a documented
status.
"""

import json

import schemathesis


@schemathesis.serializer("application/x-ndjson", "text/csv")
def ndjson(context, value):
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value).encode()


@schemathesis.hook
def filter_query(context, query):
    """Drops generated queries with a parameter that serializes to nothing (an empty list or
    null): such a "schema-violating" query reaches the server as a valid one without that
    parameter (seen: `{"granularity": "day", "x": []}` sent as `?granularity=day` and reported
    as accepted invalid data)."""
    if not isinstance(query, dict):
        return True
    return all(value not in ([], None) for value in query.values())
