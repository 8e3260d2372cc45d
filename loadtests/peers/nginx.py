# loadtests/peers/nginx: the nginx configuration for the redirect peer.
#
# One worker process (the server gets one core), `return 302 $target` where $target comes
# from a `map $uri $target` holding the same links linkedge serves (their exact Location),
# 404 for anything else. Two variants: access_log off, and a buffered access log
# (buffer=64k flush=1s) of what linkedge records per click (client address from
# X-Forwarded-For, time, request, status, referer, user agent, Accept-Language), the honest
# peer since it records clicks too. keepalive_requests is raised from nginx's default of
# 1000 so that neither server closes keep-alive connections during a run (linkedge has no
# such limit); everything else is nginx's default.
from __future__ import annotations

from pathlib import Path

LOG_FORMAT = (
    'log_format clicks \'$remote_addr $http_x_forwarded_for [$time_local] "$request" '
    '$status "$http_referer" "$http_user_agent" "$http_accept_language"\';'
)


def write_config(work: Path, map_path: Path, port: int, access_log: bool) -> Path:
    """Write nginx.conf (and its temp dirs) under `work`; return the config path."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "tmp").mkdir(exist_ok=True)
    log = (
        f"access_log {work}/access.log clicks buffer=64k flush=1s;"
        if access_log
        else "access_log off;"
    )
    entries = sum(1 for _ in map_path.open())
    conf = f"""
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    {LOG_FORMAT}
    {log}
    server_tokens off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path {work}/tmp/body;
    proxy_temp_path {work}/tmp/proxy;
    fastcgi_temp_path {work}/tmp/fastcgi;
    uwsgi_temp_path {work}/tmp/uwsgi;
    scgi_temp_path {work}/tmp/scgi;
    map_hash_max_size {max(2048, entries * 2)};
    map_hash_bucket_size 128;
    map $uri $target {{
        default "";
        include {map_path};
    }}
    server {{
        listen 127.0.0.1:{port} backlog=2048;
        location / {{
            if ($target = "") {{
                return 404;
            }}
            return 302 $target;
        }}
    }}
}}
"""
    path = work / "nginx.conf"
    path.write_text(conf)
    return path
