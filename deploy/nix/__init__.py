"""Nix's command line: pure argv builders, and flake check/update in the form the installed Nix understands."""
