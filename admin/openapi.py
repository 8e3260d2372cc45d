"""`GET /api/openapi.json`: an OpenAPI 3.1 description of the admin API, made from the router.

Rules:
- The paths, methods, path parameters and query parameters come from admin/http.py's
  Router as admin/api.py fills it: a route added there is described here with nothing
  else to do (tests/test_openapi.py fails on a route without a summary). What the router
  cannot know is written below per handler: a summary, the request body, the success
  status and the response's type.
- Errors have one shape (admin/http.py renders every one): `{"error": {"code", "message",
  "field"}}`; each operation lists the statuses it may answer with.
- The document validates with openapi-spec-validator, and schemathesis checks a live
  server against it (tests/test_openapi.py).
"""

from __future__ import annotations

from typing import Any, Final

from admin import alerts, conversions
from admin.http import Router
from edge import catalog

_NULLABLE_TEXT: Final = {"type": ["string", "null"]}
_TIME: Final = {
    "type": ["string", "integer", "null"],
    "description": "ISO 8601 (UTC without an offset), Unix ms, or relative like +7d",
}
LINK_PROPERTIES: Final[dict[str, Any]] = {
    "url": {"type": "string", "description": "absolute http or https destination"},
    "status": {"type": "integer", "enum": list(catalog.REDIRECT_STATUSES)},
    "title": _NULLABLE_TEXT,
    "notes": _NULLABLE_TEXT,
    "tags": {"type": ["array", "null"], "items": {"type": "string"}},
    "campaign": _NULLABLE_TEXT,
    **{name: _NULLABLE_TEXT for name in catalog.UTM_FIELDS},
    "forward_query": {"type": "boolean"},
    "query_precedence": {"type": "string", "enum": ["destination", "request"]},
    "cache_max_age_s": {"type": "integer", "minimum": 0},
    "disabled": {"type": "boolean"},
    "expires_at": _TIME,
    "expired_url": _NULLABLE_TEXT,
}
_OBJECT: Final = {"type": "object"}
_JSON_BODY: Final = "application/json"


