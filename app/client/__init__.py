"""`imagegen-gateway generate`: a command-line client of a running gateway."""
