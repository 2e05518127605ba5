"""`JsonFile`: JSON text and atomic file round-trips for any class with `to_dict` / `from_dict`."""

from __future__ import annotations

import json
import os

from .atomic import atomic_write_json


class JsonFile:
    """Mixin: `to_json` / `from_json` / `save` / `load` on top of the class's `to_dict` / `from_dict`."""

    def to_dict(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, data: dict):
        raise NotImplementedError

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike) -> None:
        """Write JSON to a temporary file next to `path`, then rename it into place."""
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike):
        with open(path) as handle:
            return cls.from_json(handle.read())
