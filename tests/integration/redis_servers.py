"""Private Redis servers for tests that must restart, reconfigure or front a server.

The shared Redis on 127.0.0.1:6379 must not be restarted or reconfigured by a test, so
tests of reconnection, unix sockets and Sentinel start their own ``redis-server`` in a
temporary directory on a free port. Under ``CI=true`` a missing ``redis-server`` binary
is a failure, as a missing service is.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

__all__ = [
    "RedisServer",
    "SentinelServer",
    "TlsRedisServer",
    "free_port",
    "redis_server_binary",
]


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        reason = "redis-server is not installed"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kill(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None:
        process.kill()
        process.wait(10)


def _wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"redis-server did not listen on 127.0.0.1:{port} in {timeout} s")


class RedisServer:
    """A throwaway ``redis-server`` on 127.0.0.1 and a unix socket; restartable."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.binary = redis_server_binary()
        self.directory = directory
        self.port = port or free_port()
        self.socket_path = str(directory / "redis.sock")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--unixsocket", self.socket_path, "--unixsocketperm", "700",
            "--save", "", "--appendonly", "no", "--dir", str(self.directory),
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_port(self.port)
        return self

    def stop(self) -> None:
        _kill(self.process)
        self.process = None

    def user_url(self, name: str, **acl: object) -> str:
        """Create ACL user ``name`` (password ``pw``; ``acl`` as redis-py's
        ``acl_setuser`` takes it, every key and command unless given) and return a URL
        that logs in as that user."""
        import redis

        rules: dict[str, object] = {"keys": ["*"], "commands": ["+@all"], **acl}
        admin = redis.Redis.from_url(self.url)
        try:
            admin.acl_setuser(name, enabled=True, passwords=["+pw"], **rules)
        finally:
            admin.close()
        return self.url.replace("redis://", f"redis://{name}:pw@")

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()


class SentinelServer:
    """A ``redis-server --sentinel`` watching one master under the name ``mymaster``."""

    def __init__(self, directory: Path, master_port: int) -> None:
        self.binary = redis_server_binary()
        self.port = free_port()
        self.config = directory / "sentinel.conf"
        self.config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {directory}\n"
            f"sentinel monitor mymaster 127.0.0.1 {master_port} 1\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> SentinelServer:
        self.process = subprocess.Popen(
            [self.binary, str(self.config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for_port(self.port)
        return self

    def stop(self) -> None:
        _kill(self.process)
        self.process = None


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        reason = "openssl is not installed (needed to make test certificates)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    subprocess.run([binary, *args], cwd=cwd, check=True, capture_output=True)


class TlsRedisServer:
    """A ``redis-server`` speaking only TLS, with a throwaway CA and server certificate."""

    def __init__(self, directory: Path) -> None:
        self.binary = redis_server_binary()
        self.directory = directory
        self.port = free_port()
        self.ca = directory / "ca.crt"
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
            "-out", "ca.crt", "-days", "2", "-subj", "/CN=celeriac-test-ca", cwd=directory,
        )  # fmt: skip
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
            "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=directory,
        )  # fmt: skip
        (directory / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
        _openssl(
            "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf",
            cwd=directory,
        )  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> TlsRedisServer:
        d = self.directory
        self.process = subprocess.Popen(
            [
                self.binary, "--port", "0", "--tls-port", str(self.port),
                "--bind", "127.0.0.1", "--tls-cert-file", str(d / "server.crt"),
                "--tls-key-file", str(d / "server.key"), "--tls-ca-cert-file", str(self.ca),
                "--tls-auth-clients", "no", "--save", "", "--dir", str(d),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_for_port(self.port)
        return self

    def stop(self) -> None:
        _kill(self.process)
        self.process = None
