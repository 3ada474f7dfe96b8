"""Pure functions that build the argv of every nix, ssh and activation command.

Nothing here runs anything; tests assert on these lists, and the process and
remote layers are the only places where argv meets a process or a shell.
Forms are chosen to work on Nix 2.8 and on current Nix (2.18+): `nix build
--json` and `--out-link` rather than `--print-out-paths`, `nix-store
--realise` for a derivation rather than the `^*` installable syntax.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from deploy.model import Action
from deploy.scripts import script

SYSTEM_PROFILE = "/nix/var/nix/profiles/system"
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
# Flakes may be off in the user's nix.conf; nixos-rebuild enables them per call too.
NIX = ["nix", "--extra-experimental-features", "nix-command flakes"]


def switch_unit(token: str) -> str:
    """Each activation's own unit: a fixed name would collide with a run whose switch still goes on."""
    return f"nixfab-switch-{token}"


def toplevel_attribute(attr: str) -> str:
    return f'nixosConfigurations."{attr}".config.system.build.toplevel'


def toplevel_installable(flake: str, attr: str) -> str:
    return f"{flake}#{toplevel_attribute(attr)}"


def nix_names(attrs: Sequence[str]) -> str:
    """attrs as a Nix list of strings: they were checked against ATTR_PATTERN, so as JSON strings they are also Nix strings."""
    return "[ " + " ".join(json.dumps(attr) for attr in attrs) + " ]"


def nix_eval_configurations(flake: str, apply: str, extra: Sequence[str] = ()) -> list[str]:
    """One `nix eval --json` of the flake's nixosConfigurations through `apply`, a Nix function of them."""
    return [*NIX, "eval", "--json", f"{flake}#nixosConfigurations", "--apply", apply, *extra]


def nix_build(installables: Sequence[str], *, out_link: Path | None, extra: Sequence[str] = ()) -> list[str]:
    link = ["--out-link", str(out_link)] if out_link else ["--no-link"]
    return [*NIX, "build", "--json", *link, *installables, *extra]


def nix_eval_derivation(installable: str, extra: Sequence[str] = ()) -> list[str]:
    # An attrset with an `outPath` would be printed as that path; hence drv/out.
    return [*NIX, "eval", "--json", installable, "--apply", "d: { drv = d.drvPath; out = d.outPath; }", *extra]


def nix_flake_check(flake: str, extra: Sequence[str] = ()) -> list[str]:
    return [*NIX, "flake", "check", flake, *extra]


def ssh_store_uri(destination: str) -> str:
    return f"ssh://{destination}"


def nix_copy(
    paths: Sequence[str],
    *,
    to: str | None = None,
    source: str | None = None,
    derivation: bool = False,
    substitute_on_destination: bool = False,
    extra: Sequence[str] = (),
) -> list[str]:
    argv = [*NIX, "copy"]
    if source:
        argv += ["--from", source]
    if to:
        argv += ["--to", to]
    if derivation:
        argv.append("--derivation")
    if substitute_on_destination:
        argv.append("--substitute-on-destination")
    return [*argv, *paths, *extra]


def nix_sshopts(ssh_config: Path | None, port: int | None) -> str:
    """NIX_SSHOPTS, so that nix's ssh and Fabric read the same ssh_config.

    Nix 2.8 splits NIX_SSHOPTS on whitespace, so no element may contain any;
    the inventory refuses such paths up front.
    """
    options = []
    if ssh_config:
        options += ["-F", str(ssh_config)]
    if port:
        options += ["-p", str(port)]
    return " ".join(options)


# Options of the `nix` command that the legacy nix-store refuses, with how many values each takes:
# what follows `--` reaches both the evaluation (`nix eval`) and the build (`nix-store --realise`).
NIX_COMMAND_ONLY_OPTIONS = {
    "--impure": 0, "--offline": 0, "--refresh": 0, "-L": 0, "--print-build-logs": 0, "--debugger": 0,
    "--recreate-lock-file": 0, "--no-update-lock-file": 0, "--no-write-lock-file": 0, "--commit-lock-file": 0,
    "--no-registries": 0, "--update-input": 1, "--inputs-from": 1, "--reference-lock-file": 1, "--output-lock-file": 1,
    "--eval-store": 1, "-I": 1, "--include": 1, "--override-input": 2, "--override-flake": 2, "--arg": 2, "--argstr": 2,
}


