"""Stop strings matched across chunk boundaries, with the output trimmed before them."""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """Hold back text that could be the start of a stop string until it is decided."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Add generated text; return what can be released now.

        After a stop string is found, ``stopped`` is True and the text before it is
        returned; everything from the stop string on is dropped.
        """
        if self.stopped:
            return ""
        if not self._stops:
            return text
        self._pending += text
        cut = min((i for i in (self._pending.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self._pending = self._pending[:cut], ""
            return out
        keep = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(self._pending)), keep, -1):
                if self._pending.endswith(stop[:k]):
                    keep = k
                    break
        out = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(self._pending) - keep :]
        return out

    def flush(self) -> str:
        """At the end without a stop: release the held-back text."""
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out
