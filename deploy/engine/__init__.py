"""The single-host pipeline, the per-host lock, and the fleet that runs it in waves."""
