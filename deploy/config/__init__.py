"""What the user wrote: hosts.yaml, the flake's systems/ and meta.nix, and which hosts a command selects."""
