# loadtests/peers: the servers linkedge is measured against, configured for a fair fight.
#
# nginx: one worker, `return 302` from a `map $uri $target` of the same links, with and
# without a buffered access log. starlette_app: what a Python user would write instead,
# a Starlette RedirectResponse from a dict, served by uvicorn (uvloop, httptools).
