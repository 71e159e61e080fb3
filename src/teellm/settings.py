"""ModelSettings: how one model is served (the seed's type)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from teellm.crypto.secret import SecretBytes

Precision = Literal["float32", "bfloat16", "int8"]


class ModelSettings(BaseModel):
    """Serving settings for one model.

    ``encryption_key`` is the content key once released: held in protected
    memory, excluded from serialisation and reprs. ``access_control`` is an
    :class:`teellm.server.access.AccessPolicy` (or its YAML text / mapping), or
    None for in-process use without tenants.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    batch_size: int = Field(default=8, ge=1, le=1024)
    precision: Precision = "bfloat16"
    max_input_length: int = Field(default=4096, ge=1)
    encryption_key: SecretBytes | None = Field(default=None, exclude=True, repr=False)
    # The server's access policy (teellm.server.access.AccessPolicy); typed loosely
    # here so this module does not import the server.
    access_control: Any = None

    @field_validator("access_control", mode="before")
    @classmethod
    def _access_policy(cls, value: Any) -> Any:
        if value is None:
            return None
        from teellm.server.access import AccessPolicy

        if isinstance(value, AccessPolicy):
            return value
        if isinstance(value, str):
            return AccessPolicy.from_yaml(value)
        if isinstance(value, dict):
            return AccessPolicy.model_validate(value)
        raise ValueError("access_control must be an AccessPolicy, its YAML or a mapping")
