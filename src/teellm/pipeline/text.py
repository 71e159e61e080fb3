"""Input text normalisation: NFC and removal of disallowed control characters."""

from __future__ import annotations

import re
import unicodedata

# C0/C1 controls except tab, line feed and carriage return; DEL; lone surrogates
# (a JSON body can carry them and they cannot be encoded); non-characters.
_DISALLOWED = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef\ufffe\uffff]"
)


def normalize_text(text: str) -> str:
    """NFC-normalise ``text`` and drop disallowed control characters."""
    return unicodedata.normalize("NFC", _DISALLOWED.sub("", text))
