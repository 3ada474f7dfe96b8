{
  description = "nixfab: deploy NixOS flake configurations over SSH, and the homelab flake it deploys";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";
    home-manager = {
      url = "github:nix-community/home-manager/release-24.11";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  # Layout (README.md, "The homelab flake"):
  #   systems/<host>/default.nix   required: the NixOS configuration of <host>
  #   systems/<host>/meta.nix      optional: { system; users; tags; targetHost; buildOn; }, in any Nix
  #                                (nixfab evaluates it too: deploy/config/discovery.py)
  #   systems/<host>/hardware.nix  optional: imported when present
  #   homes/<user>/                Home Manager base config of <user>
  #   homes/<user>@<host>/         overrides for <user> on <host>
  outputs = inputs@{ self, nixpkgs, home-manager }:
    let
      inherit (nixpkgs) lib;

      supportedSystems = [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ];
      forEachSystem = f: lib.genAttrs supportedSystems (system: f nixpkgs.legacyPackages.${system});

      # Only builtins, so that lib.discover works for flakes without nixpkgs too.
      discover = directory:
        let
          entries = if builtins.pathExists directory then builtins.readDir directory else { };
          isSystem = name: entries.${name} == "directory" && builtins.pathExists (directory + "/${name}/default.nix");
        in
        builtins.listToAttrs (map (name: { inherit name; value = directory + "/${name}"; })
          (builtins.filter isSystem (builtins.attrNames entries)));

      systems = discover ./systems;
      homesDirectory = ./homes;

      metaOf = directory:
        let file = directory + "/meta.nix";
        in if builtins.pathExists file then import file else { };

      # Home Manager modules of `user` on `host`: the base config, then the host's overrides.
      homeModules = user: host:
        lib.optional (builtins.pathExists (homesDirectory + "/${user}/default.nix")) (homesDirectory + "/${user}")
        ++ lib.optional (builtins.pathExists (homesDirectory + "/${user}@${host}/default.nix")) (homesDirectory + "/${user}@${host}");

      # "Has that user" is what meta.nix `users` says. It cannot come from the
      # system's own users.users: Home Manager's NixOS module defines
      # users.users.<name>, so deciding home-manager.users from it recurses.
      homeUsers = host: meta:
        builtins.filter (user: homeModules user host != [ ]) (meta.users or [ ]);

      specialArgsFor = host: meta: { inherit inputs; hostName = host; hostMeta = meta; };

      homeManagerWiring = host: meta: users: {
        _file = "${toString ./flake.nix}#homeManagerWiring";
        home-manager = {
          useGlobalPkgs = lib.mkDefault true;
          useUserPackages = lib.mkDefault true;
          extraSpecialArgs = specialArgsFor host meta;
          users = lib.genAttrs users (user: { imports = homeModules user host; });
        };
      };

      mkSystem = host: directory:
        let
          meta = metaOf directory;
          users = homeUsers host meta;
          hardware = directory + "/hardware.nix";
        in
        lib.nixosSystem {
          system = meta.system or null;
          specialArgs = specialArgsFor host meta;
          modules = [
            directory
            {
              _file = "${toString ./flake.nix}#mkSystem";
              networking.hostName = lib.mkDefault host;
            }
            self.nixosModules.default
          ]
          ++ lib.optional (builtins.pathExists hardware) hardware
          ++ lib.optionals (users != [ ]) [
            home-manager.nixosModules.home-manager
            (homeManagerWiring host meta users)
          ];
        };

      mkHome = user: host:
        let
          meta = metaOf systems.${host};
          system = meta.system or (throw "systems/${host}/meta.nix has no `system`, which homeConfigurations.\"${user}@${host}\" needs");
        in
        home-manager.lib.homeManagerConfiguration {
          pkgs = nixpkgs.legacyPackages.${system};
          extraSpecialArgs = specialArgsFor host meta;
          modules = homeModules user host ++ [
            {
              _file = "${toString ./flake.nix}#mkHome";
              home.username = lib.mkDefault user;
              home.homeDirectory = lib.mkDefault "/home/${user}";
            }
          ];
        };

      pyproject = lib.importTOML ./pyproject.toml;

      # Only what the Python package needs, so that editing tests or systems/
      # does not rebuild nixfab.
      source = builtins.path {
        name = "nixfab-source";
        path = ./.;
        filter = path: type:
          let relative = lib.removePrefix "${toString ./.}/" (toString path);
          in builtins.elem relative [ "pyproject.toml" "README.md" "tasks.py" "deploy" ]
          || (lib.hasPrefix "deploy/" relative && builtins.baseNameOf relative != "__pycache__");
      };

      mkNixfab = pkgs:
        pkgs.python3Packages.buildPythonApplication {
          pname = pyproject.project.name;
          inherit (pyproject.project) version;
          pyproject = true;
          src = source;
          build-system = [ pkgs.python3Packages.setuptools ];
          dependencies = with pkgs.python3Packages; [ invoke fabric rich pyyaml ];
          # The suite needs root, sshd and a nix-daemon (the lab); it runs in CI, not in the sandbox.
          doCheck = false;
          pythonImportsCheck = [ "deploy.cli.program" "tasks" ];
          # Fallbacks only: the machine's own ssh and git come first.
          makeWrapperArgs = [ "--suffix" "PATH" ":" (lib.makeBinPath [ pkgs.openssh pkgs.git ]) ];
          meta = {
            inherit (pyproject.project) description;
            license = lib.licenses.mit;
            mainProgram = "nixfab";
          };
        };

      # `nix run .#<app> -- ARGS` runs `nixfab <task> ARGS`.
      appTasks = {
        build = "build";
        build-there = "build-there";
        switch = "switch";
        switch-pull = "switch-pull";
        switch-push = "switch-push";
        switch-pull-reset = "switch-pull-reset";
        switch-push-reset = "switch-push-reset";
        reset = "reset";
        ssh-wait = "ssh-wait";
        boot = "boot";
        test = "test";
        dry-activate = "dry-activate";
        check = "check";
        generations = "generations";
        rollback = "rollback";
        diff = "diff";
        update = "update";
        status = "status";
        history = "history";
        hosts = "hosts";
        hm-build = "hm.build";
        hm-switch = "hm.switch";
        hm-push = "hm.push";
        hm-pull = "hm.pull";
      };

      nixosModule = { config, lib, pkgs, ... }: {
        imports = [
          # flakem's option name, for configurations written against flakem.
          (lib.mkAliasOptionModule [ "packages" "nixfab" "enable" ] [ "programs" "nixfab" "enable" ])
        ];
        options.programs.nixfab = {
          enable = lib.mkEnableOption "nixfab, the NixOS deployment tool";
          package = lib.mkOption {
            type = lib.types.package;
            default = mkNixfab pkgs;
            defaultText = lib.literalExpression "nixfab built with this system's pkgs";
            description = "The nixfab package to install.";
          };
        };
        config = lib.mkIf config.programs.nixfab.enable {
          environment.systemPackages = [ config.programs.nixfab.package ];
        };
      };
    in
    {
      lib = {
        inherit discover appTasks;
        nixfabVersion = pyproject.project.version;
      };

      nixosConfigurations = lib.mapAttrs mkSystem systems;

      homeConfigurations = builtins.listToAttrs (builtins.concatMap
        (host: map (user: lib.nameValuePair "${user}@${host}" (mkHome user host)) (homeUsers host (metaOf systems.${host})))
        (builtins.attrNames systems));

      nixosModules.default = {
        # The key lets a system import this module itself without a duplicate.
        key = "nixfab#nixosModules.default";
        _file = "${toString ./flake.nix}#nixosModules.default";
        imports = [ nixosModule ];
      };
      nixosModules.nixfab = self.nixosModules.default;

      packages = forEachSystem (pkgs: rec {
        nixfab = mkNixfab pkgs;
        default = nixfab;
      });

      apps = forEachSystem (pkgs:
        let nixfab = self.packages.${pkgs.stdenv.hostPlatform.system}.nixfab;
        in
        { default = { type = "app"; program = "${nixfab}/bin/nixfab"; }; }
        // builtins.mapAttrs
          (app: task: {
            type = "app";
            program = "${pkgs.writeShellScriptBin "nixfab-${app}" ''exec ${nixfab}/bin/nixfab ${task} "$@"''}/bin/nixfab-${app}";
          })
          appTasks);

      devShells = forEachSystem (pkgs: {
        default = pkgs.mkShell {
          packages = [
            (pkgs.python3.withPackages (ps: with ps; [ invoke fabric rich pyyaml setuptools pytest pytest-mock ]))
            pkgs.openssh
          ];
        };
      });
    };
}
