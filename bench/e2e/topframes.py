"""The top frames of a py-spy raw (collapsed stacks) file, by self and by inclusive samples.

`python -m bench.e2e.topframes FILE [--top N]`. Each line of the file is
`frame;frame;...;frame COUNT`, outermost first; a frame's self samples are those where it is
the innermost, its inclusive samples those where it appears at all (once per stack)."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path


def count_frames(lines: list[str]) -> tuple[Counter[str], Counter[str], int]:
    """Self samples, inclusive samples per frame, and the total of samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        frames = stack.split(";")
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    return own, inclusive, total


def report(lines: list[str], top: int) -> str:
    own, inclusive, total = count_frames(lines)
    out = [f"{total} samples"]
    for title, counts in (("self", own), ("inclusive", inclusive)):
        out += ["", f"top {top} by {title} samples:"]
        for frame, samples in counts.most_common(top):
            out.append(f"{100 * samples / total:6.1f}% {samples:7d}  {frame}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e.topframes", description=__doc__)
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    print(report(args.file.read_text().splitlines(), args.top))


if __name__ == "__main__":
    main()
