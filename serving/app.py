"""Run the service (`bentoml serve` in a subprocess) and package it as a Bento.

The server process reads its settings from CUSTOPS_* variables; `server_env` writes the caller's
`Settings` into them, so `serve(settings, ...)` serves exactly the home, registry and horizons
the caller has, whatever custops.toml the server's working directory holds.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from custops.errors import ConfigError
from custops.serving.config import ServingSettings
from custops.serving.reload_signal import SERVER_ID_ENV
from custops.settings import Settings

SERVICE = "custops.serving.service:CustopsService"
SERVING_DIR = Path(__file__).resolve().parent
BENTOFILE = SERVING_DIR / "bentofile.yaml"


def server_env(settings: Settings, serving: ServingSettings | None = None) -> dict[str, str]:
    """This process's environment plus `settings` (and `serving`) as CUSTOPS_* variables."""
    env = dict(os.environ)
    env["BENTOML_DO_NOT_TRACK"] = "true"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    # One OpenMP thread per LightGBM call: the server parallelises across requests, and on a busy
    # machine a 2-thread OpenMP region waits for a descheduled thread (~7 ms per booster call).
    env.setdefault("OMP_NUM_THREADS", "1")
    env["CUSTOPS_HOME"] = str(Path(settings.home).resolve())
    env["CUSTOPS_SEED"] = str(settings.seed)
    if settings.as_of is not None:
        env["CUSTOPS_AS_OF"] = settings.as_of.isoformat()
    else:
        env.pop("CUSTOPS_AS_OF", None)
    env["CUSTOPS_FEATURES"] = settings.features.model_dump_json()
    models = settings.models.model_dump(mode="json")
    models["tracking_uri"] = settings.tracking_uri()  # resolved here: a relative home means this cwd
    env["CUSTOPS_MODELS"] = json.dumps(models)
    if serving is not None:
        for name, value in serving.model_dump(mode="json", exclude_unset=True, exclude_none=True).items():
            env[f"CUSTOPS_SERVING_{name.upper()}"] = str(value)
    workers = (serving or ServingSettings()).workers
    env[SERVER_ID_ENV] = uuid.uuid4().hex  # the workers of this server share its reload signal
    env["BENTOML_CONFIG_OVERRIDES"] = json.dumps({"services": {"custops": {"workers": workers}}})
    return env


def server_command(host: str = "127.0.0.1", port: int = 3000, reload_code: bool = False) -> list[str]:
    """`bentoml serve` for the custops service with this interpreter (`reload_code`: restart on code edits)."""
    cmd = [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", host, "--port", str(port)]
    if reload_code:
        # Watch the service code only: the default (the working directory) may hold .custops/,
        # whose prediction log changes on every request and would restart the server in a loop.
        cmd += ["--reload", "--working-dir", str(SERVING_DIR)]
    return cmd


def start_server(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 3000,
    reload_code: bool = False,
    *,
    serving: ServingSettings | None = None,
    extra_env: Mapping[str, str] | None = None,
    **popen: Any,
) -> subprocess.Popen[bytes]:
    """Start the server in the background (its own process group, so `stop_server` reaches every worker)."""
    env = server_env(settings, serving) | dict(extra_env or {})
    return subprocess.Popen(server_command(host, port, reload_code), env=env, start_new_session=True, **popen)


def wait_ready(url: str, process: subprocess.Popen[bytes] | None = None, timeout: float = 120.0) -> None:
    """Block until GET {url}/readyz answers 200; a server that exits or stays unready is an error."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before it was ready")
        try:
            r = httpx.get(f"{url}/readyz", timeout=2)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as e:
            last = type(e).__name__
        time.sleep(0.25)
    raise TimeoutError(f"server at {url} not ready after {timeout:.0f}s ({last})")


def stop_server(process: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM the server's process group (workers flush their logs), SIGKILL it if it hangs."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
        except ProcessLookupError:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):  # workers that outlived the parent
        os.killpg(process.pid, signal.SIGKILL)
    return process.returncode if process.returncode is not None else -1


def serve(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 3000,
    reload_code: bool = False,
    *,
    serving: ServingSettings | None = None,
) -> int:
    """Run the server in the foreground until it exits or Ctrl-C; returns its exit code.

    Serving options not given in `serving` come from CUSTOPS_SERVING_* variables, as in the server.
    """
    process = start_server(settings, host, port, reload_code, serving=serving)
    try:
        return process.wait()
    except KeyboardInterrupt:
        return stop_server(process)
    finally:
        if process.poll() is None:
            stop_server(process)


def build_bento(version: str | None = None) -> str:
    """Package the service as a Bento in the local Bento store; returns its tag.

    The build context lays the sources out under their import name (src/ -> custops/,
    pipelines/ -> custops/pipelines/, serving/ -> custops/serving/), so the Bento imports
    `custops` without building a wheel; dependencies are the pinned requirements.lock. Models are
    not inside the Bento: like `serve`, it reads champions and the online store from CUSTOPS_HOME
    (mount that folder into the container), so a new champion needs no rebuild.
    """
    import bentoml
    import yaml

    root = SERVING_DIR.parent
    if not (root / "pyproject.toml").exists() or not (root / "requirements.lock").exists():
        raise ConfigError(f"build_bento needs the custops source tree (pyproject.toml, requirements.lock) in {root}")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    with tempfile.TemporaryDirectory(prefix="custops-bento-") as tmp:
        ctx = Path(tmp)
        shutil.copytree(root / "src", ctx / "custops", ignore=ignore)
        shutil.copytree(root / "pipelines", ctx / "custops" / "pipelines", ignore=ignore)
        shutil.copytree(SERVING_DIR, ctx / "custops" / "serving", ignore=ignore)
        pins = [
            line
            for line in (root / "requirements.lock").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith(("#", "-e"))
        ]
        (ctx / "requirements.txt").write_text("\n".join(pins) + "\n")
        config = yaml.safe_load(BENTOFILE.read_text())
        config.setdefault("python", {})["requirements_txt"] = "requirements.txt"
        (ctx / "bentofile.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        bento = bentoml.bentos.build_bentofile(str(ctx / "bentofile.yaml"), build_ctx=str(ctx), version=version)
    return str(bento.tag)
