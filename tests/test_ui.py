"""deploy.ui: the renderers draw events as today's lines, whole, and the log keeps what the terminal does not show."""
from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest

from deploy.transport.process import LocalRunner
from deploy.ui import (
    CommandRun,
    Console,
    Emitter,
    HostFinished,
    LogSink,
    Note,
    OutputPolicy,
    OutputText,
    PhaseStarted,
    PlainRenderer,
    Progress,
    Tee,
    Verbosity,
    command_line,
    host_emitter,
    stream_prefix,
)
from deploy.ui import events as ui_events


class SlowStream(io.StringIO):
    """A terminal that takes its time: it writes a character at a time and lets other threads run in between."""

    def write(self, text: str) -> int:
        for character in text:
            super().write(character)
            time.sleep(0)
        return len(text)


def verbose(console: Console) -> Console:
    """A console that shows everything (-v): the tests of how lines are drawn see every kind of line."""
    console.policy = OutputPolicy(Verbosity.VERBOSE)
    return console


def fleet_of_two() -> tuple[io.StringIO, Emitter, Emitter, io.StringIO, io.StringIO]:
    terminal = SlowStream()
    console = verbose(Console(terminal))
    width = len("alpha")
    alpha_log, beta_log = io.StringIO(), io.StringIO()
    alpha = host_emitter(console, stream_prefix("alpha", width), alpha_log)
    beta = host_emitter(console, stream_prefix("beta", width), beta_log)
    return terminal, alpha, beta, alpha_log, beta_log


# --- CommandRun: `+ [host] argv`, exactly as before -------------------------------------------------------------


def test_a_remote_command_renders_as_plus_host_argv() -> None:
    event = CommandRun(("nix-env", "-p", "/nix/var/nix/profiles/system", "--set", "/nix/store/abc-nixos-system"), where="alpha")
    assert command_line(event) == "+ [alpha] nix-env -p /nix/var/nix/profiles/system --set /nix/store/abc-nixos-system"


def test_a_local_command_renders_with_its_environment_in_front_quoted() -> None:
    event = CommandRun(("nix", "copy", "--to", "ssh://alpha", "/nix/store/x y"), env=(("NIX_SSHOPTS", "-F /tmp/ssh config"), ("A", "1")))
    assert command_line(event) == "+ NIX_SSHOPTS='-F /tmp/ssh config' A=1 nix copy --to ssh://alpha '/nix/store/x y'"


def test_a_script_s_lines_each_get_the_host_prefix() -> None:
    terminal, alpha, _, alpha_log, _ = fleet_of_two()
    alpha.command(["sh", "-c", "set -e\nrm -rf \"$1\"\n", "sh", "/run/nixfab/deploy.engine.lock"], where="alpha")
    assert terminal.getvalue().splitlines() == [
        "alpha | + [alpha] sh -c 'set -e",
        'alpha | rm -rf "$1"',
        "alpha | ' sh /run/nixfab/deploy.engine.lock",
    ]
    assert alpha_log.getvalue() == "+ [alpha] sh -c 'set -e\nrm -rf \"$1\"\n' sh /run/nixfab/deploy.engine.lock\n"


def test_the_emitter_turns_its_arguments_into_the_event() -> None:
    seen: list[ui_events.Event] = []

    class Recorder:
        def emit(self, event: ui_events.Event, /) -> None:
            seen.append(event)

    emitter = Emitter(Recorder())
    emitter.command(["sudo", "true"], where="beta", env={"K": "v"})
    emitter.note("==> beta: done")
    emitter.warning("low on space")
    emitter.output("live\n")
    emitter.record("captured\n")
    emitter.output("")
    emitter.record("")
    assert seen == [
        CommandRun(("sudo", "true"), "beta", (("K", "v"),)),
        Note("==> beta: done"),
        ui_events.Warning("low on space"),
        OutputText("live\n"),
        OutputText("captured\n", captured=True),
    ]