def store_options(extra: Sequence[str]) -> list[str]:
    """The extra options nix-store understands: those of `nix` alone (and their values) are left out (pure)."""
    kept: list[str] = []
    skip = 0
    for option in extra:
        if skip:
            skip -= 1
            continue
        name = option.split("=", 1)[0] if option.startswith("--") else option
        if name in NIX_COMMAND_ONLY_OPTIONS:
            skip = 0 if "=" in option else NIX_COMMAND_ONLY_OPTIONS[name]
            continue
        kept.append(option)
    return kept


def nix_store_realise(derivation: str, gc_root: str, extra: Sequence[str] = ()) -> list[str]:
    return ["nix-store", "--realise", derivation, "--add-root", gc_root, *store_options(extra)]


def nix_store_realise_many(paths: Sequence[str], gc_root: Path, extra: Sequence[str] = ()) -> list[str]:
    """Root every path (building what is missing) as gc_root, gc_root-2, … in order: the `build` task's ./result links."""
    return ["nix-store", "--realise", *paths, "--add-root", str(gc_root), "--keep-going", *store_options(extra)]


def nix_path_info_closure(paths: Sequence[str]) -> list[str]:
    """Every path of the paths' closures with its size and references, in one command (copy.closure.parse_closure)."""
    return [*NIX, "path-info", "--json", "--recursive", *paths]


def nix_store_print_invalid(paths: Sequence[str]) -> list[str]:
    return ["nix-store", "--check-validity", "--print-invalid", *paths]


def nix_store_export(paths: Sequence[str]) -> list[str]:
    return ["nix-store", "--export", *paths]


def nix_store_import() -> list[str]:
    return ["nix-store", "--import"]


def nix_store_serve() -> list[str]:
    """This machine's store, answering the serve protocol on stdin and stdout (transport.local_store)."""
    return ["nix-store", "--serve"]


def check_store_path_valid(path: str) -> list[str]:
    return ["nix-store", "--check-validity", path]


def make_temp_dir() -> list[str]:
    return ["mktemp", "-d", "-t", "nixfab.XXXXXXXX"]


def remove_tree(path: str) -> list[str]:
    return ["rm", "-rf", "--", path]


def read_link(path: str) -> list[str]:
    return ["readlink", path]


def read_boot_id() -> list[str]:
    return ["cat", BOOT_ID_FILE]


def switch_system_generation(generation: int) -> list[str]:
    return ["nix-env", "-p", SYSTEM_PROFILE, "--switch-generation", str(generation)]


def delete_system_generation(generation: int) -> list[str]:
    return ["nix-env", "-p", SYSTEM_PROFILE, "--delete-generations", str(generation)]


def remove_system_profile(generation: int) -> list[str]:
    return ["rm", "-f", "--", SYSTEM_PROFILE, f"{SYSTEM_PROFILE}-{generation}-link"]


def switch_to_configuration(path: str, action: Action) -> list[str]:
    try:
        checked = Action(action)
    except ValueError:
        raise ValueError(f"unknown action {action!r}") from None
    return [f"{path}/bin/switch-to-configuration", checked.value]


def systemd_run(argv: Sequence[str], *, unit: str, install_bootloader: bool) -> list[str]:
    """Run argv as a transient unit, so that a dropped SSH session cannot kill it halfway."""
    return [
        "systemd-run",
        "-E", "LOCALE_ARCHIVE",
        "-E", f"NIXOS_INSTALL_BOOTLOADER={'1' if install_bootloader else ''}",
        "--collect",
        "--no-ask-password",
        "--pipe",
        "--quiet",
        "--service-type=exec",
        f"--unit={unit}",
        "--wait",
        *argv,
    ]


def systemd_is_init() -> list[str]:
    """sd_booted(3): true where systemd is the init, and systemd-run can start units."""
    return ["test", "-d", "/run/systemd/system"]


def plain_environment(argv: Sequence[str], *, install_bootloader: bool) -> list[str]:
    """What nixos-rebuild falls back to where systemd-run does not work."""
    return ["env", "-i", f"NIXOS_INSTALL_BOOTLOADER={'1' if install_bootloader else ''}", *argv]


