"""The client side: listeners and per-connection tasks."""