def test_a_fleet_host_prefixes_every_line_and_logs_it_unprefixed() -> None:
    terminal, alpha, beta, alpha_log, _ = fleet_of_two()
    alpha.command(["nix-env", "-p", "/nix/var/nix/profiles/system", "--set", "/nix/store/abc"], where="alpha")
    beta.note("==> beta: copying the closure")
    alpha.warning("alpha has 1 MiB free on /nix")
    alpha.note("alpha: /old -> /new (nvd)\n\n[U] firefox")
    assert terminal.getvalue().splitlines() == [
        "alpha | + [alpha] nix-env -p /nix/var/nix/profiles/system --set /nix/store/abc",
        "beta  | ==> beta: copying the closure",
        "alpha | warning: alpha has 1 MiB free on /nix",
        "alpha | alpha: /old -> /new (nvd)",
        "alpha | ",
        "alpha | [U] firefox",
    ]
    assert alpha_log.getvalue() == (
        "+ [alpha] nix-env -p /nix/var/nix/profiles/system --set /nix/store/abc\n"
        "warning: alpha has 1 MiB free on /nix\n"
        "alpha: /old -> /new (nvd)\n\n[U] firefox\n"
    )


def test_without_a_prefix_lines_are_as_print_wrote_them() -> None:
    stream = io.StringIO()
    emitter = Emitter.plain(stream)
    emitter.command(["true"])
    emitter.note("")
    emitter.note("==> x: flake check passed")
    emitter.output("no newline at the end")
    assert stream.getvalue() == "+ true\n\n==> x: flake check passed\nno newline at the end\n"


# --- captured output: the log only --------------------------------------------------------------------------------


def test_captured_output_reaches_only_the_log() -> None:
    terminal, alpha, _, alpha_log, beta_log = fleet_of_two()
    alpha.record("generation\t3\t/nix/store/abc\nprofile\tsystem-3-link")
    alpha.output("building '/nix/store/def.drv'...\n")
    assert terminal.getvalue() == "alpha | building '/nix/store/def.drv'...\n"
    assert alpha_log.getvalue() == "generation\t3\t/nix/store/abc\nprofile\tsystem-3-link\nbuilding '/nix/store/def.drv'...\n"
    assert beta_log.getvalue() == ""


def test_a_local_runner_shows_stderr_and_logs_the_captured_stdout() -> None:
    terminal, log = io.StringIO(), io.StringIO()
    runner = LocalRunner(host_emitter(verbose(Console(terminal)), "here | ", log))
    result = runner.run(["sh", "-c", "echo parsed; echo shown >&2"])
    assert result.ok and result.stdout == "parsed\n" and result.stderr == "shown\n"
    assert terminal.getvalue().splitlines() == ["here | + sh -c 'echo parsed; echo shown >&2'", "here | shown"]
    assert log.getvalue().splitlines() == ["+ sh -c 'echo parsed; echo shown >&2'", "shown", "parsed"]


# --- verbosity -------------------------------------------------------------------------------------------------


def test_show_commands_false_hides_the_commands_but_not_the_notes_nor_the_log() -> None:
    terminal, log = io.StringIO(), io.StringIO()
    emitter = Emitter(Tee(PlainRenderer(verbose(Console(terminal)), "a | ", show_commands=False), LogSink(log)))
    emitter.command(["nix", "build"], where="a")
    emitter.note("==> a: built")
    emitter.output("error: oops\n")
    assert terminal.getvalue() == "a | ==> a: built\na | error: oops\n"
    assert log.getvalue() == "+ [a] nix build\n==> a: built\nerror: oops\n"


# --- whole lines from threads ------------------------------------------------------------------------------------


