"""Debian's package descriptions as retrieval pairs: the English descriptions of every package in Debian's
main archive (``dists/<release>/main/i18n/Translation-en.xz``), written by thousands of maintainers about
software of every kind (games, science, fonts, servers, libraries).

Pair (task ``DebianPackageRetrieval``): query = the one-line synopsis ("Real-time strategy game of ancient
warfare"), positive = the extended description, whitespace-normalised ("0 A.D. (pronounced ...) is a free,
open-source ..."): an overview of a piece of software, the shape of a man page's NAME -> DESCRIPTION.
Skipped, each counted by :func:`read_pairs`: transitional, dummy, debug-symbol and documentation-only
packages (their text is a template), short synopses or descriptions, and repeated synopses or first
paragraphs (a library's -dev, -doc and binary packages share them; kept: the first package by name).

The file is not on a machine by default (Debian's images set ``Acquire::Languages "none"``). It is fetched
once with apt's own downloader (``apt-helper download-file``, the mirror and proxy of the apt
configuration) into a cache and checked against the SHA256 that the archive's ``InRelease`` (already
verified by apt when it was fetched) lists for it, so every build reads the same bytes the local apt
index names; :func:`fetch` answers the cached file from then on.
"""
from __future__ import annotations

import hashlib
import lzma
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

from nemo_nvembed.checks.errors import UserError
from nemo_nvembed.data.bm25 import normalize, text_key
from nemo_nvembed.recipes.demo_corpus.docstrings import DocItem, trim

MEMBER = "main/i18n/Translation-en.xz"
LISTS = Path("/var/lib/apt/lists")
APT_HELPER = Path("/usr/lib/apt/apt-helper")
# Synopses of packages whose description is a template, not a description of software.
TEMPLATE = re.compile(r"transitional|dummy package|debug(ging)? symbols|\bdbgsym\b|metapackage|"
                      r"^documentation for|\(documentation\)|\bdocumentation$", re.IGNORECASE)


def release_index(lists: Path = LISTS) -> tuple[Path, str]:
    """(the ``InRelease`` file of the release whose main component apt indexes, that release's base URI),
    from ``apt-get indextargets``."""
    if not shutil.which("apt-get"):
        raise UserError("--sources debdesc needs Debian's apt (apt-get) to find the archive; none on PATH")
    p = subprocess.run(["apt-get", "indextargets", "--format", "$(BASE_URI)", "Identifier: Packages",
                        "Component: main"], capture_output=True, text=True)
    bases = sorted({b for b in p.stdout.split() if "/debian/dists/" in b and "security" not in b})
    if p.returncode != 0 or not bases:
        raise UserError(f"--sources debdesc: apt indexes no Debian main component (apt-get indextargets: "
                        f"{(p.stderr or p.stdout).strip()[-300:] or 'nothing'}); run apt-get update first")
    base = bases[0]
    inrelease = lists / (re.sub(r"^\w+://", "", base).replace("/", "_") + "InRelease")
    if not inrelease.is_file():
        raise UserError(f"--sources debdesc: {inrelease} (the release index for {base}) is missing; "
                        f"run apt-get update first")
    return inrelease, base


def listed_sha256(inrelease: str, member: str = MEMBER) -> tuple[str, int] | None:
    """(sha256, size) that an ``InRelease`` text's SHA256 section lists for `member`; None if it lists none."""
    section = False
    for line in inrelease.splitlines():
        if not line.startswith(" "):
            section = line.strip() == "SHA256:"
            continue
        parts = line.split()
        if section and len(parts) == 3 and parts[2] == member:
            return parts[0], int(parts[1])
    return None


