"""The progress bar: one redrawn line on a terminal, one line per change elsewhere."""

from __future__ import annotations

import io

import pytest

from app.client.progress import Progress, format_bytes, render_line


def test_render_line_fills_the_bar_in_proportion() -> None:
    assert render_line("processing", 40, width=10) == "processing [####------]  40%"
    assert render_line("queued", 0, width=4) == "queued     [----]   0%"
    assert render_line("saving", 100, "3 B of 3 B", width=4) == "saving     [####] 100%  3 B of 3 B"


@pytest.mark.parametrize(("percent", "shown"), [(-5, "  0%"), (250, "100%")])
def test_render_line_clamps_the_percentage(percent: int, shown: str) -> None:
    assert render_line("pending", percent, width=2).endswith(shown)


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (8151, "8.0 KiB"), (3 * 1024**2, "3.0 MiB")],
)
def test_format_bytes(count: int, text: str) -> None:
    assert format_bytes(count) == text


def test_without_a_terminal_a_line_is_printed_only_when_status_or_progress_changes() -> None:
    stream = io.StringIO()
    progress = Progress(stream, tty=False)

    for phase, percent in [
        ("queued", 0),
        ("pending", 0),
        ("pending", 0),
        ("processing", 10),
        ("processing", 10),
        ("processing", 55),
        ("archiving", 100),
        ("archiving", 100),
    ]:
        progress.update(phase, percent, "detail that does not count")
    progress.close()

    lines = stream.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == [
        "queued",
        "pending",
        "processing",
        "processing",
        "archiving",
    ]
    assert [line.split("]")[1].split()[0] for line in lines] == ["0%", "0%", "10%", "55%", "100%"]
    assert "\r" not in stream.getvalue()


def test_without_a_terminal_a_phase_with_a_step_prints_every_step_and_the_end() -> None:
    stream = io.StringIO()
    progress = Progress(stream, tty=False, steps={"saving": 10})

    for percent in range(0, 101):
        progress.update("saving", percent)

    percents = [int(line.split("]")[1].split("%")[0]) for line in stream.getvalue().splitlines()]
    assert percents == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]


def test_on_a_terminal_one_line_is_redrawn_and_cleared_of_longer_text() -> None:
    stream = io.StringIO()
    progress = Progress(stream, tty=True)

    progress.update("saving", 50, "a long detail text")
    progress.update("saving", 60)
    progress.close()

    first = render_line("saving", 50, "a long detail text")
    second = render_line("saving", 60)
    assert stream.getvalue() == f"\r{first}\r{second.ljust(len(first))}\n"


def test_on_a_terminal_a_message_goes_above_the_bar() -> None:
    stream = io.StringIO()
    progress = Progress(stream, tty=True)

    progress.update("pending", 0)
    progress.message("task 1 submitted")
    progress.close()
    progress.close()

    line = render_line("pending", 0)
    blank = " " * len(line)
    assert stream.getvalue() == f"\r{line}\r{blank}\rtask 1 submitted\n\r{line}\n"


def test_the_terminal_is_detected_from_the_stream() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal, plain = Terminal(), io.StringIO()
    Progress(terminal).update("queued", 0)
    Progress(plain).update("queued", 0)

    assert terminal.getvalue().startswith("\r")
    assert plain.getvalue().endswith("\n")
