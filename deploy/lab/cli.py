"""What `inv lab.*` and `inv demo` show a person."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from deploy.errors import LabError
from deploy.lab.lab import Lab, default_lab_dir, write_fixture_flake

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

REPO = Path(__file__).resolve().parents[2]

DEMO_HOSTS = ("alpha", "beta", "gamma")


def short(path: str | None) -> str:
    # /nix/store/<hash>-nixos-system-alpha-lab.1 reads better as its name.
    name = path.rsplit("/", 1)[-1].split("-", 1)[-1] if path else "-"
    return name.removeprefix("nixos-system-")


def status_table(lab: Lab) -> Table:
    from rich.table import Table

    table = Table(title=f"nixfab lab at {lab.root}")
    for column in ("host", "port", "pid", "boot id", "generations", "current", "boot default", "running system"):
        table.add_column(column, no_wrap=True)
    for host in lab.hosts():
        state = lab.state(host.name)
        table.add_row(
            host.name,
            str(host.port),
            f"{host.supervisor_pid}" + ("" if state.running else " (stopped)"),
            state.boot_id[:8],
            ", ".join(str(g.number) for g in state.generations) or "-",
            str(state.current_generation or "-"),
            short(state.boot_default_path),
            short(state.current_system),
        )
    return table


def make_console() -> Console:
    import sys

    from rich.console import Console

    # Piped output (CI logs, `| less`) would otherwise be cut at 80 columns.
    return Console(width=None if sys.stdout.isatty() else 120)


def lab_flake(lab: Lab) -> str:
    # `path:` because .lab/ may sit, gitignored, inside a git checkout, where
    # a plain path would make Nix look for the flake among the tracked files.
    return f"path:{lab.root / 'flake'}"


def up(names: list[str], *, reboot_delay: float = 1.0, replace: bool = False) -> Lab:
    """Start a lab; one that runs already is refused (starting anew would wipe every host's /nix and generations).

    replace: stop it and start anew, saying so (the demo, which promises empty hosts).
    """
    lab = Lab(default_lab_dir())
    running = [host.name for host in lab.hosts() if lab.is_running(host)]
    if running and replace:
        make_console().print(f"stopping the lab that was running at {lab.root} ({', '.join(running)}); the demo starts anew")
    elif running:
        raise LabError(
            f"a lab is already running at {lab.root} ({', '.join(running)}); starting again would wipe every host: "
            "use it as it is (`inv lab.status`), or stop it first (`inv lab.down`)"
        )
    lab.up(names, reboot_delay=reboot_delay)
    write_fixture_flake(lab.root / "flake", names)
    (lab.root / "hosts.yaml").write_text(
        "# The lab's inventory: every host is an alias in ./ssh_config.\nssh_config: ./ssh_config\nhosts:\n"
        + "".join(f"  {name}: {{ tags: [lab] }}\n" for name in names)
    )
    console = make_console()
    console.print(status_table(lab))
    console.print(f"ssh -F {lab.ssh_config} {names[0]}   # log in to a host", soft_wrap=True)
    console.print(f"inv switch-push {names[0]} --flake {lab_flake(lab)} --inventory {lab.root / 'hosts.yaml'}", soft_wrap=True)
    return lab


def status() -> None:
    lab = Lab(default_lab_dir())
    if not lab.hosts():
        make_console().print(f"no lab is running at {lab.root}; start one with `inv lab.up`")
        return
    make_console().print(status_table(lab))


def down() -> None:
    lab = Lab(default_lab_dir())
    stopped = lab.down()
    print(f"stopped {', '.join(stopped)}" if stopped else f"no lab host was running at {lab.root}")


def demo() -> None:
    import subprocess
    import sys

    console = make_console()
    console.rule("1. three simulated NixOS hosts, each with an empty /nix")
    lab = up(list(DEMO_HOSTS), reboot_delay=0.5, replace=True)
    inv = [str(Path(sys.executable).parent / "inv"), "--search-root", str(REPO)]
    where = ["--flake", lab_flake(lab), "--inventory", str(lab.root / "hosts.yaml")]
    console.rule("2. inv switch-push --all: each system evaluated and built at most once, three hosts in parallel, each confirmed over a new SSH connection")
    deployed = subprocess.run([*inv, "switch-push", "--all", *where], check=False)
    if deployed.returncode != 0:
        raise LabError(f"the demo deploy failed (exit {deployed.returncode}); see its output above")
    console.rule("3. inv switch-push --all again: nothing to do")
    subprocess.run([*inv, "switch-push", "--all", "--skip-checks", *where], check=False)
    console.rule("4. inv status --all")
    subprocess.run([*inv, "status", "--all", *where], check=False)
    console.rule("5. what the hosts say now (read from the lab)")
    console.print(status_table(lab))
    console.print(
        "Each host has generation 1 in its own /nix, booted from nothing: /run/current-system and the boot "
        "default both point at it.\nThe lab keeps running: try `.venv/bin/inv lab.status`, then stop it with "
        "`.venv/bin/inv lab.down`."
    )
