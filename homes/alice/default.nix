# alice's Home Manager configuration on every system whose meta.nix lists her.
{ pkgs, ... }:
{
  programs.bash.enable = true;
  programs.git = {
    enable = true;
    userName = "Alice";
    userEmail = "alice@example.org";
  };
  home.stateVersion = "24.11";
}
