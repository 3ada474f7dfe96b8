"""Tab completion: the candidates, the bash script for real, and what `import tasks` costs."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from deploy.cli import completion

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
BASH_SCRIPT = REPO / "completion" / "nixfab.bash"

HOSTS_YAML = textwrap.dedent(
    """\
    # an inventory in the style of the README
    ssh_config: ./ssh_config   # for Fabric and nix
    defaults:
      build_on: local
      tags: [base]
    hosts:
      alpha:
        ssh: root@alpha:2222
        tags: [web, db]
        health:
          url: http://alpha/health
      beta: { ssh: deploy@beta, tags: [edge] }
      gamma:
        tags:
        - compact
      delta:
        tags:
          - indented
    builders:
      buildbox: { ssh: root@10.0.0.5 }
    """
)

# A task file of our own, shaped like nixfab's (an optional positional machine, repeatable
# --host and --tag), so these tests do not depend on how tasks.py spells its tasks today.
# Invoke gives `host` the short flag -h and `tag` the flag -t here.
TASKS_PY = textwrap.dedent(
    """\
    from invoke import Collection, Task

    from deploy.cli import invoke_compat

    invoke_compat.install()


    def deploy(c, machine=None, host=[], tag=[], flake=".", inventory="hosts.yaml", dry_run=False):
        pass


    def tidy(c, timeout="5"):
        pass


    ns = Collection()
    ns.add_task(Task(deploy, positional=["machine"], iterable=["host", "tag"]))
    ns.add_task(Task(tidy))
    """
)


def write_systems(flake: Path, systems: dict[str, str | None]) -> None:
    """systems/<name>/default.nix (+ meta.nix when given); a None entry is a directory without default.nix."""
    for name, meta in systems.items():
        directory = flake / "systems" / name
        directory.mkdir(parents=True)
        if meta is None:
            (directory / "README").write_text("not a system\n")
            continue
        (directory / "default.nix").write_text("{ ... }: { }\n")
        if meta:
            (directory / "meta.nix").write_text(meta)


def evaluate_systems(flake: Path) -> None:
    """What a task (a deploy, `inv hosts`) does before completion can offer meta.nix tags: evaluate and cache them."""
    from deploy.config.discovery import discover_systems
    from deploy.record.history import state_directory

    discover_systems(flake, state_directory(str(flake)))


needs_nix = pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="meta.nix is read by nix-instantiate")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory like a user's repository: tasks, hosts.yaml and systems/, whose meta.nix a task has evaluated."""
    monkeypatch.delenv("NIXFAB_STATE_DIR", raising=False)  # the cache is the project's own .nixfab/
    root = tmp_path / "project"
    root.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)  # a repository: its state is .nixfab/ at its root
    (root / "tasks.py").write_text(TASKS_PY)
    (root / "hosts.yaml").write_text(HOSTS_YAML)
    write_systems(root, {
        "epsilon": 'let lab = "lab"; in { tags = [ lab "web" ]; system = "x86_64-linux"; }\n',
        "alpha": "",
        "notes": None,
    })
    if shutil.which("nix-instantiate"):
        evaluate_systems(root)
    return root


# --- candidates --------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [HOSTS_YAML, (REPO / "hosts.yaml").read_text()])
def test_the_scanner_reads_what_yaml_reads(text: str) -> None:
    scanned = completion.scan_inventory(text)
    assert scanned == completion._yaml_inventory(text)


@pytest.mark.parametrize("text", [
    "hosts: { alpha: {}, beta: {} }\n",
    "defaults: &d\n  tags: [x]\nhosts:\n  alpha: *d\n",
    "hosts:\n  'quoted': {}\n",
    "hosts:\n  alpha:\n    tags: [a,\n      b]\n",
    "hosts:\n\talpha: {}\n",
])
def test_the_scanner_hands_unusual_yaml_to_pyyaml(text: str) -> None:
    with pytest.raises(completion._Unsure):
        completion.scan_inventory(text)


def test_unusual_but_valid_yaml_still_completes(tmp_path: Path) -> None:
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text("hosts: { alpha: {tags: [x]}, 'beta': {} }\ndefaults: &d\n  tags: [y]\n")
    assert completion.read_inventory(str(inventory)) == (["alpha", "beta"], ["y", "x"])


