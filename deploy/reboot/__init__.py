"""Rebooting a host and waiting for its new boot."""
