"""Client side: SDK, OpenAI drop-in transport, local proxy, verification report.

Imports are lazy so that ``import teellm.client`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from teellm.client.client import (  # noqa: F401
        ApiResponseError,
        AsyncClient,
        Client,
        async_openai_client,
        openai_client,
    )
    from teellm.client.transport import (  # noqa: F401
        AsyncVerifyingTransport,
        ServerSession,
        VerifyingTransport,
    )
    from teellm.server.document import (  # noqa: F401
        ClientPolicy,
        VerificationFailed,
        VerificationReport,
    )

_EXPORTS = {
    "ApiResponseError": "teellm.client.client",
    "AsyncClient": "teellm.client.client",
    "Client": "teellm.client.client",
    "async_openai_client": "teellm.client.client",
    "openai_client": "teellm.client.client",
    "AsyncVerifyingTransport": "teellm.client.transport",
    "ServerSession": "teellm.client.transport",
    "VerifyingTransport": "teellm.client.transport",
    "ClientPolicy": "teellm.server.document",
    "VerificationFailed": "teellm.server.document",
    "VerificationReport": "teellm.server.document",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
