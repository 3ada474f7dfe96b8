"""Copying a closure to the host that lacks it."""
