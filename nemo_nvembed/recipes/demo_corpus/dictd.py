"""Dictionaries in the dictd format as retrieval pairs: FOLDOC (``dict-foldoc``) and the Jargon File
(``dict-jargon``), two computing glossaries written by people outside this project.

Format: ``NAME.index`` holds ``headword<TAB>offset<TAB>length`` lines (offset and length in dictd's
base64), pointing into ``NAME.dict.dz`` (dictzip, which Python's gzip reads). An entry is its
headword lines, a blank line, then indented paragraphs with markup: ``{cross references}``,
``<category>`` tags, ``/pronunciations/``, part-of-speech marks (``n.``), sense numbers,
``[source or etymology]`` notes, ``(1997-03-10)`` dates, links and e-mail addresses.

Pair (task ``GlossaryRetrieval``): query = the first sentence of the cleaned definition, positive =
``"headword: the rest of the definition"``, both from the first sense of a word with numbered senses
(the rest of the entry would describe other meanings than the query's). The query names no term, as in both held-out splits
(a one-line summary -> its description); the positive names its term, as a man page's description
names its function. Entries whose rest has fewer than ``min_body_words`` words are skipped (short
definitions, redirects), and so are front matter and licence notices (:data:`NOT_DEFINITIONS`) and
repeated headwords, queries and positives (the first entry in file order is kept); :func:`read_pairs`
counts every skip.
"""
from __future__ import annotations

import gzip
import re
from collections import Counter
from pathlib import Path

from nemo_nvembed.checks.errors import UserError
from nemo_nvembed.data.bm25 import normalize, text_key
from nemo_nvembed.recipes.demo_corpus.docstrings import DocItem, trim

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
NOT_DEFINITIONS = ("<introduction>", "Permission is granted")  # FOLDOC's front matter, licence notices
_B64 = re.compile(f"[{re.escape(B64)}]+")
_LINK = re.compile(r"\{[^{}]*(?:://|\b(?:news|mailto|ftp):|\.html?\b)[^{}]*\}")  # {text (url)}, {(url)}
_XREF = re.compile(r"\{([^{}]*)\}")
_EMAIL = re.compile(r"<[^<>\s]+@[^<>\s]+>")
_URL = re.compile(r"\b(?:https?|ftp)://\S+")
_DATE = re.compile(r"\(\d{4}-\d\d(?:-\d\d)?\)")
_POS = r"(?:n|v|vt|vi|adj|adv|interj|prep|pl|excl|conj|pron|abbr|abbrev)\."
_LEAD = re.compile(rf"^(?:<[^<>]*>|\[[^\[\]]*\]|/[^/\n]{{1,40}}/,?(?=\s|$)|\d+\.(?=\s)|{_POS},?(?=\s|$))\s*")
_LATER_SENSE = re.compile(r"\s*(?:<[^<>]*>\s*)?(?:[2-9]|\d\d+)\.\s")  # "2. ", "   <jargon> 3. "
_DROP = re.compile("|".join(p.pattern for p in (_LINK, _EMAIL, _URL, _DATE)))
_SPACE_BEFORE = re.compile(r"\s+([.,;:])")
# Like docstrings.SENTENCE_END, plus typographic quotes, and no cut after an initial ("James S. Jones", "U.S.").
SENTENCE_END = re.compile(r"(?<!\be\.g)(?<!\bi\.e)(?<!\betc)(?<!\bvs)(?<!\bcf)(?<!\b[A-Za-z])[.!?]"
                          r"(?=\s+[A-Z(\"'`*“‘])")


def _b64(text: str) -> int:
    n = 0
    for c in text:
        n = n * 64 + B64.index(c)
    return n


def read_entries(index: Path, data: Path) -> list[str]:
    """Raw text of every entry (one per distinct offset/length; the 00-database-* metadata skipped),
    in file order. A malformed line or an unreadable file is a UserError naming it."""
    try:
        raw = gzip.open(data, "rb").read()
    except (OSError, EOFError) as exc:
        raise UserError(f"{data}: not a readable dictzip/gzip file ({exc})") from None
    try:
        lines = index.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{index}: not a readable dictd index ({exc})") from None
    spans = set()
    for n, line in enumerate(lines, 1):
        parts = line.split("\t")
        if len(parts) != 3 or not all(_B64.fullmatch(p) for p in parts[1:]):
            raise UserError(f"{index}:{n}: expected 'headword<TAB>offset<TAB>length' (dictd base64), got {line[:80]!r}")
        if parts[0].startswith(("00-database", "00database")):
            continue
        start, size = _b64(parts[1]), _b64(parts[2])
        if start + size > len(raw):
            raise UserError(f"{index}:{n}: entry {parts[0]!r} ends at byte {start + size}, past the end of "
                            f"{data} ({len(raw)} bytes uncompressed)")
        spans.add((start, size))
    return [raw[s: s + k].decode("utf-8", errors="replace") for s, k in sorted(spans)]


