"""A real nginx from Debian's package in front of gunicorn instances: round-robin, no stickiness.

It runs as an unprivileged process (``nobody`` when the tests run as root) with a
prefix, pid file, logs and temporary folders of its own, on a free port; nothing
of the system's nginx is used but the binary. The access log names the instance
that served each request (``$upstream_addr``), so a test can tell where a
reconnect or a Stop went.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

NGINX = "/usr/sbin/nginx"

# The proxy configuration of docs/operations.md ("Any worker, any instance"), on the test's own paths and ports.
CONFIG = """\
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log notice;
events {{ worker_connections 512; }}
http {{
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    log_format upstream '$request_method $uri $status upstream=$upstream_addr last_event_id=$http_last_event_id';
    access_log {prefix}/access.log upstream;

    upstream llm_api {{
{servers}
        keepalive 16;
        keepalive_timeout 4s;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 1m;
        large_client_header_buffers 4 16k;
        location / {{
            proxy_pass http://llm_api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_buffering off;
            proxy_cache off;
            gzip off;
            proxy_read_timeout 600s;
            proxy_send_timeout 600s;
        }}
    }}
}}
"""


def require_nginx() -> None:
    if not os.path.exists(NGINX):
        reason = "nginx not installed (apt-get install nginx-light; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


class Nginx:
    """nginx on 127.0.0.1:``port``, balancing over ``upstreams`` (``host:port``) in the order given."""

    def __init__(self, port: int, upstreams: list[str]) -> None:
        require_nginx()
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.upstreams = upstreams
        self.prefix = Path(tempfile.mkdtemp(prefix="nginx-"))
        self._as_root = os.geteuid() == 0
        if self._as_root:  # nginx then runs as nobody, which must own its folder
            nobody = pwd.getpwnam("nobody")
            os.chown(self.prefix, nobody.pw_uid, nobody.pw_gid)
        self.process: subprocess.Popen | None = None

    def start(self, upstreams: list[str] | None = None) -> None:
        """Start (again), with ``upstreams`` in this order: a fresh round-robin starts at the first."""
        self.upstreams = upstreams or self.upstreams
        servers = "\n".join(f"        server {address};" for address in self.upstreams)
        config = self.prefix / "nginx.conf"
        config.write_text(CONFIG.format(prefix=self.prefix, port=self.port, servers=servers))
        identity = {"user": "nobody", "group": "nogroup"} if self._as_root else {}
        self.process = subprocess.Popen([NGINX, "-p", str(self.prefix), "-c", str(config),
                                         "-e", str(self.prefix / "error.log")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, **identity)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.process.returncode}:\n{self.error_log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not listen on {self.port}:\n{self.error_log()}")

    def stop(self) -> None:
        """Fast shutdown (``TERM``): open connections, streams included, are closed at once."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(10)
        self.process = None

    def access_log(self) -> list[str]:
        path = self.prefix / "access.log"
        return path.read_text().splitlines() if path.exists() else []

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.prefix, ignore_errors=True)
