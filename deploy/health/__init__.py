"""Health checks after activation."""
