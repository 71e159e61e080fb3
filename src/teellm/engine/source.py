"""Where a model's files and tensors come from: a sealed bundle or a plain directory."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from teellm.engine.errors import InvalidModelError

if TYPE_CHECKING:
    from teellm.bundle.loader import LoadedBundle

# Small files the engine reads besides the weights.
METADATA_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
)


@dataclass
class ModelSource:
    """A model's plaintext files and tensors.

    ``files`` maps file names ("config.json", "tokenizer.json") to their bytes;
    ``tensors`` maps checkpoint tensor names to tensors. With ``from_bundle`` both are
    views over the loader's protected memory: nothing is copied or written to disk.
    """

    files: Mapping[str, bytes | memoryview]
    tensors: Mapping[str, torch.Tensor]
    name: str
    # Keeps the owner of the memory (a LoadedBundle) alive as long as the source.
    owner: Any = field(default=None, repr=False)

    def __repr__(self) -> str:
        return (
            f"ModelSource(name={self.name!r}, files={len(self.files)}, tensors={len(self.tensors)})"
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> ModelSource:
        """Load a plain (unsealed) Hugging Face model directory, for development."""
        from safetensors.torch import load_file

        root = Path(path)
        if not (root / "config.json").is_file():
            raise InvalidModelError("the model directory has no config.json")
        files: dict[str, bytes | memoryview] = {}
        for name in METADATA_FILES:
            if (root / name).is_file():
                files[name] = (root / name).read_bytes()
        shards = sorted(root.glob("*.safetensors"))
        if not shards:
            raise InvalidModelError("the model directory has no *.safetensors file")
        tensors: dict[str, torch.Tensor] = {}
        for shard in shards:
            try:
                tensors.update(load_file(str(shard)))
            except Exception as exc:  # safetensors raises several types on bad files
                raise InvalidModelError(f"cannot read weights file {shard.name}") from exc
        return cls(files=files, tensors=tensors, name=root.name)

    @classmethod
    def from_bundle(cls, loaded: LoadedBundle) -> ModelSource:
        """Use an opened sealed bundle's protected memory as it is (zero-copy)."""
        manifest = loaded.manifest
        name = str(getattr(manifest, "model_id", "model"))
        return cls(files=loaded.files, tensors=loaded.tensors, name=name, owner=loaded)

    def read(self, name: str) -> bytes | memoryview | None:
        """A file's bytes, or None when the model has no such file."""
        return self.files.get(name)

    def read_json(self, name: str) -> dict[str, Any] | None:
        """A JSON object file, or None when absent; malformed JSON is an InvalidModelError."""
        raw = self.read(name)
        if raw is None:
            return None
        try:
            data = json.loads(bytes(raw))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidModelError(f"{name} is not valid JSON") from exc
        if not isinstance(data, dict):
            raise InvalidModelError(f"{name} is not a JSON object")
        return data
