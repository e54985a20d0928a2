"""Perl's core-module documentation (POD) as retrieval pairs: Debian's ``perl-modules-5.36``, written by
the Perl community, documentation of another language and other authors than anything else the demo reads.

Each ``.pm`` / ``.pod`` file's POD is rendered to plain text by Perl's own ``Pod::Text`` (one ``perl``
process for all files; Perl is on every Debian system), then split at its ``=head1`` headings.
Pair (task ``PerlDocRetrieval``): query = NAME's one-line description ("Benchmark - benchmark running
times of Perl code" -> "benchmark running times of Perl code"), positive = the start of DESCRIPTION,
whitespace-normalised (prose, lists and code examples as rendered). Files without POD, without a
``name - description`` NAME or without DESCRIPTION, short ones, and repeated queries or positives (the
first file in path order is kept) are skipped, each counted by :func:`read_pairs`.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

from nemo_nvembed.checks.errors import UserError
from nemo_nvembed.data.bm25 import normalize, text_key
from nemo_nvembed.recipes.demo_corpus.docstrings import DocItem, trim

# One perl process renders every file: "\0<path>\n<text>" per file; width large enough not to wrap.
_RENDER = ('binmode STDOUT, ":encoding(UTF-8)"; use Pod::Text; for my $f (@ARGV) { my $o = ""; '
           'my $p = Pod::Text->new(width => 100000, sentence => 0); $p->output_string(\\$o); '
           '$p->parse_file($f); print "\\0$f\\n$o"; }')
_HEADING = re.compile(r"^(\S.*)$", re.MULTILINE)  # Pod::Text puts =head1 at column 0, the rest indented


def render(files: list[Path], perl_lib: Path) -> dict[str, str]:
    """{path: Pod::Text's plain text} of every file ("" for a file without POD); ``perl_lib`` goes on
    perl's @INC, so Pod::Text is found in the unpacked package when perl-modules is not installed."""
    perl = shutil.which("perl")
    if perl is None:
        raise UserError("--sources perldoc needs perl (Debian's perl-base) to render POD; none on PATH")
    cmd = [perl, f"-I{perl_lib}", "-e", _RENDER, *map(str, files)]
    p = subprocess.run(cmd, capture_output=True)
    if p.returncode != 0:
        raise UserError(f"--sources perldoc: rendering POD with Pod::Text failed: "
                        f"{p.stderr.decode(errors='replace').strip()[-500:]}")
    out = {}
    for chunk in p.stdout.decode("utf-8", errors="replace").split("\0")[1:]:
        path, _, text = chunk.partition("\n")
        out[path] = text
    return out


def sections(text: str) -> dict[str, str]:
    """{=head1 title (upper case): its text, whitespace-normalised}; the first of repeated titles."""
    heads = list(_HEADING.finditer(text))
    out = {}
    for m, nxt in zip(heads, heads[1:] + [None]):
        out.setdefault(m.group(1).strip().upper(), normalize(text[m.end(): nxt.start() if nxt else len(text)]))
    return out


def pair(text: str, min_summary_words: int, min_body_words: int, max_chars: int) -> tuple[str, str] | str:
    """(NAME's description, DESCRIPTION's start) of one rendered file, or the reason it gives none."""
    if not text.strip():
        return "no POD"
    parts = sections(text)
    name = parts.get("NAME", "")
    if " - " not in name:
        return "no 'name - description' NAME"
    if not parts.get("DESCRIPTION"):
        return "no DESCRIPTION"
    summary = name.split(" - ", 1)[1].strip()
    body = trim(parts["DESCRIPTION"], max_chars)
    if len(summary.split()) < min_summary_words:
        return "short summary"
    if len(body.split()) < min_body_words:
        return "short DESCRIPTION"
    return summary, body


def read_pairs(folder: Path, task: str, min_summary_words: int, min_body_words: int,
               max_chars: int) -> tuple[list[DocItem], Counter]:
    """(one pair per usable module or .pod file under `folder`, in path order; {skip reason: count})."""
    files = sorted(p for p in folder.rglob("*") if p.suffix in (".pm", ".pod") and p.is_file())
    if not files:
        raise UserError(f"--sources perldoc: no .pm or .pod files under {folder}")
    rendered = render(files, folder)
    items, skipped, seen = [], Counter(), set()
    for path in files:
        got = pair(rendered.get(str(path), ""), min_summary_words, min_body_words, max_chars)
        if isinstance(got, str):
            skipped[got] += 1
            continue
        summary, body = got
        keys = (text_key(summary), text_key(body))
        if keys[0] in seen or keys[1] in seen:
            skipped["repeated query or positive"] += 1
            continue
        seen.update(keys)
        module = str(path.relative_to(folder).with_suffix("")).replace("/", "::")
        items.append(DocItem(f"perldoc:{module}", module, task, "module", summary, body))
    return items, skipped
