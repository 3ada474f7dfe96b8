"""switch-pull's first contact with a host is ssh under `nix copy`: a refused host key is exit 5 there too, as for push."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from deploy.build.build import Evaluation, build_remotely
from deploy.errors import BuildError, HostKeyRejected
from deploy.transport.process import Result

CHANGED = """@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
Host key verification failed.
error: cannot connect to 'root@beta'
"""


class CopyFails:
    def __init__(self, stderr: str) -> None:
        self.stderr = stderr

    def run(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, **kwargs: Any) -> Result:
        return Result(tuple(argv), 1, "", self.stderr)


class NeverReached:
    label = "beta"

    def run(self, *args: Any, **kwargs: Any) -> Result:
        raise AssertionError("nothing runs on the host after the copy failed")


@pytest.mark.parametrize("stderr", [CHANGED, "Host key verification failed.\r\nerror: cannot connect to 'root@beta'\n"])
def test_a_refused_host_key_while_copying_the_derivation_is_exit_5(stderr: str) -> None:
    evaluation = Evaluation(derivation="/nix/store/x-system.drv", out_path="/nix/store/x-system")
    with pytest.raises(HostKeyRejected, match="beta: SSH host key") as raised:
        build_remotely(CopyFails(stderr), NeverReached(), "ssh-ng://root@beta", evaluation, nix_env={})  # type: ignore[arg-type]
    assert raised.value.exit_code == 5


def test_another_copy_failure_is_still_a_build_error() -> None:
    evaluation = Evaluation(derivation="/nix/store/x-system.drv", out_path="/nix/store/x-system")
    with pytest.raises(BuildError, match="copying the derivation to beta failed: error: no space"):
        build_remotely(CopyFails("error: no space\n"), NeverReached(), "ssh-ng://root@beta", evaluation, nix_env={})  # type: ignore[arg-type]
