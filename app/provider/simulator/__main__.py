"""`python -m app.provider.simulator`."""

from .cli import main

main()
