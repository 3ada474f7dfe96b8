"""deploy.plan.status without a host: what one round trip's answer means, and how a row reads."""
from __future__ import annotations

from deploy.confirm.magic_rollback import Verdict
from deploy.plan.status import HostStatus, host_uptime, parse_host_state, status_json, status_rows

NEW = "/nix/store/0000000000000000000000000000000c-nixos-system-web1-42"


def test_the_answer_is_facts_then_pending_watchdogs_then_verdicts_newest_first() -> None:
    stdout = "".join([
        "profile\tsystem-42-link\n", f"current\t{NEW}\n", "booted\t\n", f"boot\t{NEW}\n", "uptime\t123.45\n",
        "pending\t0123456789ab\t12\n",
        "verdict\tfedcba987654\t1700000000\tverdict\trolled back by the watchdog: profile and boot default back to generation 41\n",
        "verdict\tfedcba987654\t1700000000\tby\twatchdog\n", "verdict\tfedcba987654\t1700000000\tgeneration\t42\n",
        "verdict\tfedcba987654\t1700000000\tundid\t1\n",
        "verdict\taaaaaaaaaaaa\t1600000000\tconfirmed\n",
    ])
    facts, pending, verdicts = parse_host_state(stdout)
    assert facts == {"profile": "system-42-link", "current": NEW, "booted": "", "boot": NEW, "uptime": "123.45"}
    assert pending == {"0123456789ab": 12}
    assert [(v.token, v.by, v.generation, v.undid) for v in verdicts] == [("fedcba987654", "watchdog", 42, True), ("aaaaaaaaaaaa", "deployer", None, False)]


def test_the_watchdog_column_says_a_pending_watchdog_first_then_the_newest_verdict() -> None:
    rolled_back = Verdict("fedcba987654", "rolled back by the watchdog: …", "watchdog", 1700000000, NEW, 42, undid=True)
    up = HostStatus("web1", True, 42, NEW, NEW, False, False, 60.0, last_verdict=rolled_back)
    assert up.watchdog == "watchdog rolled back generation 42 at 2023-11-14 22:13:20Z"
    waiting = HostStatus("web1", True, 42, NEW, watchdogs_pending={"0123456789ab": 12}, last_verdict=rolled_back)
    assert waiting.watchdog == "pending (0123456789ab armed 12s ago)"
    assert HostStatus("web1", True).watchdog == "-"
    assert status_rows([up])[0][-1] == up.watchdog
    document = status_json(up)
    assert document["watchdog"] == up.watchdog and document["last_verdict"]["generation"] == 42 and "verdicts" not in document


def test_uptime_counts_from_the_start_of_the_host_s_init_not_of_the_kernel_under_it() -> None:
    """A container's /proc/uptime (and a lab host's) is the kernel's, hours older than the system that runs in it;
    its PID 1 started when that system booted (/proc/1/stat's 22nd field, in clock ticks after the kernel's start)."""
    assert host_uptime({"uptime": "25200.50", "init-started": "2519850"}) == 25200.50 - 25198.50
    assert host_uptime({"uptime": "25200.50", "init-started": ""}) == 25200.50  # an answer without it: the kernel's
    assert host_uptime({"uptime": "", "init-started": "100"}) is None
    assert host_uptime({"uptime": "10.0", "init-started": "5000"}) == 10.0  # nonsense (init after now): the kernel's
