"""A decoder process whose decode never ends for a body ending in HANG (spinning on the CPU, as
a hostile image in a slow decoder would); others decode as in production. Run as a script: it
notes its pid in the file named by HANGING_DECODER_PIDS; HANGING_DECODER_CPU_SECONDS, when set,
replaces its CPU limit per decode."""

from __future__ import annotations

import os

from app.archive.decoding import CPU_SECONDS, main, make_thumbnail

MARK = b"HANG"


def decode(body: bytes, content_type: str) -> bytes:
    """Spin forever on a marked body, else make the thumbnail."""
    while body.endswith(MARK):
        pass
    return make_thumbnail(body, content_type)


if __name__ == "__main__":
    with open(os.environ["HANGING_DECODER_PIDS"], "a") as pids:
        pids.write(f"{os.getpid()}\n")
    main(decode, int(os.environ.get("HANGING_DECODER_CPU_SECONDS", CPU_SECONDS)))
