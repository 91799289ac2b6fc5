"""One trained home and real servers over HTTP (auth off and on), shared by the serving tests.

The servers are `bentoml serve` subprocesses started the way `custops serve` starts them; they
start together (start-up is mostly imports, ~20 s) and are always killed at the end.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from custops.serving.app import start_server, stop_server, wait_ready
from custops.serving.config import ServingSettings
from custops.settings import Settings
from tests.conftest import model_test_settings

API_KEY = "s3cret-test-key"
MAX_BATCH = 50
MAX_K = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A real server process on a free local port, with its own prediction log."""

    settings: Settings
    workdir: Path
    api_key: str | None = None
    watch_seconds: float = 0.0
    workers: int = 1
    process: subprocess.Popen[bytes] | None = None
    url: str = ""
    _log: object = field(default=None, repr=False)

    @property
    def serving(self) -> ServingSettings:
        # One worker unless asked: log assertions address the one process that answers.
        return ServingSettings(
            max_batch=MAX_BATCH,
            max_k=MAX_K,
            log_dir=self.workdir / "logs",
            watch_seconds=self.watch_seconds,
            workers=self.workers,
        )

    @property
    def log_db(self) -> Path:
        return self.serving.predictions_db(self.settings)

    @property
    def output(self) -> Path:
        return self.workdir / "server.out"

    def start(self) -> Server:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.output, "ab")  # noqa: SIM115 - closed in stop()
        self.process = start_server(
            self.settings,
            port=port,
            serving=self.serving,
            extra_env={"CUSTOPS_API_KEY": self.api_key or ""},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    def wait(self) -> Server:
        assert self.process is not None
        try:
            wait_ready(self.url, self.process, timeout=240)
        except (RuntimeError, TimeoutError) as e:
            tail = self.output.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"{e}\n--- server output ---\n{tail}") from None
        return self

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ensure_running(self) -> Server:
        return self if self.running() else self.start().wait()

    def stop(self) -> None:
        if self.process is not None:
            stop_server(self.process)
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
            self._log = None

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"X-API-Key": key} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


@pytest.fixture(scope="session")
def serving_settings(feature_store_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The shared synthetic store (data, snapshot, online store) with every champion trained, recommender too."""
    from custops.pipelines.recommender import train_recommender
    from custops.pipelines.training import train_all

    home = tmp_path_factory.mktemp("serving") / ".custops"
    shutil.copytree(feature_store_home, home, ignore=shutil.ignore_patterns("mlflow", "registry", "serving_logs"))
    settings = model_test_settings(home, n_estimators=100)
    train_all(settings)
    assert train_recommender(settings).promoted
    return settings


@pytest.fixture(scope="session")
def servers(serving_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    root = tmp_path_factory.mktemp("servers")
    found = {
        "open": Server(serving_settings, root / "open"),
        # The auth server also runs with hot reload (as `custops serve --reload`), polling every second.
        "auth": Server(serving_settings, root / "auth", api_key=API_KEY, watch_seconds=1.0),
        # Two workers behind one port: POST /admin/reload reaches one of them, both must follow.
        "multi": Server(serving_settings, root / "multi", workers=2),
    }
    try:
        for server in found.values():  # start both, then wait: the start-ups overlap
            server.start()
        for server in found.values():
            server.wait()
        yield found
    finally:
        for server in found.values():
            server.stop()


@pytest.fixture
def server(servers: dict[str, Server]) -> Server:
    """The server without authentication."""
    return servers["open"].ensure_running()


@pytest.fixture
def auth_server(servers: dict[str, Server]) -> Server:
    """The server that wants X-API-Key (and hot-reloads new champions)."""
    return servers["auth"].ensure_running()


@pytest.fixture
def multi_server(servers: dict[str, Server]) -> Server:
    """The server with two worker processes (no hot reload)."""
    return servers["multi"].ensure_running()


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c
