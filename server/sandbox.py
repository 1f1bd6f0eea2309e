"""The sandbox of a worker that may run uploaded code (`--allow-untrusted-code`): bubblewrap (`bwrap`, Debian's
`bubblewrap` package), found and tried at start.

Inside, the worker sees the system's folders and Python's read-only, its job's folder (at `/job`) writable, and
nothing else of the server: not the data folder, not the token, not the server's processes (a PID namespace),
no network (a network namespace with nothing but its own loopback), an empty /tmp, a cleared environment. Every
process it starts lives in its PID namespace, which the kernel empties when bubblewrap dies: a kill of the worker
kills them all, double-forked or not. A server running as root runs the worker as the unprivileged uid `nobody`
(setpriv, before the worker starts); otherwise as its own uid, mapped to `nobody` in a user namespace.
Reference: https://github.com/containers/bubblewrap
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from convert.errors import ConvertError

__all__ = ["INSIDE_JOB", "NOBODY", "Sandbox", "find_sandbox", "require_sandbox"]

INSIDE_JOB = Path("/job")  # where the job's folder is inside the sandbox
NOBODY = 65534  # the uid and gid the worker runs as
_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc", "/sys")  # read-only, where they exist
# What the worker keeps of the server's environment (nothing secret: the token is never passed on).
_KEPT_ENV = ("PYTHONPATH", "CUDA_VISIBLE_DEVICES", "LANG", "LC_ALL", "TZ")


@dataclasses.dataclass(frozen=True)
class Sandbox:
    """How to start a worker command inside bubblewrap.

    Args:
        bwrap: the bubblewrap executable.
        hidden: paths the worker must not see even where a folder it reads holds them (the data folder, a token
            file): an empty folder or file takes their place.
        readable: folders the worker reads besides the system's and Python's (the allowlisted factories' folder).
    """

    bwrap: str
    hidden: tuple[Path, ...] = ()
    readable: tuple[Path, ...] = ()

    @property
    def drops_uid(self) -> bool:
        """Whether the worker runs as `nobody` outside the sandbox too (the server runs as root)."""
        return os.geteuid() == 0

    def command(self, argv: Sequence[str], workdir: Path, env: dict[str, str]) -> list[str]:
        """`argv` as it runs in the sandbox, with `workdir` as /job and `env` (plus the kept variables) as its
        whole environment."""
        args = [self.bwrap, "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
        if not self.drops_uid:  # an unprivileged server: a user namespace, its uid seen as nobody inside
            args += ["--unshare-user", "--disable-userns", "--uid", str(NOBODY), "--gid", str(NOBODY)]
        args += ["--die-with-parent", "--new-session", "--clearenv", "--hostname", "sandbox"]
        kept = {name: os.environ[name] for name in _KEPT_ENV if name in os.environ}
        for name, value in {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", **kept, **env}.items():
            args += ["--setenv", name, value]
        binds = _python_folders() + [Path(p) for p in self.readable]
        binds = _outermost([p for p in binds if p.is_dir() and p != Path("/")])
        system = [Path(p) for p in _SYSTEM if os.path.isdir(p)]
        binds = [p for p in binds if not any(p.is_relative_to(s) for s in system)]
        # An empty /tmp, writable by the sandbox's user (torch's imports want a tempdir): mounted first, so that the
        # folders bound below stay visible when they live under /tmp (a virtualenv or a checkout there).
        args += ["--perms", "1777", "--tmpfs", "/tmp"]
        for folder in _created_parents([*binds, INSIDE_JOB], system):
            args += ["--perms", "0755", "--dir", str(folder)]
        for folder in system:
            args += ["--ro-bind", str(folder), str(folder)]
        for folder in binds:
            args += ["--ro-bind", str(folder), str(folder)]
        for path in self.hidden:
            if any(path.is_relative_to(folder) for folder in binds + system):
                args += ["--tmpfs", str(path)] if path.is_dir() else ["--ro-bind", "/dev/null", str(path)]
        args += ["--bind", str(workdir), str(INSIDE_JOB), "--proc", "/proc", "--dev", "/dev"]
        for device in sorted(Path("/dev").glob("nvidia*")):  # the GPUs, when the server has them
            args += ["--dev-bind", str(device), str(device)]
        args += ["--chdir", "/", "--"]
        if self.drops_uid:
            args += [shutil.which("setpriv") or "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}"]
            args += ["--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
        return args + list(argv)

    def prepare(self, path: Path) -> None:
        """Make `path` (a file or folder, and what it holds) the worker's, when it runs as another uid."""
        if not self.drops_uid:
            return
        os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
        if path.is_dir() and not path.is_symlink():
            for root, folders, files in os.walk(path):
                for name in folders + files:
                    os.chown(os.path.join(root, name), NOBODY, NOBODY, follow_symlinks=False)


def find_sandbox(hidden: Sequence[Path] = (), readable: Sequence[Path] = ()) -> tuple[Sandbox | None, str]:
    """The sandbox, if bubblewrap is installed and works here (tried with this Python), else None.

    Returns:
        (the sandbox or None, a line saying which and why).
    """
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return None, "bubblewrap is not installed (apt-get install bubblewrap)"
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return None, "setpriv (util-linux) is missing: it drops the worker to an unprivileged uid"
    sandbox = Sandbox(bwrap, tuple(Path(p) for p in hidden), tuple(Path(p) for p in readable))
    probe = Path(os.environ.get("TMPDIR", "/tmp"))
    command = sandbox.command([sys.executable, "-P", "-c", "import os; os.listdir('/job')"], probe, {})
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"bubblewrap does not start here ({e})"
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
        return None, f"bubblewrap cannot sandbox here ({reason}): the kernel may not allow namespaces"
    who = f"uid {NOBODY}" if sandbox.drops_uid else "the server's uid, namespaced"
    return sandbox, f"bubblewrap ({who}, no network, its job's folder only)"


def require_sandbox(allow_untrusted: bool, trust_uploaded: bool, found: tuple[Sandbox | None, str]) -> None:
    """Refuse to run uploaded code without a sandbox, unless the operator trusts it.

    Raises:
        ConvertError: naming what is missing and the two ways on.
    """
    sandbox, why = found
    if allow_untrusted and sandbox is None and not trust_uploaded:
        raise ConvertError(
            f"--allow-untrusted-code needs a sandbox for the workers, and there is none: {why}. Install "
            "bubblewrap where the kernel allows namespaces, or add --trust-uploaded-code (uploaded code then runs "
            "as the server's user: the equivalent of a shell as that user)"
        )


def _python_folders() -> list[Path]:
    """Where this Python and every module the worker imports live (sys.path, not the current folder)."""
    folders = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    folders |= {os.path.dirname(os.path.realpath(sys.executable))}
    folders |= {entry for entry in sys.path if entry and os.path.isabs(entry) and entry != os.getcwd()}
    folders |= {entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry}
    resolved = set()
    for folder in folders:
        resolved |= {Path(folder), Path(os.path.realpath(folder))}
    return sorted(resolved)


def _outermost(folders: list[Path]) -> list[Path]:
    """`folders` without those inside another of them."""
    return sorted({f for f in folders if not any(f != o and f.is_relative_to(o) for o in folders)})


def _created_parents(destinations: list[Path], system: list[Path]) -> list[Path]:
    """The folders that bubblewrap creates on the way to each destination (readable by the worker's uid)."""
    parents = set()
    for destination in destinations:
        for parent in destination.parents:
            if parent != Path("/") and not any(parent.is_relative_to(s) for s in system):
                parents.add(parent)
    return sorted(parents, key=lambda p: len(p.parts))
