"""POST /admin/reload for every worker of a server, not only the one that answers it.

A multi-worker server (`ServingSettings.workers`) is several processes behind one port; a request
reaches one of them. The worker that reloads on POST /admin/reload announces it by writing a new
token to a small file that the server's workers share; each worker checks that file every
`POLL_SECONDS` (one `stat` and a short read) and reloads when the token is not the one it last saw.
So every worker starts an explicit reload within about a second (then loads, as the first did),
also with the registry watch (`watch_seconds`) off.

The file is keyed by the server: `CUSTOPS_SERVER_ID`, which `custops serve` sets for each server it
starts, or else the workers' parent process (the server's arbiter). Servers sharing a home do not
reload each other.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from custops.io import atomic_path

log = logging.getLogger(__name__)

SERVER_ID_ENV = "CUSTOPS_SERVER_ID"
POLL_SECONDS = 1.0


def signal_path(server_id: str | None = None) -> Path:
    """The reload file of this process's server (machine-local: a server's workers share a machine)."""
    sid = server_id or os.environ.get(SERVER_ID_ENV) or f"ppid{os.getppid()}"
    return Path(tempfile.gettempdir()) / f"custops-reload-{sid}"


class ReloadSignal:
    """The reload token of one server: `announce` a reload, or `poll` for one announced elsewhere."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen = self._read()  # a reload announced before this worker started: already loaded
        self._lock = threading.Lock()

    def _read(self) -> str | None:
        try:
            return self.path.read_text()
        except FileNotFoundError:
            return None

    def announce(self) -> None:
        """Tell the other workers to reload (this one has)."""
        token = uuid.uuid4().hex
        with self._lock:
            self._seen = token  # before the file changes: this worker's own poll must not reload again
            with atomic_path(self.path) as tmp:
                tmp.write_text(token)

    def poll(self) -> bool:
        """True once for each token announced since the last poll (by another worker)."""
        token = self._read()
        with self._lock:
            if token is None or token == self._seen:
                return False
            self._seen = token
            return True

    def follow(
        self, reload: Callable[[], object], stop: threading.Event, every: float = POLL_SECONDS
    ) -> threading.Thread:
        """Poll on a daemon thread until `stop` is set; call `reload` for each announced reload."""

        def run() -> None:
            while not stop.wait(every):
                try:
                    if self.poll():
                        reload()
                except Exception:  # an unreadable file or a failed load must not end the thread
                    log.warning("reload follower: check failed; retrying in %ss", every, exc_info=True)

        thread = threading.Thread(target=run, name="reload-follower", daemon=True)
        thread.start()
        return thread

    def remove(self) -> None:
        """Delete the file (at shutdown: the server's id is not used again)."""
        self.path.unlink(missing_ok=True)
