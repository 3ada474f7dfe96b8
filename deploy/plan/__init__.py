"""What a deploy would do before it does it: the host's state and drift, `inv plan`, the closure difference, free space."""
