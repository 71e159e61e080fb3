"""Key broker service, its client and its store.

The main names are importable from here; they load on first use so that
``teellm --help`` does not import the HTTP stack.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "KeyBroker": "teellm.kbs.broker",
    "KeyBrokerClient": "teellm.kbs.client",
    "KeyReleaseDenied": "teellm.kbs.errors",
    "BrokerUnavailable": "teellm.kbs.errors",
    "KbsError": "teellm.kbs.errors",
    "LocalBroker": "teellm.kbs.local",
    "MasterKeyRing": "teellm.kbs.masterkey",
    "ReleasePolicy": "teellm.kbs.policy",
    "Store": "teellm.kbs.store",
    "open_store": "teellm.kbs.store",
    "create_app": "teellm.kbs.app",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'teellm.kbs' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
