"""teellm: private LLM inference inside Trusted Execution Environments."""

__version__ = "0.1.0"
