"""The simulator's billing: what a task costs, and the account balance creates draw on.

The provider publishes no per-combination price list for gpt-image-1.5, only a range: about
0.53 to 24.25 credits per image across the three qualities, the sizes and 0 to 16 reference
images (../shared/provider/evolink-gpt-image-1.5.md, "Pricing"; 1 credit is about $0.0147). The
table below spans exactly that range: the cheapest task (low, square, no reference) costs 0.53
and the dearest (high, portrait or landscape, 16 references) 24.25. Its shape follows token
billing: the non-square sizes have 1.5x the output pixels of the square one, and every
reference image adds the same input-token charge whatever the quality. It is the simulator's
choice, not the provider's figures (docs/simulator.md, "Billing")."""

from __future__ import annotations

from dataclasses import dataclass

from app.provider.types import PIXELS

# Credits of one image without references, by quality and by whether the size is square.
BASE_CREDITS: dict[str, tuple[float, float]] = {
    #         square, portrait/landscape
    "low": (0.53, 0.79),
    "medium": (2.04, 3.06),
    "high": (8.10, 12.17),
}
CREDITS_PER_REFERENCE = 0.755  # (24.25 - 12.17) / 16
DEFAULT_CREDITS = 100_000.0


def task_credits(quality: str, size: str, references: int) -> float:
    """Credits one create of `quality`, `size` and `references` reference images reserves."""
    width, height = PIXELS[size]
    square, oblong = BASE_CREDITS[quality]
    base = square if width == height else oblong
    return round(base + CREDITS_PER_REFERENCE * references, 4)


@dataclass
class CreditAccount:
    """The account and key balance that `GET /v1/credits` reports. Every accepted create debits
    its credits; a task that ends failed gets them back. With `unlimited` the key has no limit:
    creates are never refused for credits and `remaining` does not go down (`used` still counts)."""

    remaining: float = DEFAULT_CREDITS
    used: float = 0.0
    unlimited: bool = False

    def __post_init__(self) -> None:
        if not self.remaining >= 0.0 or self.remaining == float("inf"):
            raise ValueError("credits must be a finite number, not negative")

    def can_pay(self, credits: float) -> bool:
        """Whether a create of `credits` may be accepted."""
        return self.unlimited or credits <= self.remaining + 1e-9

    def debit(self, credits: float) -> None:
        """Charge an accepted create."""
        self.used = round(self.used + credits, 4)
        if not self.unlimited:
            self.remaining = round(max(self.remaining - credits, 0.0), 4)

    def refund(self, credits: float) -> None:
        """Give back the credits of a task that failed."""
        self.used = round(max(self.used - credits, 0.0), 4)
        if not self.unlimited:
            self.remaining = round(self.remaining + credits, 4)

    def body(self) -> dict[str, object]:
        """The answer of `GET /v1/credits`, in the provider's shape (the simulator has one key,
        so the key's and the account's figures are the same)."""
        return {
            "success": True,
            "message": "",
            "data": {
                "token": {
                    "remaining_credits": self.remaining,
                    "unlimited_credits": self.unlimited,
                    "used_credits": self.used,
                },
                "user": {"remaining_credits": self.remaining, "used_credits": self.used},
            },
        }
