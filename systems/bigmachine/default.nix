# bigmachine: a workstation. Its hardware lives in hardware.nix.
{ hostName, lib, pkgs, ... }:
{
  boot.loader.systemd-boot.enable = true;
  boot.loader.efi.canTouchEfiVariables = true;

  networking.networkmanager.enable = true;
  time.timeZone = "Europe/Berlin";

  # Home Manager needs the account itself; meta.nix `users` says who gets homes/.
  users.users.alice = {
    isNormalUser = true;
    extraGroups = [ "wheel" "networkmanager" ];
  };
  users.users.myname = {
    isNormalUser = true;
    extraGroups = [ "wheel" ];
  };

  services.openssh = {
    enable = true;
    settings.PasswordAuthentication = false;
  };

  programs.nixfab.enable = true;
  nix.settings.experimental-features = [ "nix-command" "flakes" ];
  environment.systemPackages = [ pkgs.git ];

  system.stateVersion = "24.11";
}
