"""teellm: private LLM inference inside Trusted Execution Environments."""

__version__ = "0.1.0"

# Public names resolved on first use, so that ``import teellm`` stays light.
_LAZY = {
    "Client": "teellm.client.client",
    "AsyncClient": "teellm.client.client",
    "openai_client": "teellm.client.client",
    "async_openai_client": "teellm.client.client",
    "LLMInference": "teellm.inference",
    "InferenceRequest": "teellm.inference",
    "InferenceResult": "teellm.inference",
    "RequestMetadata": "teellm.inference",
    "SecurityContext": "teellm.inference",
    "Sampling": "teellm.inference",
    "ModelSettings": "teellm.settings",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'teellm' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
