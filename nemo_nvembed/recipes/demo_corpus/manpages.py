"""The demo's second held-out domain: the Linux man-pages project's manual pages (system calls,
C library functions, file formats, overviews), a source the demo never trains on.

Query = the one-line description of a page's NAME section ("open and possibly create a file"),
document = the start of its DESCRIPTION section, groff markup removed. The same task shape as the
Python-documentation held-out split, on another domain (C and the Linux kernel's interfaces,
written by other authors in another style), so the table says how far training on Python
documentation transfers.

Source: Debian's ``manpages`` and ``manpages-dev`` packages (the Linux man-pages project; the
licences are the project's own permissive "verbatim" / GPL-compatible ones, listed in each page's
header and in /usr/share/doc/manpages/copyright). Read from /usr/share/man when installed (Debian
installs them by default); otherwise :func:`man_root` downloads the two packages with ``apt-get
download`` (no root needed) and unpacks them with ``dpkg-deb -x`` into a cache folder.
"""
from __future__ import annotations

import dataclasses
import gzip
import random
import re
from pathlib import Path

from nemo_nvembed.recipes.demo_corpus import debian
from nemo_nvembed.recipes.demo_corpus.docstrings import trim

SECTIONS = ("2", "3", "5", "7")  # system calls, library functions, file formats, overviews
PACKAGES = ("manpages", "manpages-dev")
CACHE = debian.CACHE / "manpages"

_FONT = re.compile(r"\\f(\[[^\]]*\]|\(..|.)")  # \fB \fI \fR \fP \f(CW \f[B]
_ESCAPES = [(re.compile(r"\\\(em|\\\(en"), "-"), (re.compile(r"\\-"), "-"), (re.compile(r"\\\(aq"), "'"),
            (re.compile(r"\\\((lq|rq|dq)"), '"'), (re.compile(r"\\&|\\:|\\/|\\,|\\%"), ""),
            (re.compile(r"\\e"), "\\"), (re.compile(r"\\ "), " "), (re.compile(r"\\\*\(\w\w|\\\*\[[^\]]*\]|\\\*."), ""),
            (re.compile(r"\\\(.."), ""), (re.compile(r"\\\[[^\]]*\]"), "")]
_SPACED = re.compile(r"\s+([,.;:)]|\(\))")  # "CMSG_ENTRY ," and "open ()" from macro-per-word lines
_TEXT_MACROS = re.compile(r"^\.(B|I|BR|BI|IB|IR|RB|RI|SM|SB)\s+(.*)$")


@dataclasses.dataclass(frozen=True)
class ManPage:
    id: str  # "open.2"
    section: str
    summary: str  # NAME's description
    body: str  # DESCRIPTION's start


def man_root() -> Path:
    """/usr/share/man when the man-pages project's pages are installed there, else the unpacked
    Debian packages in the cache (downloaded once; :func:`.debian.package_root`)."""
    purpose = "the demo's second held-out split (Linux man pages)"
    return debian.package_root(PACKAGES, "usr/share/man/man2/open.2.gz", CACHE, purpose) / "usr" / "share" / "man"


def plain(line: str) -> str:
    """One line of groff source as text: font switches and escapes removed, text macros unwrapped."""
    m = _TEXT_MACROS.match(line)
    if m:
        line = m.group(2).replace('"', "")
    elif line.startswith((".", "'")):
        return ""
    line = _FONT.sub("", line)
    for pattern, repl in _ESCAPES:
        line = pattern.sub(lambda _m, r=repl: r, line)
    return line.strip()


def parse(text: str, name: str, section: str, max_chars: int) -> ManPage | None:
    """NAME's description and DESCRIPTION's start of one page's groff source; None for a link page
    (``.so``), a page of another project, or one without both parts."""
    if text.lstrip().startswith(".so ") or "Linux man-pages" not in text[:4000]:
        return None
    sections, current = {}, None
    for raw in text.splitlines():
        if raw.startswith(".SH"):
            current = raw[3:].strip().strip('"').upper()
            sections[current] = []
        elif current is not None:
            line = plain(raw)
            if line:
                sections[current].append(line)
    head = " ".join(sections.get("NAME", []))
    if " - " not in head or "DESCRIPTION" not in sections:
        return None
    summary = _SPACED.sub(r"\1", head.split(" - ", 1)[1].strip())
    body = trim(_SPACED.sub(r"\1", " ".join(" ".join(sections["DESCRIPTION"]).split())), max_chars)
    if len(summary.split()) < 3 or len(body.split()) < 20:
        return None
    return ManPage(f"{name}.{section}", section, summary, body)


def collect(root: Path, max_chars: int) -> list[ManPage]:
    """Every usable page of :data:`SECTIONS`, sorted by id; pages sharing a summary keep the first."""
    pages, seen = [], set()
    for section in SECTIONS:
        for path in sorted((root / f"man{section}").glob(f"*.{section}.gz")):
            name = path.name[: -len(f".{section}.gz")]
            page = parse(gzip.open(path, "rt", encoding="utf-8", errors="replace").read(), name, section, max_chars)
            if page is not None and page.summary.lower() not in seen:
                seen.add(page.summary.lower())
                pages.append(page)
    return sorted(pages, key=lambda p: p.id)


def heldout_split(pages: list[ManPage], n_queries: int, n_corpus: int, seed: int) -> dict:
    """A BEIR split (corpus, queries, qrels): n_corpus pages' descriptions, n_queries of them queried
    by their summaries; at least half of the corpus stays a distractor."""
    rng = random.Random(seed)
    docs = sorted(rng.sample(pages, min(n_corpus, len(pages))), key=lambda p: p.id)
    queries = sorted(rng.sample(docs, min(n_queries, len(docs) // 2)), key=lambda p: p.id)
    return {"corpus": [{"_id": p.id, "title": "", "text": p.body} for p in docs],
            "queries": [{"_id": "q:" + p.id, "text": p.summary} for p in queries],
            "qrels": [("q:" + p.id, p.id, 1) for p in queries]}