@pytest.mark.parametrize("text", [
    "hosts: [unclosed\n",
    "hosts:\n  alpha: {ssh: x\n",
    "hosts:\n  - alpha\n",
    "\x00\x01binary",
    "hosts: 'unterminated\n",
])
def test_a_broken_inventory_offers_nothing_and_succeeds(tmp_path: Path, text: str) -> None:
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text(text)
    assert completion.read_inventory(str(inventory)) == ([], [])
    for mode in ("hosts", "tags"):
        result = subprocess.run(
            [sys.executable, "-m", "deploy.cli.completion", mode, "--inventory", str(inventory), "--flake", str(tmp_path)],
            capture_output=True, text=True, cwd=REPO,
        )
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@needs_nix
def test_hosts_and_tags_come_from_the_inventory_and_systems(project: Path) -> None:
    inventory, flake = str(project / "hosts.yaml"), str(project)
    assert completion.host_names(inventory, flake) == ["alpha", "beta", "delta", "epsilon", "gamma"]
    assert completion.tag_names(inventory, flake) == ["base", "compact", "db", "edge", "indented", "lab", "web"]
    assert completion.host_names(str(project / "missing.yaml"), f"path:{project}#x") == ["alpha", "epsilon"]
    assert completion.host_names(inventory, "github:owner/repo") == ["alpha", "beta", "delta", "gamma"]


@needs_nix
def test_meta_tags_come_only_from_the_cache_and_a_miss_still_offers_every_host(project: Path) -> None:
    inventory, flake = str(project / "hosts.yaml"), str(project)
    hosts = ["alpha", "beta", "delta", "epsilon", "gamma"]
    yaml_tags = ["base", "compact", "db", "edge", "indented", "web"]
    assert "lab" in completion.tag_names(inventory, flake)

    meta = project / "systems" / "epsilon" / "meta.nix"
    meta.write_text('{ tags = [ "changed" ]; }\n')  # the cache no longer holds: no meta.nix tags, and no Nix run
    assert (completion.host_names(inventory, flake), completion.tag_names(inventory, flake)) == (hosts, yaml_tags)
    evaluate_systems(project)
    assert completion.tag_names(inventory, flake) == sorted([*yaml_tags, "changed"])

    write_systems(project, {"zeta": '{ tags = [ "new" ]; }\n'})  # a new system: its name at once, tags after a run
    assert completion.host_names(inventory, flake) == [*hosts, "zeta"]
    assert completion.tag_names(inventory, flake) == yaml_tags
    (project / ".nixfab" / "systems-cache.json").write_text("{ broken")
    assert (completion.host_names(inventory, flake), completion.tag_names(inventory, flake)) == ([*hosts, "zeta"], yaml_tags)


def test_completion_never_runs_nix(tmp_path: Path) -> None:
    """On a cache miss the completer offers directory names; it does not even import subprocess."""
    write_systems(tmp_path, {"solo": '{ tags = [ "lonely" ]; }\n'})
    probe = (
        "import sys; from deploy.cli import completion; completion.main(['hosts']); completion.main(['tags']); "
        "print(sorted(set(sys.modules) & {'subprocess', 'tempfile', 'deploy.config.discovery', 'deploy.record.history', 'sqlite3'}))"
    )
    env = {key: value for key, value in os.environ.items() if key != "NIXFAB_STATE_DIR"}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=env, check=True)
    assert result.stdout.splitlines() == ["solo", "[]"]


def test_the_command_line_of_the_value_completer(project: Path) -> None:
    def run(*argv: str) -> list[str]:
        result = subprocess.run([sys.executable, "-m", "deploy.cli.completion", *argv], capture_output=True, text=True, cwd=project)
        assert (result.returncode, result.stderr) == (0, "")
        return result.stdout.splitlines()

    assert run("hosts") == ["alpha", "beta", "delta", "epsilon", "gamma"]
    assert run("hosts", "--inventory=hosts.yaml", "--flake", ".", "de") == ["delta"]
    assert run("tags", "e") == ["edge"]
    assert run("hosts", "alpha,root@") == ["alpha,root@beta", "alpha,root@delta", "alpha,root@epsilon", "alpha,root@gamma"]
    assert subprocess.run([sys.executable, "-m", "deploy.cli.completion"], capture_output=True, cwd=project).returncode == 2


