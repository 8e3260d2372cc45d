# loadtests/peers/starlette_app: what a Python user would write instead of linkedge.
#
# A Starlette app answering GET /{slug} with RedirectResponse(302) from a dict loaded at
# import from the JSON file named by LOADTESTS_LINKS (slug -> Location, the same links and
# destinations linkedge serves), 404 otherwise. No click recording. Served by uvicorn with
# uvloop and httptools, access log off, one worker:
#   uvicorn loadtests.peers.starlette_app:app --loop uvloop --http httptools --no-access-log
from __future__ import annotations

import json
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

with open(os.environ.get("LOADTESTS_LINKS", "links.json"), encoding="utf-8") as f:
    LINKS: dict[str, str] = json.load(f)


async def redirect(request: Request) -> Response:
    target = LINKS.get(request.path_params["slug"])
    if target is None:
        return PlainTextResponse("Not Found\n", status_code=404)
    return RedirectResponse(target, status_code=302)


app = Starlette(routes=[Route("/{slug}", redirect)])