def journal_tail(unit: str, lines: int = 30) -> list[str]:
    return ["journalctl", "--no-pager", "-n", str(lines), "-u", unit]


def delayed_reboot(delay_seconds: int = 1) -> list[str]:
    """Reboot from a timer, so the command returns before the connection drops."""
    return ["systemd-run", f"--on-active={delay_seconds}", "--collect", "--quiet", "--unit=nixfab-reboot", "systemctl", "reboot"]


def plain_reboot() -> list[str]:
    return ["reboot"]


def collect_garbage(delete_older_than: str | None) -> list[str]:
    """`all` deletes every old generation; Nix 2.8 refuses `0d`."""
    if delete_older_than == "all":
        return ["nix-collect-garbage", "--delete-old"]
    argv = ["nix-collect-garbage"]
    if delete_older_than:
        argv += ["--delete-older-than", delete_older_than]
    return argv


def sudo_prefix() -> list[str]:
    """For commands on this machine; remote sudo goes through Fabric's responder."""
    return ["sudo", "--"]


# operations on deployed hosts
#
# The scripts are deploy/scripts/*.sh; everything that varies reaches them as
# positional arguments ("$1", "$@"), so no value is ever parsed by a shell.

NIXFAB_GENERATIONS_DIR = "/nix/var/nix/nixfab/generations"  # <N>.json: the flake revision of generation N

def rollback_system_profile() -> list[str]:
    return ["nix-env", "-p", SYSTEM_PROFILE, "--rollback"]


def list_generations(revisions_dir: str = NIXFAB_GENERATIONS_DIR) -> list[str]:
    return ["sh", "-c", script("list_generations"), "sh", SYSTEM_PROFILE, revisions_dir]


def running_system_and_nvd() -> list[str]:
    return ["sh", "-c", script("running_system_and_nvd")]


def nvd_diff(old: str, new: str) -> list[str]:
    return ["nvd", "diff", old, new]


def nix_store_diff_closures(old: str, new: str) -> list[str]:
    return [*NIX, "store", "diff-closures", old, new]


def df_argv(paths: Sequence[str]) -> list[str]:
    return ["sh", "-c", script("free_space"), "sh", *paths]


def nix_closure_size(path: str, extra: Sequence[str] = ()) -> list[str]:
    return [*NIX, "path-info", "--json", "--closure-size", path, *extra]


def nix_version() -> list[str]:
    return ["nix", "--version"]


def nix_instantiate_meta(request_json: str, expression: str, *, show_trace: bool = False) -> list[str]:
    """Evaluate `expression` (a constant function of `request`) with the JSON text as a plain string argument.

    --argstr hands the JSON to Nix as a string value, so no file name in it is
    ever Nix syntax; --readonly-mode keeps the evaluation from writing to the
    store; -vv makes Nix name each file it evaluates ("evaluating file '...'"),
    which is how the cache learns what a meta.nix imported. nix-instantiate
    needs no experimental features, and these flags mean the same from Nix 2.8 on.
    --show-trace is for finding where an error without a position (a `throw`) was raised.
    """
    trace = ["--show-trace"] if show_trace else []
    return ["nix-instantiate", "-vv", *trace, "--readonly-mode", "--eval", "--strict", "--json",
            "--argstr", "request", request_json, "--expr", expression]


def nix_flake_metadata(flake: str, extra: Sequence[str] = ()) -> list[str]:
    return [*NIX, "flake", "metadata", "--json", flake, *extra]


def nix_flake_update(flake: str, inputs: Sequence[str] = (), *, inputs_are_arguments: bool, extra: Sequence[str] = ()) -> list[str]:
    """Update the whole lock file, or only `inputs`.

    Nix 2.19 turned `nix flake update`'s positional arguments into input
    names (the flake moved to `--flake`); before that, single inputs were
    updated with `nix flake lock --update-input NAME`.
    """
    if inputs_are_arguments:
        return [*NIX, "flake", "update", "--flake", flake, *inputs, *extra]
    if not inputs:
        return [*NIX, "flake", "update", flake, *extra]
    updates = [argument for name in inputs for argument in ("--update-input", name)]
    return [*NIX, "flake", "lock", flake, *updates, *extra]
