"""Collecting garbage after a deploy."""
