"""Tensors in protected memory: the KV cache and any converted weights.

The KV cache holds what prompts became, and a precision conversion (bf16 -> float32,
int8 quantisation) creates a second plaintext copy of weights; both belong in the same
protected memory as the bundle's plaintext (teellm.memory.ProtectedBuffer: memfd_secret
or mlock + MADV_DONTDUMP), zeroized on close. Where protected memory is unavailable the
arena falls back to ordinary tensors and says so in ``protected``.
"""

from __future__ import annotations

import logging
import math

import torch

log = logging.getLogger(__name__)

_ALIGN = 64


class TensorArena:
    """Allocates tensors, each in its own protected buffer (zeroized on ``close``)."""

    def __init__(self, *, protect: bool = True) -> None:
        self.protect = protect
        self.protected = protect
        self._buffers: list[object] = []
        self.bytes = 0

    def zeros(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A zero-filled tensor (fresh anonymous pages are zero)."""
        nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
        self.bytes += nbytes
        if self.protect and nbytes:
            try:
                from teellm.memory import ProtectedBuffer

                buf = ProtectedBuffer(nbytes)
            except (OSError, MemoryError) as exc:
                if self.protected:
                    log.warning("protected memory unavailable (%s); using ordinary memory", exc)
                self.protected = False
            else:
                self._buffers.append(buf)
                return torch.frombuffer(buf.view, dtype=dtype, count=math.prod(shape)).view(shape)
        return torch.zeros(shape, dtype=dtype)

    def copy_of(self, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``tensor`` converted to ``dtype``, written straight into the arena."""
        out = self.zeros(tuple(tensor.shape), dtype)
        out.copy_(tensor)
        return out

    def close(self) -> None:
        """Zeroize and release every buffer (tensors still referenced then read zeros)."""
        for buf in self._buffers:
            buf.close()  # type: ignore[attr-defined]
        self._buffers.clear()
