"""Release policies: the attestation appraisal policy plus anti-rollback.

A release policy file is YAML: ``min_version`` (keys of lower versions are never
released again) and ``appraisal``, an attestation appraisal policy (see
docs/attestation.md). For convenience the appraisal fields may also sit at the
top level next to ``min_version``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from teellm.attestation.policy import AppraisalPolicy
from teellm.attestation.types import AttestationError, TeeType
from teellm.kbs.errors import KbsError
from teellm.kbs.protocol import MAX_VERSION


class ReleasePolicy(BaseModel):
    """Which evidence may receive a model's keys, and from which version on."""

    model_config = ConfigDict(extra="forbid")

    min_version: int = Field(default=0, ge=0, le=MAX_VERSION)
    appraisal: AppraisalPolicy = Field(default_factory=AppraisalPolicy)

    def allows_tee_type(self, tee: str) -> bool:
        """Whether a TEE claiming ``tee`` may even ask (the appraisal checks it again)."""
        try:
            t = TeeType(tee)
        except ValueError:
            return False
        if t is TeeType.SIMULATED:
            return self.appraisal.allow_simulated
        return t in self.appraisal.allowed_tee_types

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_data(cls, data: Any) -> ReleasePolicy:
        """From parsed YAML/JSON: nested (``appraisal:``) or flat appraisal fields."""
        if not isinstance(data, dict):
            raise KbsError("release policy must be a mapping", code="policy_invalid")
        data = dict(data)
        try:
            if "appraisal" not in data:
                min_version = data.pop("min_version", 0)
                return cls(min_version=min_version, appraisal=AppraisalPolicy.model_validate(data))
            return cls.model_validate(data)
        except (ValidationError, AttestationError, ValueError) as exc:
            raise KbsError(f"invalid release policy: {exc}", code="policy_invalid") from None

    @classmethod
    def from_yaml(cls, source: str | Path) -> ReleasePolicy:
        """Load from a YAML file path or YAML text."""
        if isinstance(source, Path):
            try:
                source = source.read_text()
            except OSError as exc:
                raise KbsError(
                    f"cannot read policy file ({exc.strerror})", code="policy_invalid"
                ) from None
        try:
            data = yaml.safe_load(source) or {}
        except yaml.YAMLError:
            raise KbsError("release policy is not valid YAML", code="policy_invalid") from None
        return cls.from_data(data)