def _strip_lead(text: str) -> str:
    """Remove leading markup (tags, notes, pronunciations, sense numbers, asides in parentheses)."""
    while True:
        before = text
        text = _LEAD.sub("", text)
        if text.startswith("("):
            depth = 0
            for k, c in enumerate(text):
                depth += {"(": 1, ")": -1}.get(c, 0)
                if depth == 0:
                    text = text[k + 1:].lstrip()
                    break
        if text == before:
            return text


def clean_paragraph(text: str) -> str:
    """One paragraph as plain text; "" for one that is only markup, links or an attribution line."""
    attribution = "@" in text and bool(_EMAIL.search(text))
    if any(mark in text for mark in ("@", ":", "(", ".htm")):  # a link, e-mail address, URL or date may be there
        text = _DROP.sub("", text)
    text = text.strip()
    if text[:1] in "{[(" and not re.search(r"\w", _XREF.sub("", text)):
        return ""  # only cross references: a "see also" list or a link
    text = _strip_lead(normalize(text.replace("{", "").replace("}", "")))  # {cross reference} -> its text
    text = _SPACE_BEFORE.sub(r"\1", text)
    if attribution and text.endswith(":") or not re.search(r"\w\w", text):
        return ""  # "Jane Doe <jd@example.org> adds:"
    return text


def parse_entry(text: str, limit: int = 10**9) -> tuple[str, str]:
    """(headword as written, cleaned definition) of one raw entry: its first sense only (an entry
    with numbered senses stops before "2."), cleaned only until it holds `limit` characters."""
    parts = re.split(r"\n[ \t]*\n", text.strip("\n"), maxsplit=1)
    term = normalize(parts[0].splitlines()[0]) if parts[0].strip() else ""
    kept, size = [], 0
    for paragraph in re.split(r"\n[ \t]*\n", parts[1]) if len(parts) > 1 else []:
        if size >= limit or kept and _LATER_SENSE.match(paragraph):
            break  # enough text, or sense 2 of a word with several: the pair keeps to sense 1
        paragraph = clean_paragraph(paragraph)
        if paragraph:
            kept.append(paragraph)
            size += len(paragraph) + 1
    return term, " ".join(kept)


def split_definition(definition: str) -> tuple[str, str]:
    """(first sentence, rest)."""
    m = SENTENCE_END.search(definition)
    return (definition[: m.end()], definition[m.end():].strip()) if m else (definition, "")


def read_pairs(folder: Path, name: str, task: str, min_query_words: int, min_body_words: int,
               max_chars: int) -> tuple[list[DocItem], Counter]:
    """Every usable entry of ``folder/name.index`` as a DocItem (id ``name:headword``, summary =
    query, body = positive trimmed to max_chars), sorted by id; and the count of each skip reason."""
    items, skipped, seen = [], Counter(), set()
    for raw in read_entries(folder / f"{name}.index", folder / f"{name}.dict.dz"):
        if len(raw.split()) <= min_query_words + min_body_words:  # with markup: cannot give both parts
            skipped["entry_too_short"] += 1
            continue
        term, definition = parse_entry(raw, limit=300 + max_chars)  # query <= 300 chars, positive <= max_chars
        query, rest = split_definition(definition)
        if not term or any(mark in raw for mark in NOT_DEFINITIONS):
            skipped["not_a_definition"] += 1
        elif len(query.split()) < min_query_words or len(query) > 300:
            skipped["first_sentence_too_short_or_long"] += 1
        elif len(rest.split()) < min_body_words:
            skipped["rest_too_short"] += 1
        elif {("term", term.lower()), ("text", text_key(query)), ("text", text_key(rest))} & seen:
            skipped["repeated_headword_or_text"] += 1
        else:
            seen |= {("term", term.lower()), ("text", text_key(query)), ("text", text_key(rest))}
            items.append(DocItem(f"{name}:{term}", name, task, "entry", query, trim(f"{term}: {rest}", max_chars)))
    return sorted(items, key=lambda i: i.id), skipped
