"""Keys: secrets a host needs that must never enter the Nix store (hosts.yaml `keys`).

sources.py reads them on this machine, from a file or a command's output,
before anything changes on the host, and holds them in memory only;
upload.py writes each to its host over the deploy's own connection, on
stdin, atomically and with its owner and mode set before its content is
there (scripts/upload_key.sh). The pipeline decides when: `pre-activation`
keys before switch-to-configuration, `post-activation` ones after the
confirmation and the health checks; `inv keys` uploads them alone.
"""
