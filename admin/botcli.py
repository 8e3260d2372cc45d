"""`linkedge bots explain UA`: the kind geo/bots.py gives a user agent, and why.

The same decision the collector makes for every click (geo.bots.explain, with ua-parser's
reading of the string), printed as `kind: ...` and `reason: ...` lines (or --json), with the
crawler list's name and version, so that a number on a dashboard can be explained.
"""

from __future__ import annotations

import argparse

from admin.admin_cli import print_json
from geo import bots
from geo.useragent import UserAgentParser


def cmd_bots_explain(args: argparse.Namespace) -> int:
    ua: str = args.user_agent
    info = UserAgentParser(cache_size=1).parse(ua)
    verdict = bots.explain(ua, info, is_head=args.head, is_prefetch=args.prefetch)
    listed = bots.list_info()
    result: dict[str, object] = {
        "kind": verdict.kind or "human",
        "reason": verdict.reason or "no signal: counted as a person",
        "bot_list": listed,
    }
    if args.json:
        print_json(result)
        return 0
    print(f"kind: {result['kind']}")
    print(f"reason: {result['reason']}")
    print(f"list: {listed['name']} {listed['version']} ({listed['patterns']} patterns)")
    return 0
