"""A lab of simulated NixOS-shaped hosts on 127.0.0.1.

Each host is an sshd inside its own mount namespace with a private /nix,
/run, /boot, /etc/nix and boot id (see host.py). The lab records every
process it starts by pid, and stops them by pid only after checking that the
pid still belongs to this lab.
"""
from __future__ import annotations

import http.client
import json
import os
import platform
import random
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from deploy.errors import LabError

LAB_FILES = Path(__file__).parent / "files"
FIXTURE_FLAKE = LAB_FILES / "fixture-flake"
FAKE_COMMANDS = ("systemctl", "systemd-run", "journalctl", "reboot", "shutdown", "poweroff", "halt", "lab-sshd")
COMMAND_RECORDER = "lab-record-command"  # sshd's ForceCommand on hosts started with record_commands
UNIT_WRAPPER = "lab-unit.sh"  # the fake systemd-run's transient unit
SUPERVISOR = Path(__file__).parent / "host.py"  # run as a script by path: standard library only
SUDO_USER = "deploy"
SUDO_UID = 4242
SYSTEM_PROFILE = "/nix/var/nix/profiles/system"
DEFAULT_LAB_DIR = ".lab"


def default_lab_dir() -> Path:
    return Path(os.environ.get("NIXFAB_LAB", DEFAULT_LAB_DIR)).absolute()


@dataclass(frozen=True)
class LabHost:
    name: str
    port: int
    directory: Path
    supervisor_pid: int
    supervisor_started: int
    http_port: int = 0
    nix_size_mib: int | None = None  # /nix is a tmpfs of this size instead of directory/nix
    boot_size_mib: int | None = None


@dataclass(frozen=True)
class Generation:
    number: int
    path: str


@dataclass(frozen=True)
class HostState:
    """What a host's disks and memory say, read from inside its namespace."""

    name: str
    running: bool
    boot_id: str
    current_system: str | None
    booted_system: str | None
    generations: tuple[Generation, ...]
    current_generation: int | None
    boot_default: str | None

    @property
    def boot_default_path(self) -> str | None:
        return next((g.path for g in self.generations if f"nixos-generation-{g.number}.conf" == self.boot_default), None)


def lab_prerequisites() -> list[str]:
    """Why the lab cannot run here; empty when it can."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the lab needs root (mount namespaces, sshd)")
    for tool in ("nix", "nix-store", "nix-daemon", "unshare", "nsenter", "ssh", "ssh-keygen", "sudo", "openssl"):
        if not shutil.which(tool):
            problems.append(f"{tool} is not installed")
    if not Path("/usr/sbin/sshd").exists():
        problems.append("/usr/sbin/sshd is not installed (openssh-server)")
    return problems


# Every directory host.py binds or mounts over. Debian's nix-bin creates no
# /nix until Nix first opens its store, and a minimal root has no /boot.
MOUNT_POINTS = ("/nix", "/boot", "/etc/nix", "/home", "/usr/local/bin", "/usr/local/sbin")


def create_mount_points() -> None:
    """Empty directories for the hosts' private mounts, so the lab never depends on what this machine ran before."""
    for mount_point in MOUNT_POINTS:
        Path(mount_point).mkdir(mode=0o755, parents=True, exist_ok=True)


def nix_system() -> str:
    machine = platform.machine()
    return {"x86_64": "x86_64-linux", "aarch64": "aarch64-linux", "arm64": "aarch64-linux"}.get(machine, f"{machine}-linux")


