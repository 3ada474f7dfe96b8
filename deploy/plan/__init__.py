"""What a deploy would do before it does it: the host's state and drift, the closure difference, free space."""
