"""Bearer-token authentication shared by both transports.

Tokens are compared in constant time, and never logged or put into an error message.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Final

from ..errors import Unauthenticated

_SCHEME: Final = "bearer"
_REFUSAL: Final = "missing or invalid bearer token in the authorization header"


def load_tokens(path: str | Path) -> tuple[bytes, ...]:
    """Tokens from a file, one a line; blank lines and lines starting with ``#`` are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read auth token file {path}: {exc}") from None
    tokens = tuple(
        line.strip().encode()
        for line in text.splitlines()
        if line.strip() and not line.strip().startswith("#")
    )
    if not tokens:
        raise ValueError(f"auth token file {path} holds no token")
    for token in tokens:
        if any(c <= 0x20 or c >= 0x7F for c in token):
            raise ValueError(f"auth token file {path}: a token has spaces or non-ASCII characters")
    return tokens


class BearerAuth:
    """Checks ``authorization: Bearer <token>`` against a fixed set of tokens.

    Args:
        tokens: the accepted tokens (``load_tokens`` reads them from a file).
    """

    def __init__(self, tokens: tuple[bytes, ...]) -> None:
        if not tokens:
            raise ValueError("BearerAuth needs at least one token")
        self._tokens = tokens

    def allows(self, header: str | bytes | None) -> bool:
        """Whether an ``authorization`` header value carries one of the tokens."""
        if header is None:
            return False
        raw = header.encode("latin-1") if isinstance(header, str) else header
        scheme, _, credential = raw.strip().partition(b" ")
        if scheme.lower() != _SCHEME.encode():
            return False
        return self.allows_token(credential.strip())

    def allows_token(self, credential: bytes) -> bool:
        """Whether ``credential`` is one of the tokens (the dashboard's sign-in cookie)."""
        # Compare with every token, not stopping at a match, so timing tells nothing.
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(credential, token)
        return matched

    def require(self, header: str | bytes | None) -> None:
        if not self.allows(header):
            raise Unauthenticated(_REFUSAL)
