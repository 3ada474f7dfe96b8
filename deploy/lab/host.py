"""The "machine" behind one simulated lab host.

`deploy.lab` starts this file as PID 1 of fresh mount and PID namespaces
(`unshare --mount --pid --fork --mount-proc ...`). It lays
private mounts over /nix, /run, /boot, /etc/nix, the boot id and the system
commands, then plays the role of firmware, bootloader and init: it boots the
generation the boot entry names, runs nix-daemon, sshd and an HTTP health
endpoint (`--health-server PORT`: 200 "ok" when the running system's
lab-health says ok, else 503), and on a request from the fake `reboot` kills
every process of the host and boots again. /nix and /boot may be small
tmpfs disks instead of the host's directories, to fill them up on purpose.

Standard library only: it runs before any virtualenv can be trusted, and as a
script by its path (`python .../deploy/lab/host.py HOSTDIR`), so it never
imports the deploy package (tests/test_static.py checks both).
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

RUN_DIR = Path("/run/nixfab-lab")
HEALTH_FILE = Path("/run/current-system/lab-health")


class SimulatedHost:
    def __init__(self, hostdir: Path) -> None:
        self.hostdir = hostdir
        self.spec = json.loads((hostdir / "host.json").read_text())
        self.namespace = os.readlink("/proc/self/ns/mnt")
        self.sshd: subprocess.Popen[bytes] | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        self.health_server: subprocess.Popen[bytes] | None = None

    # --- mounts --------------------------------------------------------------

    def bind(self, source: Path | str, target: str) -> None:
        subprocess.run(["mount", "--bind", str(source), target], check=True)

    def disk(self, target: str, size_mib: int | None) -> None:
        """The host's own directory for target, or a disk of size_mib that can fill up."""
        if size_mib:
            # A tmpfs dies with the namespace, so nothing is left mounted
            # outside; the lab reads it through /proc/<pid 1>/root.
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755", "tmpfs", target], check=True)
        else:
            self.bind(self.hostdir / target.lstrip("/"), target)

    def mount_private_filesystems(self) -> None:
        if self.namespace == self.spec["deployer_namespace"] or os.getpid() != 1:
            sys.exit("deploy/lab/host.py: refusing to run outside a fresh mount and PID namespace")
        self.disk("/nix", self.spec.get("nix_size_mib"))
        self.disk("/boot", self.spec.get("boot_size_mib"))
        self.bind(self.hostdir / "boot_id", "/proc/sys/kernel/random/boot_id")
        self.bind(self.hostdir / "etc-nix", "/etc/nix")
        for target in ("/usr/local/sbin", "/usr/local/bin"):
            self.bind(self.spec["fakes_dir"], target)
        for name in ("passwd", "shadow", "group", "sudoers"):
            self.bind(self.hostdir / "etc" / name, f"/etc/{name}")
        self.bind(self.hostdir / "home", "/home")
        # sshd runs each command through the login shell, and bash started by sshd reads
        # /etc/bash.bashrc and ~/.bashrc even for `bash -c`: root's home is under the host's
        # /home (its passwd says so) and its bash.bashrc is empty, so no session runs this
        # machine's start-up files (pyenv, cargo, ...: 0.1 s of CPU per command).
        if Path("/etc/bash.bashrc").exists():
            self.bind(self.hostdir / "etc" / "bash.bashrc", "/etc/bash.bashrc")
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run"], check=True)

    def fresh_run(self) -> None:
        # A real boot starts with an empty /run; so does ours.
        subprocess.run(["umount", "--lazy", "/run"], check=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run"], check=True)

    # --- boot ----------------------------------------------------------------

    def default_generation_path(self) -> str | None:
        loader = Path("/boot/loader/loader.conf")
        if not loader.exists():
            return None
        match = re.search(r"^default\s+(\S+)", loader.read_text(), re.MULTILINE)
        if not match:
            return None
        entry = Path("/boot/loader/entries") / match.group(1)
        if not entry.exists():
            return None
        init = re.search(r"\binit=(\S+)/init\b", entry.read_text())
        return init.group(1) if init else None

    def boot(self) -> None:
        # Only in a UTS namespace of our own: never rename the machine the lab runs on.
        if os.readlink("/proc/self/ns/uts") != self.spec.get("deployer_uts_namespace", os.readlink("/proc/self/ns/uts")):
            socket.sethostname(self.spec["name"])
        RUN_DIR.mkdir(parents=True)
        (RUN_DIR / "units").mkdir()
        (RUN_DIR / "supervisor.pid").write_text(str(os.getpid()))
        authorized = RUN_DIR / "authorized_keys"
        authorized.write_bytes((self.hostdir / "authorized_keys").read_bytes())
        authorized.chmod(0o644)
        commands = RUN_DIR / "commands.log"  # the lab's command recorder appends here, as whichever user logged in
        commands.touch()
        commands.chmod(0o666)
        Path("/run/sshd").mkdir(mode=0o755)
        Path("/run/systemd/system").mkdir(parents=True)
        lock = Path("/run/lock")
        lock.mkdir()
        lock.chmod(0o1777)  # mkdir's mode is cut by the umask
        toplevel = self.default_generation_path()
        if toplevel:
            for link in ("/run/current-system", "/run/booted-system"):
                os.symlink(toplevel, link)
            gcroots = Path("/nix/var/nix/gcroots")
            gcroots.mkdir(parents=True, exist_ok=True)
            for name in ("current-system", "booted-system"):
                (gcroots / name).unlink(missing_ok=True)
                (gcroots / name).symlink_to(f"/run/{name}")
        with open(self.hostdir / "nix-daemon.log", "ab") as log:  # the daemon writes to its own copy
            self.daemon = subprocess.Popen(
                ["nix-daemon"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.start_health_server()
        self.start_sshd()
        self.log(f"booted {toplevel or '(no system yet)'} boot_id={self.boot_id()}")

    def start_sshd(self) -> None:
        if self.sshd and self.sshd.poll() is None:
            return
        self.sshd = subprocess.Popen(
            ["/usr/sbin/sshd", "-D", "-f", str(self.hostdir / "sshd_config"),
             "-E", str(self.hostdir / "sshd.log")],
            stdin=subprocess.DEVNULL,
        )

    def start_health_server(self) -> None:
        port = self.spec.get("http_port")
        if not port:
            return
        with open(self.hostdir / "health-http.log", "ab") as log:  # the server writes to its own copy
            self.health_server = subprocess.Popen(
                [sys.executable, __file__, "--health-server", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def boot_id(self) -> str:
        return (self.hostdir / "boot_id").read_text().strip()

    # --- power ---------------------------------------------------------------

    def processes_of_host(self) -> list[int]:
        # We are PID 1 of the host's PID namespace and /proc is the host's own:
        # everything listed there but us belongs to the host, even processes
        # that (like nix-daemon) moved into mount namespaces of their own.
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    if Path(entry, "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                        pids.append(int(entry.name))
                except (OSError, IndexError):
                    continue
        return pids

    def kill_everything(self) -> None:
        for sig, grace in ((signal.SIGTERM, 0.5), (signal.SIGKILL, 5.0)):
            for pid in self.processes_of_host():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                self.reap()
                if not self.processes_of_host():
                    return
                time.sleep(0.02)
        self.reap()

    def reap(self) -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    def reboot(self) -> None:
        # Let the `reboot` command return to its caller, as a real one usually does.
        time.sleep(0.2)
        self.log("rebooting")
        self.kill_everything()
        (self.hostdir / "boot_id").write_text(str(uuid.uuid4()) + "\n")
        self.fresh_run()
        time.sleep(float(self.spec["reboot_delay"]))
        self.boot()

    def cut_off_ssh(self) -> None:
        """Stop sshd and drop every session, as a bad firewall rule would."""
        self.log("ssh cut off")
        if self.sshd:
            self.sshd.terminate()
            self.sshd.wait()
        for pid in self.processes_of_host():
            try:
                # OpenSSH 9.8+ serves sessions from sshd-session processes (Debian 13).
                if Path(f"/proc/{pid}/comm").read_text().strip() in ("sshd", "sshd-session"):
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def log(self, message: str) -> None:
        with open(self.hostdir / "supervisor.log", "a") as log:
            log.write(f"{time.strftime('%H:%M:%S')} {message}\n")

    # --- main loop -----------------------------------------------------------

    def serve(self) -> None:
        handled = {signal.SIGUSR1, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
        for signum in handled:
            # PID 1 never receives a signal it has no handler for, even a blocked one.
            signal.signal(signum, lambda *_: None)
        signal.pthread_sigmask(signal.SIG_BLOCK, handled)
        self.mount_private_filesystems()
        self.boot()
        powered = True
        while True:
            info = signal.sigtimedwait(handled, 1.0)
            self.reap()
            if info is None or info.si_signo == signal.SIGCHLD:
                continue
            if info.si_signo in (signal.SIGTERM, signal.SIGINT):
                self.log("stopping")
                self.kill_everything()
                return
            request_file = RUN_DIR / "request"
            request = request_file.read_text().strip() if request_file.exists() else ""
            request_file.unlink(missing_ok=True)
            if request == "reboot" and powered:
                self.reboot()
            elif request == "poweroff":
                self.log("powered off")
                powered = False
                self.kill_everything()
            elif request == "sshd-cut-off":
                self.cut_off_ssh()
            elif request == "sshd-start" and powered:
                self.start_sshd()


def health() -> tuple[int, str]:
    """What the running system says about itself: 200 when lab-health says ok."""
    try:
        verdict = HEALTH_FILE.read_text().strip()
    except OSError:
        return 503, "no current system"
    return (200, "ok") if verdict == "ok" else (503, verdict or "unknown")


class HealthHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the name http.server looks up
        status, body = health()
        payload = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_HEAD = do_GET

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        pass


def serve_health(port: int) -> None:
    HTTPServer(("127.0.0.1", port), HealthHandler).serve_forever()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--health-server"]:
        serve_health(int(sys.argv[2]))
    else:
        SimulatedHost(Path(sys.argv[1])).serve()
