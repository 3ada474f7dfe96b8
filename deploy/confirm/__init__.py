"""Magic rollback: the watchdog on the host and the confirmation over a new connection."""