def _object(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = list(required)
    return schema


_DOMAIN_BODY: Final = _object(
    {
        "host": {"type": "string"},
        "default": {"type": "boolean"},
        "root_url": _NULLABLE_TEXT,
        "fallback_url": _NULLABLE_TEXT,
        "case_insensitive_slugs": {"type": "boolean"},
    }
)
_CREATE_LINK: Final = _object(
    {**LINK_PROPERTIES, "slug": {"type": "string"}, "domain": {"type": "string"}}, ("url",)
)
_IMPORT_TYPES: Final = ("text/csv", "application/json", "application/sql", "text/plain")

# handler name -> (summary, success status, request body schema, response content type)
OPERATIONS: Final[dict[str, tuple[str, int, Any, str]]] = {
    "healthz": ("Health of the database, pipeline, GeoIP and workers", 200, None, _JSON_BODY),
    "metrics": ("Prometheus metrics", 200, None, "text/plain"),
    "openapi": ("This document", 200, None, _JSON_BODY),
    "list_links": ("List links (filters, cursor pagination)", 200, None, _JSON_BODY),
    "create_link": ("Create a link", 201, _CREATE_LINK, _JSON_BODY),
    "create_links_bulk": (
        "Create many links in one transaction",
        201,
        _object({"links": {"type": "array", "items": _CREATE_LINK}}, ("links",)),
        _JSON_BODY,
    ),
    "import_links": ("Import an export file of another shortener", 200, "import", _JSON_BODY),
    "get_link": ("One link", 200, None, _JSON_BODY),
    "patch_link": (
        "Change a link (served within a second)",
        200,
        _object({**LINK_PROPERTIES, "archived": {"type": "boolean"}}),
        _JSON_BODY,
    ),
    "delete_link": (
        "Archive a link (200), or with purge=true delete it (204)",
        200,
        None,
        _JSON_BODY,
    ),
    "link_stats": ("A link's stats over a time range", 200, None, _JSON_BODY),
    "link_velocity": ("A link's velocity", 200, None, _JSON_BODY),
    "link_checkpoints": ("A link's first 15/30/60 minutes", 200, None, _JSON_BODY),
    "launch_link": (
        "Mark the link's launch (send): now, or at `at` (ISO 8601, Unix ms, -5m)",
        200,
        _object({"at": {"type": ["string", "integer"]}}),
        _JSON_BODY,
    ),
    "unlaunch_link": ("Clear the link's launch", 200, None, _JSON_BODY),
    "campaign_launch": ("A campaign's launch", 200, None, _JSON_BODY),
    "launch_campaign": (
        "Mark a campaign's launch for its links without one of their own",
        200,
        _object({"at": {"type": ["string", "integer"]}}),
        _JSON_BODY,
    ),
    "unlaunch_campaign": ("Clear a campaign's launch", 200, None, _JSON_BODY),
    "link_qr": ("The link's QR code (scans count as source qr)", 200, None, "image"),
    "group_stats": ("Stats grouped by campaign, UTM field, tag or domain", 200, None, _JSON_BODY),
    "live": ("Live counters", 200, None, _JSON_BODY),
    "live_stream": ("Live counters as server-sent events", 200, None, "text/event-stream"),
    "list_domains": ("List domains", 200, None, _JSON_BODY),
    "create_domain": ("Add a domain", 201, _DOMAIN_BODY, _JSON_BODY),
    "get_domain": ("One domain", 200, None, _JSON_BODY),
    "patch_domain": ("Change a domain", 200, _DOMAIN_BODY, _JSON_BODY),
    "delete_domain": ("Remove a domain without links", 204, None, _JSON_BODY),
    "utm_allow_all": ("Allowed UTM values of every field", 200, None, _JSON_BODY),
    "utm_allow_get": ("Allowed values of one UTM field", 200, None, _JSON_BODY),
    "utm_allow_put": (
        "Set the allowed values of one UTM field",
        200,
        _object({"values": {"type": "array", "items": {"type": "string"}}}, ("values",)),
        _JSON_BODY,
    ),
    "utm_allow_delete": ("Allow any value of one UTM field", 204, None, _JSON_BODY),
    "list_tokens": ("List API tokens", 200, None, _JSON_BODY),
    "create_token": (
        "Create an API token (its secret is shown once)",
        201,
        _object(
            {
                "name": {"type": "string"},
                "scopes": {
                    "type": ["array", "string"],
                    "items": {"type": "string", "enum": list(catalog.SCOPES)},
                },
            },
            ("name",),
        ),
        _JSON_BODY,
    ),
    "revoke_token": ("Revoke a token", 200, None, _JSON_BODY),
    # admin/insights.py: history, baselines, reports, the dashboard's files
    "link_history": ("A link's change history", 200, None, _JSON_BODY),
    "link_baseline": ("A link against its baselines", 200, None, _JSON_BODY),
    "domain_history": ("A domain's change history", 200, None, _JSON_BODY),
    "campaign_baseline": ("A campaign's baselines", 200, None, _JSON_BODY),
    "source_baseline": ("A UTM source's baselines", 200, None, _JSON_BODY),
    "campaign_report": ("A campaign's report (JSON, Markdown, CSV)", 200, None, "report"),
    "root": ("To the dashboard", 302, None, "text/plain"),
    "index": ("The dashboard", 200, None, "text/html"),
    "asset": ("A file of the dashboard", 200, None, "dashboard"),
    **conversions.OPERATIONS,
}

OPERATIONS.update(alerts.OPENAPI_OPERATIONS)

# Statuses any /api request may get before or beside its own logic (admin/http.py).
_COMMON_ERRORS: Final = (400, 401, 403, 404, 405, 408, 409, 413, 414, 415, 422, 431, 503)
_OPEN_ERRORS: Final = (400, 404, 405, 408, 413, 414, 431, 503)  # /healthz, /metrics
ERROR_SCHEMA: Final = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "field"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": ["string", "null"]},
                "items": {"type": "array", "items": {"type": "object"}},
            },
        }
    },
}
_PATH_PARAMETERS: Final = {
    "id": {"type": "integer", "minimum": 0, "examples": [1]},
    "domain": {"type": "string", "minLength": 1, "examples": ["localhost"]},
    "slug": {"type": "string", "minLength": 1, "examples": ["a"]},
    "host": {"type": "string", "minLength": 1, "examples": ["localhost"]},
    "field": {"type": "string", "enum": list(catalog.UTM_FIELDS)},
    "name": {"type": "string", "minLength": 1, "examples": ["spring"]},  # a campaign, a source
    "file": {"type": "string", "minLength": 1, "examples": ["app.js"]},
}
# Operations whose JSON body may be left out.
_OPTIONAL_BODY: Final = frozenset({"launch_link", "launch_campaign"})


