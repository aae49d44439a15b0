"""API keys: which one a request presents, and whether it is one of the configured keys."""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key of `Authorization: Bearer KEY`, else of `X-API-Key` (lowercase header names)."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key")


def key_accepted(presented: str | None, keys: Sequence[str]) -> bool:
    """True when no key is configured, or `presented` is one of `keys`."""
    if not keys:
        return True
    if presented is None:
        return False
    # Compare with every key so that the time taken does not reveal which one matched.
    matches = [hmac.compare_digest(presented.encode(), key.encode()) for key in keys]
    return any(matches)
