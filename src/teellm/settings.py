"""ModelSettings: how one model is served (the seed's type)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from teellm.crypto.secret import SecretBytes

Precision = Literal["float32", "bfloat16", "int8"]


class ModelSettings(BaseModel):
    """Serving settings for one model.

    ``encryption_key`` is the content key once released: held in protected
    memory, excluded from serialisation and reprs.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    batch_size: int = Field(default=8, ge=1, le=1024)
    precision: Precision = "bfloat16"
    max_input_length: int = Field(default=4096, ge=1)
    encryption_key: SecretBytes | None = Field(default=None, exclude=True, repr=False)
    # The server's access policy (teellm.server.access.AccessPolicy); typed loosely
    # here so this module does not import the server.
    access_control: Any = None
