# smallbox: a small ARM VPS serving a static site. No hardware.nix: the few
# hardware facts it needs are here.
{ hostName, ... }:
{
  boot.loader.grub.device = "/dev/vda";
  fileSystems."/" = {
    device = "/dev/vda1";
    fsType = "ext4";
  };

  users.users.alice.isNormalUser = true;

  services.openssh = {
    enable = true;
    settings.PasswordAuthentication = false;
  };
  services.nginx = {
    enable = true;
    virtualHosts.${hostName}.root = "/var/www";
  };
  networking.firewall.allowedTCPPorts = [ 80 ];

  system.stateVersion = "24.11";
}
