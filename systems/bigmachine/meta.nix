# Imported by flake.nix and evaluated by nixfab (deploy/config/discovery.py): any Nix
# that evaluates to this attribute set, in the flake's pure evaluation.
{
  system = "x86_64-linux";
  # Users listed here get Home Manager: homes/<user>/ and homes/<user>@bigmachine/.
  users = [ "alice" ];
  tags = [ "lab" ];
  targetHost = "myname@bigmachine";
  buildOn = "target";
}
