"""The single-host pipeline, the per-host lock, the fleet that runs it in waves, and `inv exec` on that fleet."""
