# loadtests: reproducible benchmarks of linkedge against nginx and a uvicorn+Starlette app.
#
# Not a test suite: pytest's testpaths is tests/ only, so nothing here is ever collected.
# Entry points: `make bench` (= `python -m loadtests.bench`) and `make hostile`
# (= `python -m loadtests.hostile`, attacks, faults and the fuzzer); see loadtests/README.md.
#
# Modules:
#   bench     the whole run: peers side by side under wrk, checks, scale figures, report
#   machine   what the machine is, how busy it is, CPU and RSS of a process from /proc
#   workload  links, client IPs, user agents, referrers; the DB, nginx map and wrk data
#   geodb     a realistic City-layout .mmdb built with mmdb-writer
#   peers/    how each server under test is configured and started
#   pipeline  enrichment + SQLite write throughput of the click pipeline alone
#   scale     RSS and load time for 100k / 1M links; stats latency on 1M / 10M clicks
#   report    results JSON, the Markdown table, docs/benchmarks.md
#   profile   py-spy profile of linkedge under the same load (by hand)
#   hostile   attacks and faults against a real server, each figure against its target
#   fuzz      atheris over the request parser and the URL validators
#   wrk/      the Lua script wrk runs: the request stream and exact counts
