"""What a gpt-image-1.5 task is estimated to cost, in provider credits, before the provider says.

The provider documents only the range: about 0.53 to 24.25 credits per image across the three
qualities, the three sizes and 0 to 16 reference images (docs/limits.md, "Estimates", explains
how this table is built from it). The provider's own figure, when it reports one, replaces the
estimate (app/provider/parsing.py `parse_credits`)."""

from __future__ import annotations

from app.provider.types import PIXELS

# Output tokens of one image by quality and pixel size (OpenAI's published table for its
# gpt-image models; the provider bills gpt-image-1.5 by tokens). Only their proportions are used.
OUTPUT_TOKENS: dict[str, dict[tuple[int, int], int]] = {
    "low": {(1024, 1024): 272, (1024, 1536): 408, (1536, 1024): 400},
    "medium": {(1024, 1024): 1056, (1024, 1536): 1584, (1536, 1024): 1568},
    "high": {(1024, 1024): 4160, (1024, 1536): 6240, (1536, 1024): 6208},
}
# The provider's published range: the cheapest task (low, 1024x1024, no reference) and the
# dearest (high, the largest size, 16 references).
CHEAPEST_CREDITS = 0.53
DEAREST_CREDITS = 24.25
MAX_REFERENCES = 16
CREDITS_PER_OUTPUT_TOKEN = CHEAPEST_CREDITS / OUTPUT_TOKENS["low"][(1024, 1024)]
_DEAREST_IMAGE = max(max(sizes.values()) for sizes in OUTPUT_TOKENS.values())
# What each reference image adds (input image tokens): the rest of the range, spread evenly.
CREDITS_PER_REFERENCE = (
    DEAREST_CREDITS - _DEAREST_IMAGE * CREDITS_PER_OUTPUT_TOKEN
) / MAX_REFERENCES
# One credit in US dollars, about (the provider's figure; for the docs and the console only).
DOLLARS_PER_CREDIT = 0.0147


def image_credits(quality: str, size: str) -> float:
    """The estimate of the image alone, before references."""
    return OUTPUT_TOKENS[quality][PIXELS[size]] * CREDITS_PER_OUTPUT_TOKEN


def estimate_credits(quality: str, size: str, references: int) -> float:
    """The estimated credits of one task, rounded to 4 decimals. Unknown qualities or sizes
    (never accepted by the API) are priced as the dearest, so that they never slip a budget."""
    try:
        image = image_credits(quality, size)
    except KeyError:
        image = _DEAREST_IMAGE * CREDITS_PER_OUTPUT_TOKEN
    count = min(max(references, 0), MAX_REFERENCES)
    return round(image + count * CREDITS_PER_REFERENCE, 4)
