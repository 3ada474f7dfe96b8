{
  description = "nixfab lab fixture: NixOS-shaped systems that build with plain Nix and no nixpkgs";

  outputs = { self }:
    let
      # Written by deploy.lab.write_fixture_flake; flakes cannot read the
      # environment, so every knob a test turns lives in this file.
      settings = builtins.fromJSON (builtins.readFile ./lab.json);
      inherit (settings) system;

      shell = derivation {
        inherit system;
        name = "lab-sw";
        builder = "/bin/sh";
        args = [ ./build-sw.sh ];
        PATH = "/usr/bin:/bin";
      };

      # One kernel (with its initrd and modules) per version: systems of the same version share it,
      # so a new revision alone needs no reboot, and a new kernel does (settings.kernel / .kernels.<host>).
      mkKernel = version: derivation {
        inherit system version;
        name = "linux-${version}";
        builder = "/bin/sh";
        args = [ ./build-kernel.sh ];
        PATH = "/usr/bin:/bin";
      };

      # systemd units (name -> unit file text), in etc/systemd/system as NixOS lays them out: each a
      # link to a store file of its own, so a unit whose text changes gets a new path and the fake
      # switch-to-configuration's dry-activate can say what it would stop, start, restart or reload
      # (settings.units for every host, settings.hostUnits.<host> for one).
      defaultUnits = {
        "sshd.service" = "[Unit]\nDescription=SSH Daemon\n\n[Service]\nExecStart=/usr/sbin/sshd -D\n";
      };
      unitFilesOf = name:
        let units = (settings.hostUnits or { }).${name} or settings.units or defaultUnits;
        in map (unit: builtins.toFile unit units.${unit}) (builtins.attrNames units);

      # A pure computation of evalWork x 2000 steps that each toplevel needs before it is a value at
      # all (so `nix flake check`, which only looks at its type, pays it too), so that systems take
      # as long to evaluate as real ones (bench/: about 1.3 s each). It changes no derivation;
      # zero (the default) adds nothing.
      evalWork = settings.evalWork or 0;
      slowEvaluation = name:
        builtins.foldl' (acc: i: acc + builtins.foldl' (a: j: a + builtins.stringLength (toString (i * j))) 0 (builtins.genList (j: j) 2000))
          (builtins.stringLength name) (builtins.genList (i: i) evalWork);

      mkSystem = name: variant:
        let
          revision = settings.revisions.${name} or settings.revision;
          kernel = mkKernel ((settings.kernels or { }).${name} or settings.kernel or "6.6.lab");
          etc = derivation {
            inherit system revision;
            name = "etc-${name}";
            builder = "/bin/sh";
            args = [ ./build-etc.sh ];
            PATH = "/usr/bin:/bin";
            hostName = name;
            unitFiles = unitFilesOf name;
          };
          toplevel = derivation ({
            inherit system revision variant etc kernel;
            name = "nixos-system-${name}-lab.${revision}";
            builder = "/bin/sh";
            args = if variant == "unbuildable" then [ "-c" "echo 'lab: this system does not build' >&2; exit 1" ] else [ ./build-toplevel.sh ];
            PATH = "/usr/bin:/bin";
            sw = shell;
            hostName = name;
            nixosVersion = "24.11.lab.${revision}";
            switchToConfiguration = ./switch-to-configuration.sh;
            payloadKiB = toString (settings.payloadKiB or 0);
            # Only the -slow variant carries the delay, so changing it leaves
            # every other variant's store path alone.
            slowSeconds = if variant == "slow" then toString (settings.slowSeconds or 6) else "0";
            health = if variant == "sick" then "sick" else "ok";
          } // (if settings.buildGate or null == null then { } else {
            # The build waits until this file exists: a test's hold on it (only when asked, so no other path changes).
            buildGate = settings.buildGate;
          }));
          forced = if evalWork > 0 then builtins.seq (slowEvaluation name) toplevel else toplevel;
          # settings.traceEvaluation: Nix says so each time a process evaluates a toplevel (once per process).
          traced = if settings.traceEvaluation or false then builtins.trace "lab: evaluating the toplevel of ${name}${if variant == "ok" then "" else "-" + variant}" forced else forced;
        in {
          config = {
            networking.hostName = name;
            nixpkgs.hostPlatform = system;
            system.build.toplevel = traced;
            system.nixos.version = "24.11.lab.${revision}";
          };
        };

      variants = {
        "" = "ok";
        "-broken" = "broken";
        "-cutoff" = "cutoff";
        "-slow" = "slow";
        "-sick" = "sick";
        "-netdrop" = "netdrop";
        "-unbuildable" = "unbuildable";
      };
      forHost = name:
        builtins.listToAttrs (map (suffix: {
          name = name + suffix;
          value = mkSystem name variants.${suffix};
        }) (builtins.attrNames variants));

      homeUsers = settings.homeUsers or [ "deploy" ];
      homeDirectory = user:
        (settings.homeDirectories or { }).${user} or "/home/${user}"; # root's too, in the lab (deploy/lab/lab.py)

      # Home Manager's activationPackage, reduced to its contract: an
      # executable `activate` that must run as the user it was built for.
      mkHome = user: host: revision: {
        activationPackage = derivation {
          inherit system user revision;
          name = "home-manager-generation";
          builder = "/bin/sh";
          args = [ ./build-home.sh ];
          PATH = "/usr/bin:/bin";
          hostName = host;
          home = homeDirectory user;
          activateScript = ./home-activate.sh;
        };
      };
      homesOf = host:
        map (user: {
          name = "${user}@${host}";
          value = mkHome user host (settings.revisions.${host} or settings.revision);
        }) homeUsers;
      plainHomes = map (user: { name = user; value = mkHome user "" settings.revision; }) homeUsers;
    in {
      nixosConfigurations = builtins.foldl' (acc: name: acc // forHost name) { } settings.hosts;
      # What `nix flake check` builds besides evaluating every system; settings.failingCheck makes it fail.
      checks.${system}.lab = derivation {
        inherit system;
        name = "lab-check";
        builder = "/bin/sh";
        args = [ "-c" (if settings.failingCheck or false then "echo 'lab: the check fails' >&2; exit 1" else "echo ok > $out") ];
      };
      homeConfigurations = builtins.listToAttrs (plainHomes ++ builtins.concatMap homesOf settings.hosts);
    };
}
