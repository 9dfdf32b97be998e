"""A database outage: the user API answers 503 with Retry-After, and recovers on its own.

The API reaches PostgreSQL through a TCP proxy that the test cuts and restores.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import create_token, free_port, start_api_server
from tests.service.api.conftest import study_spec


class TcpProxy:
    """Forwards a local port to PostgreSQL until cut; can be restored on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Refuse new connections and drop the open ones, like a database going away."""
        with self._lock:
            if self._listener is not None:
                # shutdown() wakes the thread blocked in accept(); close() alone does not.
                with contextlib.suppress(OSError):
                    self._listener.shutdown(socket.SHUT_RDWR)
                self._listener.close()
                self._listener = None
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def proxied_api(migrated_pg_url: str, tmp_path: Path) -> Iterator[tuple[str, str, TcpProxy]]:
    url = make_url(migrated_pg_url)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    proxy.start()
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    server = start_api_server(proxied, tmp_path)
    token = create_token(migrated_pg_url, scope="user", owner="alice")
    try:
        yield server.url, token, proxy
    finally:
        server.stop()
        proxy.cut()


def test_database_outage_is_503_with_retry_after_then_recovers(proxied_api) -> None:
    base, token, proxy = proxied_api
    client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    created = client.post("/api/v1/studies", json=study_spec())
    assert created.status_code == 201, created.text
    study_id = created.json()["id"]

    proxy.cut()
    calls = [
        ("GET", "/api/v1/studies", None),
        ("GET", f"/api/v1/studies/{study_id}", None),
        ("GET", f"/api/v1/studies/{study_id}/trials", None),
        ("POST", f"/api/v1/studies/{study_id}/trials", {"params": {"lr": 0.01}}),
        ("POST", "/api/v1/studies", study_spec()),
    ]
    for method, path, body in calls:
        answer = client.request(method, path, json=body)
        assert answer.status_code == 503, (method, path, answer.text)
        assert int(answer.headers["Retry-After"]) > 0
        assert answer.json()["detail"]["code"] == "database_unavailable"
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert "tunefleet_database_up 0.0" in metrics.text

    proxy.start()
    for method, path, body in calls[:4]:
        answer = client.request(method, path, json=body)
        assert answer.status_code < 300, (method, path, answer.text)
    client.close()
