"""Named models for the zoo tests and the CLI tests."""
