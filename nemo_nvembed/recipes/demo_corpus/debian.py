"""Files of Debian packages the demo data reads (man pages, dictionaries, WordNet), offline and without root.

:func:`package_root` answers ``/`` when a package's files are installed; otherwise it downloads the
packages once with ``apt-get download`` (no root needed; Debian mirrors only) and unpacks them with
``dpkg-deb -x`` into a cache folder, which it answers from then on. :func:`package_version` says
which version was read, for the manifest.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from nemo_nvembed.checks.errors import UserError

SYSTEM = Path("/")
CACHE = Path.home() / ".cache" / "nemo_nvembed"


def package_root(packages: tuple[str, ...], probe: str, cache: Path, purpose: str) -> Path:
    """The root (``/`` or `cache`) under which `probe`, a path like ``usr/share/man/man2/open.2.gz``,
    exists: the installed packages, or else the packages unpacked into `cache` (downloaded once)."""
    if (SYSTEM / probe).exists():
        return SYSTEM
    if (cache / probe).exists():
        return cache
    names = " ".join(packages)
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise UserError(f"{purpose} needs {SYSTEM / probe}: install Debian's {names} "
                        f"(apt-get and dpkg-deb were not found to fetch them into {cache})")
    cache.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["apt-get", "download", *packages], cwd=cache, capture_output=True, text=True)
    if p.returncode != 0:
        raise UserError(f"{purpose}: apt-get download {names} failed in {cache} "
                        f"(no {SYSTEM / probe} installed either): {p.stderr.strip()[-500:]}")
    for deb in sorted(cache.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(cache)], check=True)
    if not (cache / probe).exists():
        raise UserError(f"{purpose}: unpacked {names} into {cache} but found no {cache / probe}")
    return cache


def package_version(package: str, root: Path) -> str:
    """The Debian version of `package` as read from `root`: dpkg's record for ``/``, the cached .deb's
    control field otherwise; "unknown" when neither says."""
    if root == SYSTEM:
        cmd = ["dpkg-query", "-W", "-f=${Version}", package]
    else:
        debs = sorted(root.glob(f"{package}_*.deb"))
        if not debs:
            return "unknown"
        cmd = ["dpkg-deb", "-f", str(debs[-1]), "Version"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True)
    except OSError:
        return "unknown"
    return p.stdout.strip() if p.returncode == 0 and p.stdout.strip() else "unknown"