_TEXT: Final = {"type": "string"}
_FLAG: Final = {"type": "string", "enum": ["true", "false", "1", "0"], "examples": ["true"]}
# Query parameters with a known set of values (the rest are text the handler parses).
_QUERY_SCHEMAS: Final[dict[Any, dict[str, Any]]] = {
    "purge": _FLAG,
    "archived": _FLAG,
    "dry_run": _FLAG,
    "overwrite": _FLAG,
    "interval": {"type": "string", "enum": ["minute", "hour", "day"]},
    ("import_links", "from"): {
        "type": "string",
        "enum": ["bitly", "shlink", "yourls", "kutt", "csv"],
    },
    "error": {"type": "string", "enum": ["l", "m", "q", "h"]},
    "format": {"type": "string", "enum": ["json", "md", "csv"]},
}


def _content(kind: str) -> dict[str, Any]:
    if kind == "image":
        return {"image/svg+xml": {"schema": {"type": "string"}}, "image/png": {"schema": {}}}
    if kind == _JSON_BODY:
        return {kind: {"schema": _OBJECT}}
    if kind in ("report", "dashboard"):
        types = (
            ("text/markdown", "text/csv")
            if kind == "report"
            else ("text/html", "text/css", "text/javascript")
        )
        return {
            _JSON_BODY: {"schema": _OBJECT},
            **{t: {"schema": {"type": "string"}} for t in types},
        }
    return {kind: {"schema": {"type": "string"}}}


def _operation(method: str, path: str, handler: str, query: frozenset[str]) -> dict[str, Any]:
    summary, status, body, kind = OPERATIONS[handler]
    params: list[dict[str, Any]] = [
        {"name": seg[1:-1], "in": "path", "required": True, "schema": _PATH_PARAMETERS[seg[1:-1]]}
        for seg in path.split("/")
        if seg.startswith("{")
    ]
    params += [
        {"name": name, "in": "query", "required": name == "from" and handler == "import_links",
         "schema": _QUERY_SCHEMAS.get((handler, name), _QUERY_SCHEMAS.get(name, _TEXT))}
        for name in sorted(query)
    ]  # fmt: skip
    public = not path.startswith("/api/")
    errors = _OPEN_ERRORS if public else _COMMON_ERRORS
    success: dict[str, Any] = {"description": "OK"}
    if status != 204:
        success["content"] = _content(kind)
    responses: dict[str, Any] = {str(status): success}
    if handler == "delete_link":
        responses["204"] = {"description": "purged"}
    if handler == "healthz":
        responses["503"] = {"description": "unavailable", "content": _content(_JSON_BODY)}
    for code in errors:
        responses.setdefault(str(code), {"$ref": "#/components/responses/Error"})
    op: dict[str, Any] = {
        "operationId": f"{handler}_{method.lower()}" + ("_by_slug" if "{slug}" in path else ""),
        "summary": summary,
        "parameters": params,
        "responses": responses,
    }
    if handler == "link_qr":
        op["operationId"] += "_" + path.rsplit(".", 1)[-1]
    if body == "import":
        op["requestBody"] = {
            "required": True,
            "content": {t: {"schema": {"type": "string"}} for t in _IMPORT_TYPES},
        }
    elif body is not None:
        op["requestBody"] = {
            "required": handler not in _OPTIONAL_BODY,
            "content": {_JSON_BODY: {"schema": body}},
        }
    if public:
        op["security"] = []
    return op


def document(router: Router, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route the router holds."""
    paths: dict[str, dict[str, Any]] = {}
    for route in router.routes:
        path = "/" + "/".join(route.pattern)
        handler = getattr(route.handler, "__name__", "")
        paths.setdefault(path, {})[route.method.lower()] = _operation(
            route.method, path, handler, route.query
        )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "linkedge admin API",
            "version": version,
            "description": "Links, domains, stats, live counters and tokens (docs/api.md).",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": ERROR_SCHEMA},
            "responses": {
                "Error": {
                    "description": "an error: one JSON shape for every status",
                    "content": {_JSON_BODY: {"schema": {"$ref": "#/components/schemas/Error"}}},
                }
            },
        },
        "security": [{"bearer": []}],
    }
