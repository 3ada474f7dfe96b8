# Imported by flake.nix and evaluated by nixfab (deploy/config/discovery.py): any Nix.
{
  system = "aarch64-linux";
  users = [ "alice" ];
  tags = [ "lab" "web" ];
  targetHost = "root@smallbox.example.org";
  buildOn = "buildbox"; # a builder from hosts.yaml
}
