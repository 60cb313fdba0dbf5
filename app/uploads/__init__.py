"""Reference images that callers upload, kept in the object store until no task needs them."""
