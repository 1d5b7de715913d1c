"""The engine's cache of compiled schema validators, in a private directory.

Compiling every validator of OCPP 2.0.1 takes about a second (2.1: two), on
every engine start; loading the same code from here takes about 10 ms. The
cache holds code that the engine executes, so it is only read from a
directory and files that this user owns and nobody else may write, as
Python treats its own ``__pycache__``. Anything wrong with the cache (no
home directory, a read-only disk, a file of another user) only means
compiling again.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile

__all__ = ["DiskCodeCache", "default_directory"]

log = logging.getLogger(__name__)


def default_directory() -> str:
    """``$XDG_CACHE_HOME/ocpp-nodes``, else ``~/.cache/ocpp-nodes``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ocpp-nodes")


def _private(status: os.stat_result) -> bool:
    return status.st_uid == os.getuid() and not status.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


class DiskCodeCache:
    """:class:`~ocpp_nodes.schemas.CodeCache` in ``directory`` (made 0700 when missing)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def _path(self, key: str) -> str:
        return os.path.join(self.directory, f"validators-{key}.marshal")

    def load(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            if not _private(os.stat(self.directory)):
                log.warning("not using the schema cache %s: not private to this user", path)
                return None
            with open(path, "rb") as file:
                if not _private(os.fstat(file.fileno())):
                    log.warning("not using the schema cache %s: not private to this user", path)
                    return None
                return file.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.debug("cannot read the schema cache %s: %s", path, exc)
            return None

    def store(self, key: str, data: bytes) -> None:
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            if not _private(os.stat(self.directory)):
                return
            descriptor, temporary = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            try:
                with os.fdopen(descriptor, "wb") as file:
                    file.write(data)
                os.replace(temporary, self._path(key))  # whole or not at all
            except BaseException:
                os.unlink(temporary)
                raise
        except OSError as exc:
            log.debug("cannot keep compiled schemas in %s: %s", self.directory, exc)
