"""Reference images of a task at the API's edge: resolved at create, served under `/inputs/`."""
