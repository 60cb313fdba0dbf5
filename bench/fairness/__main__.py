"""`python -m bench.fairness`."""

from .cli import main

main()