def release_field(inrelease: str, field: str) -> str:
    m = re.search(rf"^{field}: (.*)$", inrelease, re.MULTILINE)
    return m.group(1).strip() if m else "unknown"


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fetch(cache: Path, lists: Path = LISTS) -> tuple[Path, dict]:
    """(the release's Translation-en.xz, checked against its InRelease hash; {release, date, url, sha256})."""
    inrelease, base = release_index(lists)
    text = inrelease.read_text(errors="replace")
    listed = listed_sha256(text)
    if listed is None:
        raise UserError(f"--sources debdesc: {inrelease} lists no SHA256 for {MEMBER}")
    digest, size = listed
    info = {"release": release_field(text, "Description"), "date": release_field(text, "Date"),
            "url": base + MEMBER, "sha256": digest}
    path = cache / f"Translation-en.{digest[:16]}.xz"
    if path.is_file() and path.stat().st_size == size and sha256(path) == digest:
        return path, info
    if not APT_HELPER.is_file():
        raise UserError(f"--sources debdesc: {APT_HELPER} (apt's downloader) is missing; cannot fetch {info['url']}")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    p = subprocess.run([str(APT_HELPER), "download-file", info["url"], str(tmp), f"SHA256:{digest}"],
                       capture_output=True, text=True)
    if p.returncode != 0 or not tmp.is_file():
        raise UserError(f"--sources debdesc: fetching {info['url']} (SHA256 {digest} from {inrelease}) failed: "
                        f"{(p.stderr or p.stdout).strip()[-500:]}")
    tmp.replace(path)
    return path, info


def records(text: str):
    """(package, synopsis, [paragraphs of the extended description]) per record of a Translation file."""
    for record in text.split("\n\n"):
        package, lines = None, None
        for line in record.splitlines():
            if line.startswith("Package:"):
                package = line.split(":", 1)[1].strip()
            elif line.startswith("Description-en:"):
                lines = [line.split(":", 1)[1].strip()]
            elif lines is not None and line.startswith(" "):
                lines.append(line[1:])
            elif lines is not None:
                break
        if package is None or lines is None:
            continue
        paragraphs, current = [], []
        for line in lines[1:]:
            if line.strip() == ".":
                paragraphs.append(normalize(" ".join(current)))
                current = []
            else:
                current.append(line)
        paragraphs.append(normalize(" ".join(current)))
        yield package, normalize(lines[0]), [p for p in paragraphs if p]


def pair(synopsis: str, paragraphs: list[str], min_summary_words: int, min_body_words: int,
         max_chars: int) -> tuple[str, str] | str:
    """(synopsis, extended description) of one package, or the reason it gives none."""
    if TEMPLATE.search(synopsis):
        return "transitional, dummy, debug-symbol or documentation package"
    if len(synopsis.split()) < min_summary_words:
        return "short synopsis"
    body = trim(" ".join(paragraphs), max_chars)
    if len(body.split()) < min_body_words:
        return "short description"
    return synopsis, body


def read_pairs(path: Path, task: str, min_summary_words: int, min_body_words: int,
               max_chars: int) -> tuple[list[DocItem], Counter]:
    """(one pair per usable package of the Translation file at `path`, by package name; {skip reason: count})."""
    try:
        text = lzma.open(path, "rt", encoding="utf-8", errors="replace").read()
    except (OSError, lzma.LZMAError) as e:
        raise UserError(f"--sources debdesc: cannot read {path}: {e}") from e
    items, skipped, seen = [], Counter(), set()
    for package, synopsis, paragraphs in sorted(records(text)):
        got = pair(synopsis, paragraphs, min_summary_words, min_body_words, max_chars)
        if isinstance(got, str):
            skipped[got] += 1
            continue
        summary, body = got
        keys = (("s", text_key(summary)), ("p", text_key(paragraphs[0])))
        if keys[0] in seen or keys[1] in seen:
            skipped["repeated synopsis or first paragraph"] += 1
            continue
        seen.update(keys)
        items.append(DocItem(f"debdesc:{package}", package, task, "package", summary, body))
    if not items and not skipped:
        raise UserError(f"--sources debdesc: {path} holds no package descriptions")
    return items, skipped
