# Read by flake.nix AND by nixfab without Nix (deploy/discovery.py): keep every
# value a literal (strings, lists of strings, attribute sets), no functions,
# `let`, `import` or `with`.
{
  system = "x86_64-linux";
  # Users listed here get Home Manager: homes/<user>/ and homes/<user>@bigmachine/.
  users = [ "alice" ];
  tags = [ "lab" ];
  targetHost = "myname@bigmachine";
  buildOn = "target";
}
