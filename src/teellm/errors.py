"""The root of every error teellm raises on purpose.

Each component defines its own subclasses (``BundleError``, ``AttestationError``...).
Messages name what failed and never carry secret material: no key bytes, no
plaintext prompt, output or weight.
"""


class TeellmError(Exception):
    """Base class of every typed teellm error.

    ``code`` is a short stable identifier (``"signature_invalid"``) that tools and
    HTTP APIs can match on; the message is for people.
    """

    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