def test_prefixed_lines_from_two_threads_never_interleave_mid_line() -> None:
    terminal, alpha, beta, _, _ = fleet_of_two()
    start = threading.Barrier(2)

    def chatter(emitter: Emitter, name: str) -> None:
        writer = emitter.lines()  # as Fabric streams a remote command: chunks that split lines anywhere
        start.wait()
        for number in range(150):
            line = f"{name} says line {number} " + "x" * (number % 17) + "\n"
            for piece in (line[:3], line[3:11], line[11:]):
                writer.write(piece)
            emitter.note(f"==> {name}: note {number}")
        writer.write(f"{name} ends without a newline")
        writer.close()

    threads = [threading.Thread(target=chatter, args=(emitter, name)) for emitter, name in ((alpha, "alpha"), (beta, "beta"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    lines = terminal.getvalue().split("\n")
    assert lines.pop() == ""  # the output ends with a newline
    by_host: dict[str, list[str]] = {"alpha": [], "beta": []}
    for line in lines:
        prefix, separator, rest = line.partition(" | ")
        assert separator and prefix.strip() in by_host, line
        by_host[prefix.strip()].append(rest)
    for name, received in by_host.items():
        expected = []
        for number in range(150):
            expected += [f"{name} says line {number} " + "x" * (number % 17), f"==> {name}: note {number}"]
        assert received == [*expected, f"{name} ends without a newline"]


def test_a_line_writer_hands_on_nothing_before_the_line_is_complete() -> None:
    stream = io.StringIO()
    writer = Emitter.plain(stream).lines()
    writer.write("half a ")
    writer.flush()  # Invoke flushes after every chunk; that must not cut the line
    assert stream.getvalue() == ""
    writer.write("line\nand the next\r\n")
    assert stream.getvalue() == "half a line\nand the next\n"
    writer.close()
    assert stream.getvalue() == "half a line\nand the next\n"


# --- the live table's model ----------------------------------------------------------------------------------------


def test_the_live_table_follows_phase_and_finish_events() -> None:
    progress = Progress(["alpha", "beta"])
    progress.emit(PhaseStarted("alpha", "build"))
    progress.phase("alpha", "copy")
    progress.emit(Note("ignored"))
    progress.emit(HostFinished("beta", "failed"))
    assert progress.hosts["alpha"].phase == "copy" and progress.hosts["alpha"].started is not None
    assert progress.hosts["alpha"].finished is None
    assert progress.hosts["beta"].shown == "failed" and progress.hosts["beta"].result == "failed"
    assert progress.hosts["beta"].elapsed(time.monotonic()) == pytest.approx(0.0)


def test_while_the_live_table_is_drawn_every_line_for_stderr_goes_through_it(capsys: pytest.CaptureFixture[str]) -> None:
    printed: list[str] = []
    fleet_console = Console()  # the fleet's; live_display gives it rich's printer
    fleet_console.printer = printed.append
    try:
        Emitter().note("==> building alpha on this machine")  # the run's own notes, on another console
        host_emitter(fleet_console, "alpha | ").step("copied 3 paths, 6.9 KiB", seconds=0.25)
    finally:
        fleet_console.printer = None
    Emitter().note("after")
    assert printed == ["==> building alpha on this machine", "alpha | copied 3 paths, 6.9 KiB in 0.2 s"]
    assert capsys.readouterr().err == "after\n"


# --- the output policy: what each verbosity shows -----------------------------------------------------------------


def shown_at(verbosity: Verbosity, *, host: bool, dry_run: bool = False, host_output: bool = False) -> list[str]:
    terminal = io.StringIO()
    console = Console(terminal)
    console.policy = OutputPolicy(verbosity, dry_run=dry_run, host_output=host_output)
    emitter = Emitter(PlainRenderer(console, "a | " if host else "", host=host))
    emitter.command(["nix-env", "--set", "/nix/store/x"], where="a")
    emitter.output("activating the configuration...\n")
    emitter.record("generation\t3\n")
    emitter.note("up to date")
    emitter.step("copied 3 paths, 6.9 KiB", seconds=0.24)
    emitter.warning("only 1 MiB free on /nix")
    emitter.failure("switch-to-configuration switch failed", "journalctl -u unit (last lines):\n  broken")
    return terminal.getvalue().splitlines()


def test_normal_verbosity_shows_steps_notes_warnings_and_errors_but_no_command_and_no_host_output() -> None:
    assert shown_at(Verbosity.NORMAL, host=True) == [
        "a | up to date", "a | copied 3 paths, 6.9 KiB in 0.2 s", "a | warning: only 1 MiB free on /nix",
        "a | error: switch-to-configuration switch failed", "a |   journalctl -u unit (last lines):", "a |     broken",
    ]
    # Without a host (the run's own lines, an operation) what the commands print is shown: Nix's build progress.
    assert shown_at(Verbosity.NORMAL, host=False)[:2] == ["activating the configuration...", "up to date"]


def test_verbose_adds_every_command_and_what_the_hosts_print_and_quiet_keeps_only_warnings_and_errors() -> None:
    assert shown_at(Verbosity.VERBOSE, host=True)[:4] == [
        "a | + [a] nix-env --set /nix/store/x", "a | activating the configuration...", "a | up to date", "a | copied 3 paths, 6.9 KiB in 0.2 s",
    ]
    assert shown_at(Verbosity.QUIET, host=True) == [
        "a | warning: only 1 MiB free on /nix", "a | error: switch-to-configuration switch failed",
        "a |   journalctl -u unit (last lines):", "a |     broken",
    ]
    assert shown_at(Verbosity.QUIET, host=False)[0] == "warning: only 1 MiB free on /nix"


def test_a_dry_run_shows_its_commands_and_dry_activate_what_the_hosts_print() -> None:
    assert shown_at(Verbosity.NORMAL, host=True, dry_run=True)[0] == "a | + [a] nix-env --set /nix/store/x"
    assert shown_at(Verbosity.NORMAL, host=True, host_output=True)[0] == "a | activating the configuration..."
    assert shown_at(Verbosity.QUIET, host=True, host_output=True)[0] == "a | warning: only 1 MiB free on /nix"


def test_a_failure_without_details_shows_the_last_20_lines_the_host_printed_since_its_last_step() -> None:
    terminal = io.StringIO()
    emitter = host_emitter(Console(terminal), "a | ")
    emitter.output("before the step\n")
    emitter.step("copied 1 path, 1.0 KiB", seconds=0.1)
    emitter.output("".join(f"line {number}\n" for number in range(30)))
    emitter.record("captured: never shown\n")
    emitter.failure("building a failed")
    assert terminal.getvalue().splitlines() == [
        "a | copied 1 path, 1.0 KiB in 0.1 s", "a | error: building a failed", "a |   last 20 lines of output:",
        *(f"a |     line {number}" for number in range(10, 30)),
    ]


def test_a_script_sent_again_is_one_line_on_the_terminal_and_in_the_log() -> None:
    from deploy.scripts import script

    terminal, log = io.StringIO(), io.StringIO()
    console = Console(terminal)
    console.policy = OutputPolicy(Verbosity.VERBOSE)
    emitter = host_emitter(console, "a | ", log)
    confirm = ["sh", "-c", script("confirm_activation"), "sh", "/run/nixfab/magic-rollback/t", "/nix/var/nix/nixfab/verdicts"]
    for _ in range(5):  # a confirmation polled once a second
        emitter.command(confirm, where="a")
    body = script("confirm_activation").count("\n")
    for text, prefix in ((terminal.getvalue(), "a | "), (log.getvalue(), "")):
        assert text.count("[ -e \"$dir/activated\" ]") == 1
        assert text.splitlines()[body + 1:] == [
            f"{prefix}+ [a] sh -c '<the script shown above>' sh /run/nixfab/magic-rollback/t /nix/var/nix/nixfab/verdicts"
        ] * 4
    quiet = io.StringIO()
    emitter = host_emitter(Console(quiet), "a | ")  # the default shows no command at all
    emitter.command(confirm, where="a")
    assert quiet.getvalue() == ""


def test_verbosity_from_the_flags_and_invokes_echo_and_hide() -> None:
    from deploy.errors import UsageError
    from deploy.ui import verbosity_of

    assert verbosity_of(verbose=False, quiet=False) == Verbosity.NORMAL
    assert verbosity_of(verbose=True, quiet=False) == verbosity_of(verbose=False, quiet=False, echo=True) == Verbosity.VERBOSE
    assert verbosity_of(verbose=False, quiet=True) == verbosity_of(verbose=False, quiet=False, hide="both") == Verbosity.QUIET
    assert verbosity_of(verbose=False, quiet=False, hide=None) == verbosity_of(verbose=False, quiet=False, hide="none") == Verbosity.NORMAL
    assert verbosity_of(verbose=False, quiet=True, echo=True) == Verbosity.QUIET  # the task's own flag wins
    with pytest.raises(UsageError, match="contradict"):
        verbosity_of(verbose=True, quiet=True)


# --- the summary's last line, and pruning old runs' logs ----------------------------------------------------------


def test_the_totals_name_the_hosts_that_did_not_deploy_the_time_and_the_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deploy.engine.fleet import HostResult, totals_line

    monkeypatch.chdir(tmp_path)
    results = [HostResult("a", "ok", 1.0), HostResult("b", "rolled-back", 2.0), HostResult("c", "up-to-date", 0.5),
               HostResult("d", "ok", 1.0), HostResult("e", "not started", 0.0), HostResult("f", "skipped", 0.3)]
    assert totals_line(results, 72.4, tmp_path / "logs" / "run") == (
        "2 ok, 1 up to date, 1 skipped, 1 rolled back (b), 1 not started (e) in 1 min 12 s; logs: logs/run"
    )
    assert totals_line([HostResult("a", "failed", 0.1)], 0.25, None) == "1 failed (a) in 0.2 s"


def test_runs_started_in_one_second_are_pruned_in_the_order_they_started_even_when_the_pid_wrapped(tmp_path: Path) -> None:
    """Pids wrap (32692, then 319): within one second, only the start time says which run is older."""
    from deploy.cli.cli import run_stamp
    from deploy.ui import prune_runs
    from deploy.ui.log import RUN_DIRECTORY

    older, newer = "20250101-120000.900000-32692", "20250101-120001.000001-319"
    same_second = ["20250101-120001.000000-40000", newer]
    for name in [older, *same_second, "20250101-115959-5"]:  # and one named before runs had microseconds
        (tmp_path / name).mkdir()
    removed = prune_runs(tmp_path, 2, current=tmp_path / "20250101-120002.000000-7")
    assert sorted(path.name for path in removed) == ["20250101-115959-5", older, same_second[0]]
    assert [path.name for path in tmp_path.iterdir()] == [newer]
    first, second = run_stamp(), run_stamp()
    assert RUN_DIRECTORY.fullmatch(first) and first <= second


def test_pruning_keeps_the_newest_runs_and_touches_nothing_else(tmp_path: Path) -> None:
    from deploy.ui import prune_runs

    runs = ["20250101-120000-99", "20250101-120000-100", "20250102-080000-7", "20250103-090000-12"]
    for name in [*runs, "mine"]:
        (tmp_path / name).mkdir()
    (tmp_path / "20250101-000000-1.log").write_text("a file, not a run")
    current = tmp_path / "20250104-000000-5"  # this run's: not made yet, kept whatever happens
    removed = prune_runs(tmp_path, 3, current=current)
    assert sorted(path.name for path in removed) == ["20250101-120000-100", "20250101-120000-99"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["20250101-000000-1.log", "20250102-080000-7", "20250103-090000-12", "mine"]
    assert prune_runs(tmp_path, 0) == [] and prune_runs(tmp_path / "absent", 1) == []
