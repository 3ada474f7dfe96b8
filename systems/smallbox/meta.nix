# Read by flake.nix AND by nixfab without Nix (deploy/discovery.py): literals only.
{
  system = "aarch64-linux";
  users = [ "alice" ];
  tags = [ "lab" "web" ];
  targetHost = "root@smallbox.example.org";
  buildOn = "buildbox"; # a builder from hosts.yaml
}
