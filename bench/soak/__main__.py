"""`python -m bench.soak`."""

from .cli import main

main()
