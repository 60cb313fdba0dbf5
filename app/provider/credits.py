"""Tolerant reading of `GET /v1/credits`: the remaining balance of the key and of the account.

Documented shape (../shared/provider/evolink-gpt-image-1.5.md, "Account credits"):
`{"success": true, "message": "", "data": {"token": {"remaining_credits", "unlimited_credits",
"used_credits"}, "user": {"remaining_credits", "used_credits"}}}`. Numbers may come as strings,
either part may be missing, a wrapper may be absent; a body that names no balance at all, or
says `success: false`, is an error."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from app.provider.parsing import ProviderBodyError, clean_text


@dataclass(frozen=True, slots=True)
class AccountCredits:
    """The credits of one account (`token`: the API key; `user`: the account behind it)."""

    remaining: float | None
    used: float | None


@dataclass(frozen=True, slots=True)
class ProviderCredits:
    """One reading of the provider's balance."""

    token: AccountCredits
    user: AccountCredits
    token_unlimited: bool

    def lowest_limited(self) -> float | None:
        """The smallest remaining balance that limits this service's creates: the account's, and
        the key's unless the key is unlimited; None when neither is known."""
        known = [self.user.remaining]
        if not self.token_unlimited:
            known.append(self.token.remaining)
        values = [value for value in known if value is not None]
        return min(values) if values else None


def parse_number(raw: object) -> float | None:
    """A finite number from a JSON number or a numeric string; None for anything else."""
    if isinstance(raw, bool) or raw is None:
        return None
    if isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            return None
    else:
        return None
    return value if math.isfinite(value) else None


def parse_flag(raw: object) -> bool:
    """True for `true`, `1`, `"true"`, `"yes"`, `"1"`; False for anything else."""
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int | float):
        return raw == 1
    if isinstance(raw, str):
        return raw.strip().lower() in ("true", "1", "yes")
    return False


def _account(raw: object) -> AccountCredits:
    if not isinstance(raw, dict):
        return AccountCredits(None, None)
    return AccountCredits(
        remaining=parse_number(raw.get("remaining_credits")),
        used=parse_number(raw.get("used_credits")),
    )


def parse_credits(body: Any) -> ProviderCredits:
    """A reading from the body of a 2xx answer; ProviderBodyError when it holds none."""
    if not isinstance(body, dict):
        raise ProviderBodyError("the credits answer is not a JSON object")
    if body.get("success") is False:
        message = body.get("message") or body.get("msg") or "no message"
        raise ProviderBodyError(
            f"the provider said success: false ({clean_text(str(message))[:200]})"
        )
    data = body.get("data")
    if not isinstance(data, dict):
        data = body  # tolerate the parts without the wrapper
    token_raw = data.get("token")
    token = _account(token_raw)
    user = _account(data.get("user"))
    unlimited = (
        parse_flag(token_raw.get("unlimited_credits")) if isinstance(token_raw, dict) else False
    )
    if token.remaining is None and user.remaining is None and not unlimited:
        raise ProviderBodyError("the credits answer names no remaining balance")
    return ProviderCredits(token=token, user=user, token_unlimited=unlimited)