def write_fixture_flake(
    destination: Path,
    hosts: Iterable[str],
    *,
    revision: str = "1",
    revisions: dict[str, str] | None = None,
    payload_kib: int = 0,
    slow_seconds: int = 6,
    home_users: Sequence[str] = (SUDO_USER,),
    eval_work: int = 0,
    trace_evaluation: bool = False,
    failing_check: bool = False,
    build_gate: Path | None = None,
) -> Path:
    """Copy the fixture flake to `destination`; a new revision makes a new generation.

    Per host it has nixosConfigurations <host>, <host>-broken, -cutoff, -slow
    (activation waits slow_seconds), -sick (its lab-health says sick),
    -netdrop (activation, or `boot`, drops every SSH session, as a network restart
    would, and succeeds) and -unbuildable (its build fails), and
    homeConfigurations "<user>@<host>" and "<user>" for each of home_users.
    eval_work makes each toplevel need a pure computation of eval_work x 2000
    steps before it is a value (bench/ calibrates it; derivations do not
    change, and `nix flake check` pays it too); trace_evaluation has Nix print a
    line each time a process evaluates a toplevel; failing_check makes the
    flake's `checks` (which `nix flake check` builds) fail; build_gate makes
    each toplevel's build (on this machine) wait until that file exists.
    """
    if destination.exists():
        shutil.rmtree(destination)
    shutil.copytree(FIXTURE_FLAKE, destination)
    settings = {
        "system": nix_system(),
        "hosts": sorted(set(hosts)),
        "revision": revision,
        "revisions": revisions or {},
        "payloadKiB": payload_kib,
        "slowSeconds": slow_seconds,
        "homeUsers": list(dict.fromkeys(home_users)),
        "evalWork": eval_work,
        "traceEvaluation": trace_evaluation,
        "failingCheck": failing_check,
        **({"buildGate": str(build_gate)} if build_gate is not None else {}),
    }
    (destination / "lab.json").write_text(json.dumps(settings, indent=2) + "\n")
    return destination


def set_fixture_kernel(flake: Path, version: str, host: str | None = None) -> None:
    """The kernel version of every system, or of one host's: a system with another kernel than the booted one needs a reboot."""
    settings = json.loads((flake / "lab.json").read_text())
    if host is None:
        settings["kernel"] = version
    else:
        settings.setdefault("kernels", {})[host] = version
    (flake / "lab.json").write_text(json.dumps(settings, indent=2) + "\n")


def set_fixture_units(flake: Path, units: Mapping[str, str], host: str | None = None) -> None:
    """The systemd units (name -> unit file text) of every system, or of one host's.

    The fake switch-to-configuration's dry-activate compares them with the
    running system's: a unit only the new system has would start, one it lacks
    would stop, a changed one would restart (reload with X-ReloadIfChanged=true,
    neither with X-RestartIfChanged=false). Every system has sshd.service until told otherwise.
    """
    settings = json.loads((flake / "lab.json").read_text())
    if host is None:
        settings["units"] = dict(units)
    else:
        settings.setdefault("hostUnits", {})[host] = dict(units)
    (flake / "lab.json").write_text(json.dumps(settings, indent=2) + "\n")


def set_fixture_revision(flake: Path, revision: str, host: str | None = None) -> None:
    settings = json.loads((flake / "lab.json").read_text())
    if host is None:
        settings["revision"] = revision
    else:
        settings["revisions"][host] = revision
    (flake / "lab.json").write_text(json.dumps(settings, indent=2) + "\n")


LAB_ROOT_HOME = "/home/root"  # in the host's own /home: this machine's /root holds its shell start-up files


def host_passwd(machines: str) -> str:
    """This machine's passwd with root's home moved to LAB_ROOT_HOME (pure)."""
    lines = []
    for line in machines.splitlines():
        fields = line.split(":")
        if len(fields) == 7 and fields[0] == "root":
            fields[5] = LAB_ROOT_HOME
            line = ":".join(fields)
        lines.append(line)
    return "".join(line + "\n" for line in lines)


LOWEST_LAB_PORT = 20000


def free_port(taken: set[int]) -> int:
    """A port nothing listens on, not in taken (to which it is added), and below the ephemeral range.

    Between this check and the host's bind, a port from bind(0) could be handed to the next host or to any
    outgoing connection; below the ephemeral range neither happens, and picking at random keeps two labs apart.
    """
    ephemeral_start = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    candidates = random.Random().sample(range(LOWEST_LAB_PORT, max(ephemeral_start, LOWEST_LAB_PORT + 1000)), 1000)
    for port in candidates:
        if port in taken:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise LabError(f"no free port between {LOWEST_LAB_PORT} and {ephemeral_start} for a lab host")


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of a live (non-zombie) pid; with the pid, a unique identity."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[19])


