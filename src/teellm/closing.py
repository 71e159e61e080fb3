"""``with obj:`` for objects that hold something to release."""

from __future__ import annotations

from typing import Self


class Closing:
    """Mixin: entering returns the object, leaving calls its ``close()``."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
