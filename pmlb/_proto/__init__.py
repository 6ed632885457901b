"""Generated code; see README.md."""