def children_of(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


class Lab:
    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or default_lab_dir()).absolute()
        self.ssh_config = self.root / "ssh_config"
        self.known_hosts = self.root / "known_hosts"
        self.identity = self.root / "id_ed25519"
        self.state_file = self.root / "lab.json"
        self.fakes_dir = self.root / "fakes"

    # --- state ---------------------------------------------------------------

    def hosts(self) -> list[LabHost]:
        if not self.state_file.exists():
            return []
        state = json.loads(self.state_file.read_text())
        return [
            LabHost(
                h["name"], h["port"], Path(h["directory"]), h["supervisor_pid"], h["supervisor_started"],
                h.get("http_port", 0), h.get("nix_size_mib"), h.get("boot_size_mib"),
            )
            for h in state["hosts"]
        ]

    def host(self, name: str) -> LabHost:
        for host in self.hosts():
            if host.name == name:
                return host
        raise LabError(f"no lab host named {name!r} in {self.root}")

    @property
    def sudo_password(self) -> str:
        return (self.root / "sudo_password").read_text().strip()

    def is_running(self, host: LabHost) -> bool:
        return process_start_time(host.supervisor_pid) == host.supervisor_started

    # --- up and down ---------------------------------------------------------

    def up(
        self,
        names: Sequence[str],
        *,
        reboot_delay: float = 1.0,
        timeout: float = 30.0,
        nix_size_mib: Mapping[str, int] | None = None,
        boot_size_mib: Mapping[str, int] | None = None,
        record_commands: bool = False,
        max_sessions: int = 100,
    ) -> list[LabHost]:
        """Start the hosts; nix_size_mib/boot_size_mib give some of them a small /nix or /boot that can fill up.

        record_commands: each host's sshd keeps every command it is sent, before running it (commands_sent()).
        max_sessions: sshd's MaxSessions, the channels one connection may have open at once (hardened hosts: 1).
        """
        problems = lab_prerequisites()
        if problems:
            raise LabError("cannot start the lab: " + "; ".join(problems))
        if not names:
            raise LabError("name at least one lab host")
        for name in names:
            if not name.replace("-", "").isalnum():
                raise LabError(f"lab host name {name!r} must be letters, digits and dashes")
        sizes = {"nix_size_mib": dict(nix_size_mib or {}), "boot_size_mib": dict(boot_size_mib or {})}
        for option, by_host in sizes.items():
            for name, size in by_host.items():
                if name not in names:
                    raise LabError(f"{option} names {name!r}, which is not one of the lab hosts")
                if not isinstance(size, int) or size <= 0:
                    raise LabError(f"{option}[{name!r}] must be a positive number of MiB, not {size!r}")
        self.down()
        create_mount_points()
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        self.root.chmod(0o755)
        self._install_fakes()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "nixfab-lab", "-f", str(self.identity)], check=True)
        (self.root / "sudo_password").write_text(secrets.token_urlsafe(12) + "\n")
        (self.root / "sudo_password").chmod(0o600)

        hosts: list[LabHost] = []
        taken_ports: set[int] = set()
        try:
            for name in dict.fromkeys(names):
                hosts.append(
                    self._start_host(
                        name,
                        reboot_delay,
                        taken_ports,
                        nix_size_mib=sizes["nix_size_mib"].get(name),
                        boot_size_mib=sizes["boot_size_mib"].get(name),
                        record_commands=record_commands,
                        max_sessions=max_sessions,
                    )
                )
                self._save(hosts)
            self._write_client_config(hosts)
            for host in hosts:
                self.wait_for_ssh(host.name, timeout=timeout)
                self.wait_for_http(host.name, timeout=timeout)
        except BaseException:
            self.down()
            raise
        return hosts

    def _install_fakes(self) -> None:
        self.fakes_dir.mkdir()
        program = self.fakes_dir / "lab-fake"
        source = (LAB_FILES / "fakes" / "lab-fake").read_text()
        # The fakes run inside the host, where only this interpreter is known to exist. -IS: they need the
        # standard library alone, and the venv's site start-up (its .pth files) would triple what each call costs.
        program.write_text(source.replace("#!/usr/bin/env python3", f"#!{sys.executable} -IS", 1))
        program.chmod(0o755)
        for command in FAKE_COMMANDS:
            (self.fakes_dir / command).symlink_to("lab-fake")
        for name in (COMMAND_RECORDER, UNIT_WRAPPER):
            installed = self.fakes_dir / name
            installed.write_text((LAB_FILES / "fakes" / name).read_text())
            installed.chmod(0o755)

    def _start_host(
        self, name: str, reboot_delay: float, taken_ports: set[int], *, nix_size_mib: int | None = None,
        boot_size_mib: int | None = None, record_commands: bool = False, max_sessions: int = 100,
    ) -> LabHost:
        directory = self.root / "hosts" / name
        for sub in ("nix", "boot", "etc", "etc-nix", f"home/{SUDO_USER}/.ssh", "home/root"):
            (directory / sub).mkdir(parents=True)
        (directory / "home" / "root").chmod(0o700)
        (directory / "boot_id").write_text(str(uuid.uuid4()) + "\n")
        port = free_port(taken_ports)
        http_port = free_port(taken_ports)
        host_key = directory / "ssh_host_ed25519_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(host_key)], check=True)
        authorized = directory / "authorized_keys"
        shutil.copy(self.identity.with_suffix(".pub"), authorized)
        authorized.chmod(0o644)
        (directory / "sshd_config").write_text(
            "\n".join(
                [
                    f"Port {port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {host_key}",
                    "PidFile none",
                    # The supervisor copies it there at boot: the lab directory
                    # may not be readable by the host's non-root user.
                    "AuthorizedKeysFile /run/nixfab-lab/authorized_keys",
                    "StrictModes no",
                    "PermitRootLogin prohibit-password",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "LogLevel VERBOSE",
                    "MaxStartups 200",
                    f"MaxSessions {max_sessions}",
                    "Subsystem sftp internal-sftp",
                    *([f"ForceCommand /usr/local/bin/{COMMAND_RECORDER}"] if record_commands else []),
                    "",
                ]
            )
        )
        self._write_host_etc(directory)
        spec = {
            "name": name,
            "port": port,
            "http_port": http_port,
            "nix_size_mib": nix_size_mib,
            "boot_size_mib": boot_size_mib,
            "reboot_delay": reboot_delay,
            "fakes_dir": str(self.fakes_dir),
            "deployer_namespace": os.readlink("/proc/self/ns/mnt"),
            "deployer_uts_namespace": os.readlink("/proc/self/ns/uts"),
        }
        (directory / "host.json").write_text(json.dumps(spec, indent=2))
        with open(directory / "supervisor.out", "ab") as log:
            process = subprocess.Popen(
                [
                    # --uts: each host has its own hostname, so "this machine" inside it is the host's name.
                    "unshare", "--mount", "--pid", "--uts", "--fork", "--mount-proc", "--propagation", "private",
                    "--kill-child=SIGTERM", "--", sys.executable, str(SUPERVISOR), str(directory),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started = process_start_time(process.pid)
        assert started is not None, "unshare exited at once"
        return LabHost(name, port, directory, process.pid, started, http_port, nix_size_mib, boot_size_mib)

    def _write_host_etc(self, directory: Path) -> None:
        etc = directory / "etc"
        password_hash = subprocess.run(
            ["openssl", "passwd", "-6", "-stdin"], input=self.sudo_password, capture_output=True, text=True, check=True
        ).stdout.strip()
        home = f"/home/{SUDO_USER}"
        (etc / "passwd").write_text(host_passwd(Path("/etc/passwd").read_text()) + f"{SUDO_USER}:x:{SUDO_UID}:{SUDO_UID}::{home}:/bin/sh\n")
        (etc / "group").write_text(Path("/etc/group").read_text() + f"{SUDO_USER}:x:{SUDO_UID}:\n")
        (etc / "shadow").write_text(Path("/etc/shadow").read_text() + f"{SUDO_USER}:{password_hash}:19000:0:99999:7:::\n")
        (etc / "shadow").chmod(0o640)
        sudoers = etc / "sudoers"
        sudoers.write_text(
            'Defaults env_reset\nDefaults secure_path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"\n'
            f"root ALL=(ALL:ALL) ALL\n{SUDO_USER} ALL=(ALL:ALL) ALL\n"
        )
        sudoers.chmod(0o440)
        (etc / "bash.bashrc").write_text("# The lab host's own: empty, so SSH sessions run none of this machine's start-up files.\n")
        os.chown(directory / "home" / SUDO_USER, SUDO_UID, SUDO_UID)
        os.chown(directory / "home" / SUDO_USER / ".ssh", SUDO_UID, SUDO_UID)
        deployer_conf = Path("/etc/nix/nix.conf")
        (directory / "etc-nix" / "nix.conf").write_text(
            (deployer_conf.read_text() if deployer_conf.exists() else "")
            + "\n# simulated host\nexperimental-features = nix-command flakes\nbuild-users-group =\n"
            + f"substituters =\nsandbox = false\ntrusted-users = root {SUDO_USER}\n"
        )

    def _write_client_config(self, hosts: Sequence[LabHost]) -> None:
        blocks = []
        known = []
        for host in hosts:
            blocks.append(
                "\n".join(
                    [
                        f"Host {host.name}",
                        "  HostName 127.0.0.1",
                        f"  Port {host.port}",
                        "  User root",
                        f'  IdentityFile "{self.identity}"',
                        "  IdentitiesOnly yes",
                        f'  UserKnownHostsFile "{self.known_hosts}"',
                        "  GlobalKnownHostsFile /dev/null",
                        "  StrictHostKeyChecking yes",
                        "  BatchMode yes",
                        "  ConnectTimeout 5",
                        "  LogLevel ERROR",
                    ]
                )
            )
            public_key = (host.directory / "ssh_host_ed25519_key.pub").read_text().split()[:2]
            known.append(f"[127.0.0.1]:{host.port} {' '.join(public_key)}")
        self.ssh_config.write_text("# Written by nixfab's lab; one alias per simulated host.\n" + "\n\n".join(blocks) + "\n")
        self.known_hosts.write_text("\n".join(known) + "\n")

    def _save(self, hosts: Sequence[LabHost]) -> None:
        state = {
            "hosts": [
                {
                    "name": h.name,
                    "port": h.port,
                    "directory": str(h.directory),
                    "supervisor_pid": h.supervisor_pid,
                    "supervisor_started": h.supervisor_started,
                    "http_port": h.http_port,
                    "nix_size_mib": h.nix_size_mib,
                    "boot_size_mib": h.boot_size_mib,
                }
                for h in hosts
            ]
        }
        self.state_file.write_text(json.dumps(state, indent=2))

    def down(self) -> list[str]:
        """Stop every host by its recorded pid; return the names stopped."""
        stopped = []
        for host in self.hosts():
            if self.is_running(host):
                # unshare --fork ignores SIGTERM while it waits: ask its child,
                # the host's PID 1, which stops every process of the host.
                for child in children_of(host.supervisor_pid):
                    os.kill(child, signal.SIGTERM)
                stopped.append(host.name)
        deadline = time.monotonic() + 10
        for host in self.hosts():
            while self.is_running(host) and time.monotonic() < deadline:
                self._reap(host.supervisor_pid)
                time.sleep(0.02)
            if self.is_running(host):
                # Killing PID 1 of the host's PID namespace kills all of the host.
                for child in children_of(host.supervisor_pid):
                    os.kill(child, signal.SIGKILL)
                os.kill(host.supervisor_pid, signal.SIGKILL)
            self._reap(host.supervisor_pid)
        if self.state_file.exists():
            self.state_file.unlink()
        return stopped

    @staticmethod
    def _reap(pid: int) -> None:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass

    # --- talking to hosts ----------------------------------------------------

    def ssh_argv(self, name: str, argv: Sequence[str], *, user: str | None = None) -> list[str]:
        destination = f"{user}@{name}" if user else name
        return ["ssh", "-F", str(self.ssh_config), destination, "--", shlex.join(argv)]

    def ssh(
        self, name: str, argv: Sequence[str], *, user: str | None = None, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.ssh_argv(name, argv, user=user),
            input=input,
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )

    def wait_for_ssh(self, name: str, *, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        host = self.host(name)
        while time.monotonic() < deadline:
            if not self.is_running(host):
                raise LabError(f"lab host {name} died while starting; see {host.directory}/supervisor.out")
            if self.ssh(name, ["true"], check=False, timeout=10).returncode == 0:
                return
            time.sleep(0.1)
        raise LabError(f"lab host {name} did not answer SSH within {timeout:.0f}s")

    def http_url(self, name: str) -> str:
        """The host's health endpoint: 200 "ok" when its running system is healthy, else 503."""
        host = self.host(name)
        if not host.http_port:
            raise LabError(f"lab host {name} was started without an HTTP health endpoint")
        return f"http://127.0.0.1:{host.http_port}/health"

    def http_status(self, name: str, *, timeout: float = 5.0) -> tuple[int, str]:
        """(status, body) of the health endpoint; (0, reason) when nothing answers."""
        try:
            with urllib.request.urlopen(self.http_url(name), timeout=timeout) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as error:
            return int(error.code), error.read().decode()
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            # HTTPException: something else, not the health endpoint, answers on its port.
            return 0, f"{type(error).__name__}: {error}"

    def wait_for_http(self, name: str, *, timeout: float = 30.0) -> None:
        if not self.host(name).http_port:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.http_status(name)[0]:
                return
            time.sleep(0.05)
        raise LabError(f"lab host {name}'s health endpoint did not answer within {timeout:.0f}s")

    def init_pid(self, host: LabHost) -> int:
        """PID 1 of the host, as this machine numbers it (the child of `unshare --fork`)."""
        children = children_of(host.supervisor_pid) if self.is_running(host) else []
        if not children:
            raise LabError(f"lab host {host.name} is not running")
        return children[0]

    def inside(self, name: str, argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run argv in the host's mount and PID namespaces without SSH, for inspection.

        The PID namespace matters: the fakes (lab-sshd, reboot) signal the
        host's PID 1, which must never be this machine's init.
        """
        host = self.host(name)
        return subprocess.run(
            ["nsenter", "--target", str(self.init_pid(host)), "--mount", "--pid", "--", *argv],
            capture_output=True, text=True, check=check,
        )

    def disk_path(self, name: str, mount_point: str) -> Path:
        """Where this machine can read the host's /nix or /boot (a tmpfs one only while it runs)."""
        host = self.host(name)
        size = {"/nix": host.nix_size_mib, "/boot": host.boot_size_mib}[mount_point]
        if size and self.is_running(host):
            return Path(f"/proc/{self.init_pid(host)}/root") / mount_point.lstrip("/")
        return host.directory / mount_point.lstrip("/")

    def forget_generations(self, name: str, keep: int) -> None:
        """All but the newest `keep` generations of the host's system profile go (never the one it points at), as
        `nix-env --delete-generations +N` would: a switch lists every generation in the boot menu, so a host that
        piled up hundreds of them would make each later activation slower than the one before."""
        profile = self._system_profile(name)
        current = os.readlink(profile) if profile.is_symlink() else None
        for _number, link in self._generation_links(name)[:-keep or None]:
            if link.name != current:
                link.unlink()

    def _system_profile(self, name: str) -> Path:
        return self.disk_path(name, "/nix") / "var" / "nix" / "profiles" / "system"

    def _generation_links(self, name: str) -> list[tuple[int, Path]]:
        """The host's system generations, (number, link), oldest first."""
        links = self._system_profile(name).parent.glob("system-*-link")
        return sorted((int(link.name.split("-")[1]), link) for link in links)

    def state(self, name: str) -> HostState:
        host = self.host(name)
        running = self.is_running(host)
        generations = [Generation(number, os.readlink(link)) for number, link in self._generation_links(name)]
        profile = self._system_profile(name)
        current = int(os.readlink(profile).split("-")[1]) if profile.is_symlink() else None
        loader = self.disk_path(name, "/boot") / "loader" / "loader.conf"
        boot_default = None
        if loader.exists():
            for line in loader.read_text().splitlines():
                if line.startswith("default "):
                    boot_default = line.split()[1]

        def run_link(link: str) -> str | None:
            if not running:
                return None
            result = self.inside(name, ["readlink", link], check=False)
            return result.stdout.strip() or None

        return HostState(
            name=name,
            running=running,
            boot_id=(host.directory / "boot_id").read_text().strip(),
            current_system=run_link("/run/current-system"),
            booted_system=run_link("/run/booted-system"),
            generations=tuple(generations),
            current_generation=current,
            boot_default=boot_default,
        )

    # --- pause points (the fake systemd-run honours them; see lab-fake) ------

    def hold(self, name: str, unit_prefix: str) -> None:
        """From now on, systemd-run on host `name` returns from starting a unit named unit_prefix… only after release()."""
        self.inside(name, ["sh", "-c", 'mkdir -p /run/nixfab-lab/hold && : > "/run/nixfab-lab/hold/$1"', "sh", unit_prefix])

    def held(self, name: str, unit_prefix: str) -> str | None:
        """The unit systemd-run is holding at that point, once it got there."""
        reached = self.inside(name, ["cat", f"/run/nixfab-lab/hold/{unit_prefix}.reached"], check=False)
        return reached.stdout.strip() or None if reached.returncode == 0 else None

    def release(self, name: str, unit_prefix: str) -> None:
        self.inside(name, ["rm", "-f", f"/run/nixfab-lab/hold/{unit_prefix}", f"/run/nixfab-lab/hold/{unit_prefix}.reached"])

    def commands_sent(self, name: str) -> str:
        """Every command the host's sshd was sent since it booted, as text (a host started with record_commands)."""
        return self.inside(name, ["cat", "/run/nixfab-lab/commands.log"]).stdout

    def keys_at_activation(self, name: str) -> list[tuple[str, list[str]]]:
        """For each switch-to-configuration run (but dry-activate): its action and the files in /run/keys while it ran."""
        log = self.disk_path(name, "/nix") / "var/nix/lab/keys-at-activation.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return [(line.split()[0], line.split()[2:]) for line in lines]

    def store_has(self, name: str, store_path: str) -> bool:
        return (self.disk_path(name, "/nix") / store_path.removeprefix("/nix/")).exists()

    def activations(self, name: str) -> list[str]:
        log = self.disk_path(name, "/nix") / "var/nix/lab/activations.log"
        return log.read_text().splitlines() if log.exists() else []

    def processes(self, name: str) -> dict[int, str]:
        """Every live process of the host but its PID 1, by pid (as the host numbers them): its command line."""
        procfs = Path(f"/proc/{self.init_pid(self.host(name))}/root/proc")  # the host's own /proc
        found = {}
        for entry in procfs.iterdir():
            if not entry.name.isdigit() or entry.name == "1":
                continue
            try:
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except (OSError, IndexError):
                continue  # it ended while we looked
        return found

    def accepted_ssh_logins(self, name: str) -> int:
        """SSH connections the host accepted so far (its sshd logs at LogLevel VERBOSE)."""
        return self._sshd_log(name).count("Accepted publickey")

    def remote_commands(self, name: str) -> int:
        """Commands (SSH sessions) the host ran so far, over every connection."""
        return self._sshd_log(name).count("Starting session:")

    def _sshd_log(self, name: str) -> str:
        log = self.host(name).directory / "sshd.log"
        return log.read_text(errors="replace") if log.exists() else ""
