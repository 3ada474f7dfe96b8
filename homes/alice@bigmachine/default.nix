# alice on bigmachine only, on top of homes/alice.
{ pkgs, ... }:
{
  home.packages = [ pkgs.htop ];
  programs.git.extraConfig.core.editor = "vim";
}
