"""The demo data's general-domain training sources (--sources foldoc,jargon,wordnet,perldoc,debdesc): parsers on tiny
fixture files in the real formats, the Debian fetch without network, and one build. CPU, seconds."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from nemo_nvembed.checks.errors import UserError
from nemo_nvembed.recipes.demo_corpus import build as dd
from nemo_nvembed.recipes.demo_corpus import debdesc, debian, dictd, extra_sources, perldoc, wordnet

FOLDOC_AST = """abstract syntax tree
AST

   <compiler> (AST) A data structure representing something which
   has been {parsed}, often used as a {compiler} or
   {interpreter}'s internal representation of a program.  The range of all
   possible such structures is described by the {abstract syntax}, and every
   node of the tree stands for one construct of the source text.

   {Home page (http://example.org/ast.html)}.

   (1994-11-08)
"""
JARGON_BOGON = """bogon
 /boh'gon/, n.

    [very common; by analogy with proton/electron/neutron]

    1. The elementary particle of bogosity (see {quantum bogodynamics}). For
    instance, \u201cthe Ethernet is emitting bogons again\u201d means that it is broken
    or acting in an erratic or bogus fashion.

    Jane Doe <jd@example.org> adds:

    {quantum bogodynamics} {wiki entry (http://example.org/wiki/Bogon)}.

    See also {bogosity}, {U.S.} usage.

    2. A query packet sent from a TCP/IP domain resolver to a root server,
    having the reply bit set instead of the query bit.
"""
SHORT = "Byte\n\n   <publication> A popular computing magazine.\n\n   (1997-03-27)\n"
TOPICS = ["cache", "compiler", "kernel", "packet", "socket", "thread", "buffer", "register", "pointer",
          "daemon", "parser", "mutex", "queue", "pipe"]


def _b64(n: int) -> str:
    out = ""
    while True:
        out = dictd.B64[n % 64] + out
        n //= 64
        if not n:
            return out


def write_dictd(folder: Path, name: str, entries: list[str]) -> None:
    """NAME.index + NAME.dict.dz as dictfmt writes them (a 00-database entry first; every alias indexed)."""
    folder.mkdir(parents=True, exist_ok=True)
    data, index = b"", []
    for text in [f"00-database-short\n     The {name} test dictionary\n", *entries]:
        raw = text.encode()
        head = text.split("\n\n", 1)[0].splitlines()
        for word in ([head[0].strip()] if text.startswith("00-") else [w.strip() for w in head if not w.startswith(" ")]):
            index.append(f"{word.lower()}\t{_b64(len(data))}\t{_b64(len(raw))}")
        data += raw
    (folder / f"{name}.index").write_text("\n".join(sorted(index)) + "\n", encoding="utf-8")
    (folder / f"{name}.dict.dz").write_bytes(gzip.compress(data))


def glossary_entry(topic: str, k: int, indent: str = "   ") -> str:
    """A FOLDOC-style entry whose words are its own (made-up tokens), so entries are not near-duplicates."""
    own = lambda part, n: " ".join(f"{topic[:3]}{part}{k}w{j}" for j in range(n))
    return (f"{topic}\n\n{indent}<systems> A {topic} is a part that keeps {own('q', 4)} for {{programs}}.  The\n"
            f"{indent}{topic} holds {own('r', 22)}.\n\n{indent}({2000 + k}-01-0{1 + k % 9})\n")


def write_wordnet(folder: Path, synsets: dict[str, list[tuple]]) -> None:
    """data.{noun,verb,adj,adv} in wndb(5WN) layout. synsets: {pos: [(words, [(symbol, pos, index)], gloss)]};
    offsets are byte offsets, so every line is laid out once with zero offsets to learn its length."""
    header = "".join(f"  {n} This software and database is being provided to you, the LICENSEE.  \n" for n in (1, 2))
    offsets = {}
    for pos, rows in synsets.items():
        at = len(header)
        for k, row in enumerate(rows):
            offsets[(pos, k)] = at
            at += len(_wn_line(pos, 0, row, lambda p, i: 0)) + 1
    folder.mkdir(parents=True, exist_ok=True)
    for pos, rows in synsets.items():
        lines = [_wn_line(pos, offsets[(pos, k)], row, lambda p, i: offsets[(p, i)]) for k, row in enumerate(rows)]
        (folder / wordnet.FILES[pos]).write_text(header + "".join(line + "\n" for line in lines), encoding="utf-8")


def _wn_line(pos: str, offset: int, row: tuple, where) -> str:
    words, pointers, gloss = row
    ss_type = "s" if pos == "a" and any(s == "&" for s, _, _ in pointers) else pos
    ptrs = " ".join(f"{s} {where(p, i):08d} {p} 0000" for s, p, i in pointers)
    frames = " 01 + 02 00" if pos == "v" else ""
    return (f"{offset:08d} 29 {ss_type} {len(words):02x} {' '.join(w + ' 0' for w in words)} "
            f"{len(pointers):03d}{' ' + ptrs if ptrs else ''}{frames} | {gloss}  ")


WN = {
    "n": [(["destruction", "devastation"], [], "the termination of something by causing so much damage to it"),
          (["kill"], [("@", "n", 0)], 'the destruction of an enemy plane or ship; "the pilot reported two kills during the mission"'),
          (["thing"], [], "a separate entity without any quoted example at all")],
    "v": [(["move"], [], 'change location or position; "move your car"'),
          (["warm_up"], [("@", "v", 0)], 'cause to do preliminary exercises; "The coach warmed up the players before the game"')],
    "a": [(["frontal"], [], 'of or adjacent to the forehead; "the frontal lobes of the brain"'),
          (["back(a)", "hind(a)"], [("&", "a", 0)], 'located at or near the back of an animal; "back legs"; "the hind part of a carcass"')],
    "r": [(["consecutively"], [], 'in a consecutive manner; "he was consecutively ill, then well, then ill again"')],
}


def test_dictd_strips_markup_and_splits_first_sentence(tmp_path):
    write_dictd(tmp_path, "foldoc", [FOLDOC_AST, SHORT])
    items, skipped = dictd.read_pairs(tmp_path, "foldoc", "G", 3, 20, 600)
    assert [i.id for i in items] == ["foldoc:abstract syntax tree"] and skipped == {"entry_too_short": 1}
    assert items[0].summary == ("A data structure representing something which has been parsed, often used as a "
                                "compiler or interpreter's internal representation of a program.")
    assert items[0].body == ("abstract syntax tree: The range of all possible such structures is described by the "
                             "abstract syntax, and every node of the tree stands for one construct of the source text.")
    term, definition = dictd.parse_entry(JARGON_BOGON)
    query, rest = dictd.split_definition(definition)
    assert (term, query) == ("bogon", "The elementary particle of bogosity (see quantum bogodynamics).")
    assert rest == ("For instance, \u201cthe Ethernet is emitting bogons again\u201d means that it is broken or acting "
                    "in an erratic or bogus fashion. See also bogosity, U.S. usage.")  # sense 1 only


def test_dictd_bad_files_are_user_errors(tmp_path):
    write_dictd(tmp_path, "jargon", [JARGON_BOGON])
    index = tmp_path / "jargon.index"
    index.write_text(index.read_text() + "broken line without tabs\n")
    with pytest.raises(UserError, match=r"jargon\.index:3: expected 'headword<TAB>offset<TAB>length'"):
        dictd.read_entries(index, tmp_path / "jargon.dict.dz")
    (tmp_path / "foldoc.index").write_text("bogon\tA\tzzzz\n")
    (tmp_path / "foldoc.dict.dz").write_bytes(gzip.compress(b"bogon\n"))
    with pytest.raises(UserError, match=r"foldoc\.index:1: entry 'bogon' ends at byte .* past the end"):
        dictd.read_entries(tmp_path / "foldoc.index", tmp_path / "foldoc.dict.dz")
    (tmp_path / "foldoc.dict.dz").write_bytes(b"not gzip")
    with pytest.raises(UserError, match=r"foldoc\.dict\.dz: not a readable dictzip/gzip file"):
        dictd.read_entries(tmp_path / "foldoc.index", tmp_path / "foldoc.dict.dz")


def test_wordnet_pairs_name_the_words_and_show_them_in_use(tmp_path):
    write_wordnet(tmp_path, WN)
    items, skipped = wordnet.read_pairs(tmp_path, "W", 3, 600)
    pairs = {i.id[len("wordnet:"):][0] + i.summary: i.body for i in items}
    assert pairs == {
        "nthe destruction of an enemy plane or ship": 'kill (noun, a kind of destruction): "the pilot reported two kills during the mission"',
        "vcause to do preliminary exercises": 'warm up (verb, a way to move): "The coach warmed up the players before the game"',
        "alocated at or near the back of an animal": 'back, hind (adjective, similar to frontal): "back legs"; "the hind part of a carcass"',
        "rin a consecutive manner": 'consecutively (adverb): "he was consecutively ill, then well, then ill again"',
        "aof or adjacent to the forehead": 'frontal (adjective): "the frontal lobes of the brain"',
    }
    assert skipped == {"no_example": 2, "positive_too_short": 1}  # destruction, thing; "move your car"
    adv = tmp_path / "data.adv"
    good = adv.read_text()
    for broken, why in (("00000999 02 r 01 word 0 000 no gloss separator", "no 'offset lex_filenum ss_type"),
                        ('00000999 02 r 03 word 0 002 | a gloss; "an example"', "7 fields before the gloss, too few for its word count 3")):
        adv.write_text(good + broken + "\n")
        with pytest.raises(UserError, match=rf"data\.adv:4: not a WordNet data line \({why}"):
            wordnet.read_pairs(tmp_path, "W", 3, 600)


def _fixture_root(root: Path, n: int = 12) -> Path:
    write_dictd(root / "usr/share/dictd", "foldoc", [glossary_entry(t, k) for k, t in enumerate(TOPICS[:n])] + [glossary_entry("bogon", 99)])
    write_dictd(root / "usr/share/dictd", "jargon",
                [glossary_entry(f"{t} hack", k, "    ") for k, t in enumerate(TOPICS[:n])] + [JARGON_BOGON])
    rows = [([f"word{k}"], [], f'a made-up sense wn{k}a wn{k}b; "it shows word{k} used in wn{k}c wn{k}d wn{k}e wn{k}f"')
            for k in range(n)]
    write_wordnet(root / "usr/share/wordnet", {"n": rows, "v": rows[:2], "a": rows[:2], "r": rows[:2]})
    write_perl(root / "usr/share/perl/5.36.0", [perl_module(t, k) for k, t in enumerate(TOPICS[:n])])
    return root


def perl_module(topic: str, k: int) -> tuple[str, str]:
    """(relative path, source) of a module whose POD uses its own made-up tokens (no near-duplicates)."""
    own = lambda part, n: " ".join(f"{topic[:3]}{part}{k}w{j}" for j in range(n))
    name = f"Demo::{topic.capitalize()}"
    return (name.replace("::", "/") + ".pm",
            f"package {name};\n1;\n__END__\n\n=head1 NAME\n\n{name} - keep {own('q', 4)} for C<programs>\n\n"
            f"=head1 SYNOPSIS\n\n    use {name};\n\n=head1 DESCRIPTION\n\nThe B<{topic}> module holds "
            f"{own('r', 22)}.\n\n=cut\n")


def write_perl(folder: Path, modules: list[tuple[str, str]]) -> None:
    for rel, text in modules:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text, encoding="utf-8")


@pytest.mark.skipif(not perldoc.shutil.which("perl"), reason="no perl to render POD (Debian's perl-base)")
def test_perldoc_pairs_are_name_description_to_description(tmp_path):
    """Pod::Text renders the markup; every file that gives no pair is counted under its reason."""
    good = perl_module("socket", 1)
    write_perl(tmp_path, [
        good,
        ("Demo/Copy.pm", good[1].replace("Demo::Socket", "Demo::Copy")),  # the same texts again
        ("Demo/Plain.pm", "package Demo::Plain;\n1;\n"),
        ("Demo/NoDash.pm", "=head1 NAME\n\nDemo::NoDash\n\n=head1 DESCRIPTION\n\n" + "word " * 30 + "\n\n=cut\n"),
        ("Demo/NoDesc.pod", "=head1 NAME\n\nDemo::NoDesc - a module without a description section\n\n=cut\n"),
        ("Demo/Short.pm", "=head1 NAME\n\nDemo::Short - a module with little to say\n\n=head1 DESCRIPTION\n\nVery little.\n\n=cut\n"),
        ("Demo/notes.txt", "=head1 NAME\n\nnot read - a text file\n"),
    ])
    items, skipped = perldoc.read_pairs(tmp_path, extra_sources.PERLDOC, 3, 20, 600)
    assert [i.id for i in items] == ["perldoc:Demo::Copy"]  # path order: Copy.pm before Socket.pm
    assert items[0].summary == 'keep socq1w0 socq1w1 socq1w2 socq1w3 for "programs"'  # C<programs>, as Pod::Text shows it
    assert items[0].body.startswith("The socket module holds socr1w0 ") and "use Demo" not in items[0].body
    assert skipped == {"no POD": 1, "no 'name - description' NAME": 1, "no DESCRIPTION": 1, "short DESCRIPTION": 1,
                       "repeated query or positive": 1}
    with pytest.raises(UserError, match="no .pm or .pod files under"):
        perldoc.read_pairs(tmp_path / "Demo" / "missing", extra_sources.PERLDOC, 3, 20, 600)


def test_build_sources_filters_heldout_near_duplicates_and_mines_within_source(tmp_path, monkeypatch):
    monkeypatch.setattr(debian, "SYSTEM", _fixture_root(tmp_path))
    cfg = dd.DemoDataConfig(sources="wordnet, perldoc,jargon,foldoc", max_per_source=10, num_neg=3)
    items = {name: extra_sources._load(name, cfg)[0] for name in ("foldoc", "jargon")}
    held = [items["jargon"][0].summary]  # one query in the Python-docs held-out, one positive among the man pages
    manual = [items["jargon"][1].body]
    examples, manifest = extra_sources.build_sources(cfg, held, manual, dd.mine_negatives)
    assert list(manifest) == ["foldoc", "jargon", "wordnet", "perldoc"]
    assert manifest["foldoc"]["same_headword_as_jargon_removed"] == 1  # bogon: the Jargon File's entry wins
    assert manifest["jargon"]["near_duplicates_removed"] == {"heldout": 1, "heldout_manpages": 1}
    for name, info in manifest.items():
        rows = [e for e in examples if e["pos_id"].startswith(name + ":")]
        assert info["examples"] == len(rows) == info["sampled"] - sum(info["near_duplicates_removed"].values())
        assert info["sampled"] == min(10, info["usable"] - info.get("same_headword_as_jargon_removed", 0))
        assert all(n.startswith(name + ":") for e in rows for n in e["neg_ids"])  # mined within the source
        assert all(len(e["neg"]) == 3 and e["pos"] not in e["neg"] for e in rows)
        assert {e["task"] for e in rows} == {extra_sources.SOURCES[name].task}
    texts = {t for e in examples for t in (e["query"], e["pos"])}
    assert not texts & set(held + manual)


def test_unknown_source_and_missing_package_are_user_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="unknown \\['wikipedia'\\]"):
        dd.DemoDataConfig(sources="foldoc,wikipedia")
    monkeypatch.setattr(debian, "SYSTEM", tmp_path / "empty")
    monkeypatch.setattr(debian, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(debian.shutil, "which", lambda _name: None)
    with pytest.raises(UserError, match=r"--sources jargon needs .*usr/share/dictd/jargon\.index: install Debian's dict-jargon"):
        extra_sources._load("jargon", dd.DemoDataConfig(sources="jargon"))


def test_package_root_fetches_with_apt_get_download_and_dpkg_deb(tmp_path, monkeypatch):
    """No network: stand-in apt-get and dpkg-deb on PATH, one that fails and one that unpacks."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text('#!/bin/sh\n[ "$2" = "dict-jargon" ] || { echo "E: Unable to locate package $2" >&2; '
                                     'exit 100; }\ntouch dict-jargon_4.4.7-3.1_all.deb\n')
    (bin_dir / "dpkg-deb").write_text('#!/bin/sh\nmkdir -p "$3/usr/share/dictd" && touch "$3/usr/share/dictd/jargon.index"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(debian, "SYSTEM", tmp_path / "empty")
    cache = tmp_path / "cache"
    assert debian.package_root(("dict-jargon",), "usr/share/dictd/jargon.index", cache, "test") == cache
    assert debian.package_root(("dict-jargon",), "usr/share/dictd/jargon.index", cache, "test") == cache  # cached
    with pytest.raises(UserError, match="apt-get download dict-foldoc failed .*Unable to locate package dict-foldoc"):
        debian.package_root(("dict-foldoc",), "usr/share/dictd/foldoc.index", tmp_path / "c2", "test")


def test_build_with_sources_joins_both_stages_and_stays_disjoint(tmp_path, monkeypatch):
    monkeypatch.setattr(debian, "SYSTEM", _fixture_root(tmp_path, n=14))
    cfg = dd.DemoDataConfig(max_train=300, heldout_queries=60, heldout_corpus=150, val_queries=20, val_corpus=60,
                            max_per_label=10, max_per_area=20, sources="foldoc,jargon,wordnet", max_per_source=12)
    data = dd.build(cfg)
    assert dd.check_no_overlap(data) > 0
    m = data["manifest"]
    tasks = {dd.RETRIEVAL, extra_sources.GLOSSARY, extra_sources.WORDNET}
    assert set(m["counts"]["stage1"]) == tasks and sum(m["counts"]["stage1"].values()) == len(data["stage1"])
    assert m["counts"]["stage1"][extra_sources.GLOSSARY] == m["extra_sources"]["foldoc"]["examples"] + \
        m["extra_sources"]["jargon"]["examples"]
    assert {k: m["counts"]["stage2"][k] for k in tasks} == m["counts"]["stage1"]
    assert set(m["extra_sources"]) == {"foldoc", "jargon", "wordnet"}
    assert all({"licence", "version", "package", "skipped"} <= set(info) for info in m["extra_sources"].values())
    first = [e["task"] for e in data["stage1"][:60]]
    assert len(set(first)) == 3  # shuffled in, not appended


TRANSLATION = """Package: 0ad
Description-md5: d943033bedada21853d2ae54a2578a7b
Description-en: Real-time strategy game of ancient warfare
 0 A.D. (pronounced "zero ey-dee") is a free, open-source, cross-platform
 real-time strategy (RTS) game of ancient warfare. In short, it is a
 historically-based war/economy game.
 .
 This package contains the main executable.

Package: 0ad-data
Description-md5: 00000000000000000000000000000001
Description-en: Real-time strategy game of ancient warfare (data files)
 0 A.D. (pronounced "zero ey-dee") is a free, open-source, cross-platform
 real-time strategy (RTS) game of ancient warfare. In short, it is a
 historically-based war/economy game.
 .
 This package contains the data files.

Package: libfoo-dbg
Description-md5: 00000000000000000000000000000002
Description-en: debugging symbols for libfoo, a library that frobnicates widgets
 This package contains the debugging symbols of libfoo, the library that
 frobnicates widgets of every size and shape for graphical programs.

Package: oldname
Description-md5: 00000000000000000000000000000003
Description-en: transitional package for newname and its widget tools
 This is a transitional package. It can safely be removed once newname is
 installed on every machine that used the widget tools before.

Package: tiny
Description-md5: 00000000000000000000000000000004
Description-en: a tool with a very short description
 Does little.

Package: zsh
Description-md5: a129d6b2d23d2d5d3a6b822d3f8f856d
Description-en: shell with lots of features
 Zsh is a UNIX command interpreter (shell) usable as an
 interactive login shell and as a shell script command processor. Of the
 standard shells, zsh most closely resembles ksh but includes many
 enhancements.
 .
 Zsh has command-line editing, built-in spelling correction, programmable
 command completion, shell functions (with autoloading), a history
 mechanism, and a host of other features.
"""


def _translation(tmp_path: Path, text: str = TRANSLATION) -> tuple[Path, Path]:
    """(an InRelease listing Translation-en.xz's real SHA256, the .xz in a cache folder)."""
    import hashlib
    import lzma
    data = lzma.compress(text.encode())
    digest = hashlib.sha256(data).hexdigest()
    inrelease = tmp_path / "lists" / "deb.debian.org_debian_dists_bookworm_InRelease"
    inrelease.parent.mkdir(parents=True)
    inrelease.write_text("Origin: Debian\nDescription: Debian 12.15 Released 11 July 2026\nDate: Sat, 11 Jul 2026\n"
                         f"MD5Sum:\n 0123 {len(data)} main/i18n/Translation-en.xz\n"
                         f"SHA256:\n {'0' * 64} 7 main/i18n/Translation-en\n {digest} {len(data)} main/i18n/Translation-en.xz\n")
    cached = tmp_path / "cache" / f"Translation-en.{digest[:16]}.xz"
    cached.parent.mkdir()
    cached.write_bytes(data)
    return inrelease, cached


def test_debdesc_pairs_are_synopsis_to_description(tmp_path):
    """Template packages, short texts and a library's repeated first paragraph are skipped, each counted."""
    _, path = _translation(tmp_path)
    items, skipped = debdesc.read_pairs(path, extra_sources.DEBDESC, 3, 20, 600)
    assert [i.id for i in items] == ["debdesc:0ad", "debdesc:zsh"]  # 0ad-data repeats 0ad's first paragraph
    assert items[1].summary == "shell with lots of features"
    assert items[1].body.startswith("Zsh is a UNIX command interpreter (shell) usable as an interactive login shell")
    assert "enhancements. Zsh has command-line editing" in items[1].body  # paragraphs (" .") joined
    assert skipped == {"transitional, dummy, debug-symbol or documentation package": 2, "short description": 1,
                       "repeated synopsis or first paragraph": 1}


def test_debdesc_fetch_checks_the_release_hash(tmp_path, monkeypatch):
    """A cached file with InRelease's hash is used as is; a changed one is fetched again by apt-helper."""
    inrelease, cached = _translation(tmp_path)
    base = "http://deb.debian.org/debian/dists/bookworm/"
    monkeypatch.setattr(debdesc, "release_index", lambda lists: (inrelease, base))
    path, info = debdesc.fetch(cached.parent, inrelease.parent)
    assert path == cached and info["url"] == base + debdesc.MEMBER and info["release"].startswith("Debian 12.15")
    assert info["sha256"] == debdesc.sha256(cached)
    cached.write_bytes(b"corrupt")
    monkeypatch.setattr(debdesc, "APT_HELPER", tmp_path / "no-apt-helper")
    with pytest.raises(UserError, match="apt's downloader\\) is missing; cannot fetch http://deb.debian.org/.*Translation-en.xz"):
        debdesc.fetch(cached.parent, inrelease.parent)
    assert debdesc.listed_sha256(inrelease.read_text(), "main/i18n/Translation-fr.xz") is None
    inrelease.write_text("Origin: Debian\nSHA256:\n " + "0" * 64 + " 7 main/i18n/Translation-en\n")
    with pytest.raises(UserError, match="lists no SHA256 for main/i18n/Translation-en.xz"):
        debdesc.fetch(cached.parent, inrelease.parent)


def test_sources_take_their_own_sample_size():
    assert extra_sources.source_caps(" debdesc:20, foldoc ") == {"foldoc": None, "debdesc": 20}
    for bad in ("debdesc:0", "debdesc:x", "debdesc:-3"):
        with pytest.raises(UserError, match=f"--sources {bad}: the sample size"):
            extra_sources.source_caps(bad)
