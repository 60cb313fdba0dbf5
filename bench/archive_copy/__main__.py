"""`python -m bench.archive_copy`."""

from .cli import main

main()