def test_comma_lists_complete_their_last_element() -> None:
    names = ["alpha", "beta", "bravo", "gamma"]
    assert completion.matching(names, "") == names
    assert completion.matching(names, "b") == ["beta", "bravo"]
    assert completion.matching(names, "alpha,b") == ["alpha,beta", "alpha,bravo"]
    assert completion.matching(names, "alpha,beta,") == ["alpha,beta,bravo", "alpha,beta,gamma"]
    assert completion.matching(names, "deploy@g") == ["deploy@gamma"]
    assert completion.matching(names, "x,y,z") == []


def test_the_value_completer_imports_neither_invoke_nor_yaml(project: Path) -> None:
    probe = (
        "import sys; from deploy.cli import completion; completion.main(['hosts']); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'yaml', 'invoke', 'fabric', 'paramiko', 'rich'}))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=project, check=True)
    assert result.stdout.splitlines() == ["alpha", "beta", "delta", "epsilon", "gamma", "[]"]


# --- the bash script, for real ------------------------------------------------------------------


def bash_complete(words: list[str], cwd: Path, *, extra_path: Path | None = None) -> list[str]:
    """Source the script, set COMP_WORDS/COMP_CWORD as bash would, call the function, return COMPREPLY."""
    current = words[-1]
    previous = words[-2] if len(words) > 1 else ""
    script = f"""
        set -u
        source {shlex.quote(str(BASH_SCRIPT))}
        COMP_WORDS=({' '.join(shlex.quote(word) for word in words)})
        COMP_CWORD={len(words) - 1}
        _nixfab_complete {shlex.quote(words[0])} {shlex.quote(current)} {shlex.quote(previous)}
        printf '%s\\n' "${{COMPREPLY[@]}}"
    """
    path = os.pathsep.join(str(p) for p in (extra_path, VENV_BIN) if p) + os.pathsep + os.environ.get("PATH", "")
    env = {**os.environ, "PATH": path}
    env.pop("NIXFAB_COMPLETION_PYTHON", None)
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True, cwd=cwd, env=env, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return [line for line in result.stdout.splitlines() if line]


@pytest.mark.parametrize(("words", "expected"), [
    (["inv", "deploy", ""], ["alpha", "beta", "delta", "epsilon", "gamma"]),  # the positional machine
    (["inv", "deploy", "e"], ["epsilon"]),
    (["inv", "deploy", "--host", "g"], ["gamma"]),
    (["inv", "deploy", "-h", ""], ["alpha", "beta", "delta", "epsilon", "gamma"]),  # -h is host, via the task
    (["inv", "deploy", "--host", "=", "b"], ["beta"]),  # `--host=b`, as bash splits it
    (["inv", "deploy", "--host", "="], ["alpha", "beta", "delta", "epsilon", "gamma"]),  # `--host=`
    (["inv", "deploy", "--host", "alpha,be"], ["alpha,beta"]),
    (["inv", "deploy", "--host", "alpha,beta,"], ["alpha,beta,delta", "alpha,beta,epsilon", "alpha,beta,gamma"]),
    (["inv", "deploy", "--tag", ""], ["base", "compact", "db", "edge", "indented", "lab", "web"]),
    (["inv", "deploy", "-t", "we"], ["web"]),  # -t is tag in this task
    (["inv", "deploy", "alpha", "--tag", "=", "l"], ["lab"]),
    (["inv", "deploy", "--dry-run", ""], ["alpha", "beta", "delta", "epsilon", "gamma"]),
    (["inv", "deploy", "--machine", "alpha", ""], ["deploy", "tidy"]),  # the machine is given: next task
    (["inv", "deploy", "alpha", ""], ["deploy", "tidy"]),
    (["inv", "deploy", "--flake", ""], []),  # not ours to complete: bash falls back to file names
    (["inv", "tidy", "-t", ""], []),  # -t is --timeout in this task, not a tag
    (["inv", ""], ["deploy", "tidy"]),
    (["inv", "ti"], ["tidy"]),
    (["inv", "deploy", "--"], ["--dry-run", "--flake", "--host", "--inventory", "--machine", "--tag"]),
    (["inv", "deploy", "--host", "alpha", "--host", "b"], ["beta"]),  # repeated --host
    (["inv", "deploy", "--machine", "d"], ["delta"]),
    (["inv", "deploy", "--i"], ["--inventory"]),
    (["invoke", "deploy", "b"], ["beta"]),
])
@needs_nix
def test_bash_completion(project: Path, words: list[str], expected: list[str]) -> None:
    assert bash_complete(words, project) == expected


@needs_nix
def test_bash_completion_follows_inventory_and_flake_options(project: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "lab.yaml").write_text("hosts:\n  zeta:\n    tags: [far]\n")
    write_systems(other, {"omega": '{ tags = [ "remote" ]; }\n'})
    evaluate_systems(other)
    assert bash_complete(["inv", "deploy", "--inventory", str(other / "lab.yaml"), "--host", ""], project) == ["alpha", "epsilon", "zeta"]
    assert bash_complete(["inv", "deploy", "-i", str(other / "lab.yaml"), "--flake", str(other), "--tag", ""], project) == ["far", "remote"]
    assert bash_complete(["inv", "deploy", f"--flake=path:{other}", ""], project) == ["alpha", "beta", "delta", "gamma", "omega"]


def test_bash_completion_with_a_broken_inventory_offers_no_hosts(project: Path) -> None:
    (project / "hosts.yaml").write_text("hosts: [unclosed\n")
    assert bash_complete(["inv", "deploy", "--host", ""], project) == ["alpha", "epsilon"]  # systems/ still count
    (project / "tasks.py").write_text("raise RuntimeError('a broken tasks.py')\n")
    assert bash_complete(["inv", "deploy", ""], project) == []


def test_bash_completion_finds_the_python_of_another_binary(project: Path, tmp_path: Path) -> None:
    """`nixfab` is found on PATH and its #! line names the Python that has nixfab installed."""
    bin_directory = tmp_path / "bin"
    bin_directory.mkdir()
    stub = bin_directory / "nixfab"
    stub.write_text(f"#!{sys.executable}\nraise SystemExit(0)\n")
    stub.chmod(0o755)
    # A bare environment: without the #! line, `python3` here would not have nixfab installed.
    assert bash_complete(["nixfab", "switch-push", "--host", "al"], project, extra_path=bin_directory) == ["alpha"]


def test_bash_completion_of_the_real_tasks(project: Path) -> None:
    """The repository's own tasks.py: `inv switch-push <TAB>` offers machines."""
    shutil.copy(REPO / "tasks.py", project / "tasks.py")
    assert bash_complete(["inv", "switch-push", ""], project) == ["alpha", "beta", "delta", "epsilon", "gamma"]
    assert bash_complete(["inv", "switch-push", "--host", "d"], project) == ["delta"]
    assert bash_complete(["inv", "switch-push", "--tag", "=", "e"], project) == ["edge"]
    assert "switch-push" in bash_complete(["inv", "sw"], project)


# --- import cost of tasks.py ---------------------------------------------------------------------


def test_importing_tasks_loads_no_heavy_modules() -> None:
    """Invoke imports tasks.py on every TAB; Fabric, paramiko, rich and yaml wait until a task runs.

    Invoke itself loads PyYAML's C extension (invoke.vendor.yaml uses it when
    installed), so what counts is what tasks.py adds on top of `import invoke`.
    """
    probe = textwrap.dedent(
        """
        import sys
        import invoke
        before = set(sys.modules)
        import tasks
        added = {name.split('.')[0] for name in set(sys.modules) - before}
        print(sorted(added & {'fabric', 'paramiko', 'rich', 'yaml'}))
        print(sorted({name.split('.')[0] for name in sys.modules} & {'fabric', 'paramiko', 'rich'}))
        """
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]", "[]"]
