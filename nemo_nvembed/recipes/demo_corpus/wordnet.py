"""WordNet 3.0 synsets (Debian's ``wordnet-base``) as retrieval pairs: a general-English source.

Format (wndb(5WN)): ``/usr/share/wordnet/data.{noun,verb,adj,adv}`` hold a licence header (lines
starting with two spaces), then one synset a line: ``offset lex_filenum ss_type w_cnt(hex)
[word lex_id(hex)]... p_cnt [symbol offset pos source/target]... [verb frames] | gloss``, where the
gloss is the definition followed by quoted examples: ``definition; "example"; "example"``.

Pair (task ``WordNetRetrieval``): query = the definition; positive = the synset's words, part of
speech and one relation, then its examples: ``kill (noun, a kind of destruction): "the pilot
reported two kills during the mission"``. A reverse-dictionary task: the query describes, the
positive names and shows the word in use, and the two share no text. Only synsets with at least
one example qualify (the positive must say more than a word list), with a positive of at least
:data:`MIN_POSITIVE_WORDS` words; a repeated definition keeps its first synset (files in the order noun, verb, adjective, adverb).
The relation is the first hypernym (nouns, verbs), head adjective (satellites) or the adjective
an adverb derives from, named by its first word.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from nemo_nvembed.checks.errors import UserError
from nemo_nvembed.data.bm25 import text_key
from nemo_nvembed.recipes.demo_corpus.docstrings import DocItem, trim

FILES = {"n": "data.noun", "v": "data.verb", "a": "data.adj", "r": "data.adv"}  # by pointer pos (s -> a)
POS_NAMES = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}
RELATIONS = {("@", "n"): "a kind of", ("@i", "n"): "an instance of", ("@", "v"): "a way to",
             ("&", "s"): "similar to", ("\\", "r"): "derived from"}  # (pointer symbol, source ss_type)
MIN_POSITIVE_WORDS = 8
_MARKER = re.compile(r"\((?:a|p|ip)\)$")  # adjective position markers: "back(a)"


def _word(raw: str) -> str:
    return _MARKER.sub("", raw).replace("_", " ")


def read_files(folder: Path) -> dict[str, tuple[Path, bytes]]:
    """{pointer pos: (path, contents)} of the four data files (a synset's offset is its byte offset)."""
    out = {}
    for pos, name in FILES.items():
        try:
            out[pos] = (folder / name, (folder / name).read_bytes())
        except OSError as exc:
            raise UserError(f"{folder / name}: not readable ({exc})") from None
    return out


def line_at(files: dict[str, tuple[Path, bytes]], pos: str, offset: str) -> tuple[str, str] | None:
    """(where, synset line) at a pointer's (pos, offset); None when the file has no line there."""
    path, data = files["a" if pos == "s" else pos]
    start = int(offset)
    if start >= len(data) or (start and data[start - 1: start] != b"\n"):
        return None
    end = data.find(b"\n", start)
    return f"{path} (byte {start})", data[start: end if end >= 0 else len(data)].decode("utf-8", errors="replace")


def parse_line(line: str, where: str) -> tuple[str, list[str], list[str], str]:
    """(ss_type, words, pointer fields (symbol, offset, pos, source/target, symbol, ...), gloss) of
    one synset line."""
    head, sep, gloss = line.partition(" | ")
    f = head.split()
    try:
        if not sep or not re.fullmatch(r"\d{8}", f[0]) or f[2] not in POS_NAMES:
            raise ValueError("no 'offset lex_filenum ss_type ... | gloss' layout")
        n_words = int(f[3], 16)
        at = 4 + 2 * n_words
        if len(f) <= at or not n_words:
            raise ValueError(f"{len(f)} fields before the gloss, too few for its word count {n_words}")
        pointers = f[at + 1: at + 1 + 4 * int(f[at])]
        if len(pointers) != 4 * int(f[at]):
            raise ValueError(f"fewer fields than its pointer count {int(f[at])} needs")
    except (ValueError, IndexError) as exc:
        raise UserError(f"{where}: not a WordNet data line ({exc}): {line[:80]!r}") from None
    return f[2], [_word(w) for w in f[4:at:2]], pointers, gloss.strip()


def split_gloss(gloss: str) -> tuple[str, list[str]]:
    """(definition, quoted examples)."""
    definition = gloss.split('"', 1)[0].strip().rstrip(";").strip()
    return definition, [e.strip() for e in re.findall(r'"([^"]+)"', gloss[len(definition):]) if e.strip()]


def _relation(ss_type: str, pointers, files) -> str:
    for k in range(0, len(pointers), 4):
        symbol, offset, pos, source_target = pointers[k: k + 4]
        name = RELATIONS.get((symbol, ss_type))
        found = line_at(files, pos, offset) if name else None
        if found:
            words = parse_line(found[1], found[0])[1]
            k = int(source_target[2:], 16)  # the target word when the pointer is lexical, else 0
            return f", {name} {words[k - 1] if 0 < k <= len(words) else words[0]}"
    return ""


def read_pairs(folder: Path, task: str, min_query_words: int, max_chars: int) -> tuple[list[DocItem], Counter]:
    """Every usable synset as a DocItem (id ``wordnet:<pos><offset>``, summary = definition, body =
    positive), sorted by id; and the count of each skip reason."""
    files = read_files(folder)
    items, skipped, seen = [], Counter(), set()
    for pos, (path, data) in files.items():
        for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if not line or line.startswith("  "):
                continue  # the licence header
            if not (line[:8].isdigit() and line[8:9] == " " and " | " in line):  # cheap check of every line
                parse_line(line, f"{path}:{n}")  # raises, saying what is wrong
            if '"' not in line:
                skipped["no_example"] += 1
                continue
            synset = parse_line(line, f"{path}:{n}")
            item = _pair(pos, line[:8], synset, files, task, min_query_words, max_chars)
            if isinstance(item, str):
                skipped[item] += 1
            elif text_key(item.summary) in seen:
                skipped["repeated_definition"] += 1
            else:
                seen.add(text_key(item.summary))
                items.append(item)
    return sorted(items, key=lambda i: i.id), skipped


def _pair(pos: str, offset: str, synset, files, task: str, min_query_words: int, max_chars: int) -> DocItem | str:
    """The DocItem of one synset, or why it is skipped."""
    ss_type, words, pointers, gloss = synset
    definition, examples = split_gloss(gloss)
    positive = f"{', '.join(words)} ({POS_NAMES[ss_type]}{_relation(ss_type, pointers, files)}): " + \
        "; ".join(f'"{e}"' for e in examples)
    if not examples:
        return "no_example"
    if len(definition.split()) < min_query_words:
        return "definition_too_short"
    if len(positive.split()) < MIN_POSITIVE_WORDS:
        return "positive_too_short"
    return DocItem(f"wordnet:{pos}{offset}", "wordnet", task, "synset", definition, trim(positive, max_chars))
