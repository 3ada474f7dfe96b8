"""Building a system: here, on the target, or on a builder."""
