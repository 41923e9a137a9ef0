"""Small shared pieces used by every layer."""
