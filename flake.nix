{
  description = "nixfab: deploy NixOS flake configurations over SSH (the homelab flake grows here)";

  # No inputs yet: this evaluates offline. The "Homelab flake" issue adds
  # nixpkgs, home-manager and systems/ discovery.
  outputs = { self }: {
    lib.nixfabVersion = "0.1.0";
    nixosConfigurations = { };
  };
}
