"""Documented items of the Python standard library (the demo corpus's raw text): the public functions,
methods and classes of an allowlist of side-effect-free modules, and the language-reference topics
of ``pydoc_data.topics``, each split into a summary sentence and the rest of its docstring.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import warnings
from typing import TYPE_CHECKING

from nemo_nvembed.data.bm25 import normalize, text_key

if TYPE_CHECKING:
    from nemo_nvembed.prep.demo_corpus import DemoDataConfig

# Allowlist: modules whose import has no side effects (no windows, no network, no test packages),
# each mapped to an area that follows the chapters of the Python Library Reference.
MODULE_AREAS = {
    "string": "text processing", "re": "text processing", "difflib": "text processing",
    "textwrap": "text processing", "unicodedata": "text processing",
    "struct": "binary data", "codecs": "binary data", "array": "binary data",
    "datetime": "data types", "calendar": "data types", "collections": "data types",
    "heapq": "data types", "bisect": "data types", "copy": "data types", "pprint": "data types",
    "enum": "data types", "graphlib": "data types", "weakref": "data types", "zoneinfo": "data types",
    "math": "numeric and math", "cmath": "numeric and math", "decimal": "numeric and math",
    "fractions": "numeric and math", "numbers": "numeric and math", "random": "numeric and math",
    "statistics": "numeric and math",
    "itertools": "functional programming", "functools": "functional programming",
    "operator": "functional programming",
    "pathlib": "file and directory access", "os.path": "file and directory access",
    "shutil": "file and directory access", "glob": "file and directory access",
    "fnmatch": "file and directory access", "tempfile": "file and directory access",
    "filecmp": "file and directory access", "fileinput": "file and directory access",
    "pickle": "data persistence", "shelve": "data persistence", "sqlite3": "data persistence",
    "marshal": "data persistence", "dbm": "data persistence",
    "zlib": "data compression and archiving", "gzip": "data compression and archiving",
    "bz2": "data compression and archiving", "lzma": "data compression and archiving",
    "zipfile": "data compression and archiving", "tarfile": "data compression and archiving",
    "csv": "file formats", "configparser": "file formats", "plistlib": "file formats",
    "hashlib": "cryptographic services", "hmac": "cryptographic services",
    "secrets": "cryptographic services",
    "io": "operating system services", "time": "operating system services",
    "argparse": "operating system services", "getopt": "operating system services",
    "logging": "operating system services", "platform": "operating system services",
    "os": "operating system services", "getpass": "operating system services",
    "optparse": "operating system services",
    "threading": "concurrent execution", "subprocess": "concurrent execution",
    "queue": "concurrent execution", "sched": "concurrent execution",
    "concurrent.futures": "concurrent execution", "contextvars": "concurrent execution",
    "socket": "networking and interprocess communication",
    "select": "networking and interprocess communication",
    "selectors": "networking and interprocess communication",
    "signal": "networking and interprocess communication",
    "asyncio": "networking and interprocess communication",
    "ssl": "networking and interprocess communication",
    "mmap": "networking and interprocess communication",
    "json": "internet data handling", "base64": "internet data handling",
    "binascii": "internet data handling", "email.utils": "internet data handling",
    "mimetypes": "internet data handling", "quopri": "internet data handling",
    "email.message": "internet data handling", "email.parser": "internet data handling",
    "email.policy": "internet data handling", "email.charset": "internet data handling",
    "email.headerregistry": "internet data handling",
    "html": "structured markup", "html.parser": "structured markup",
    "xml.etree.ElementTree": "structured markup", "xml.dom.minidom": "structured markup",
    "xml.sax.handler": "structured markup", "xml.sax.saxutils": "structured markup",
    "urllib.parse": "internet protocols", "ipaddress": "internet protocols",
    "uuid": "internet protocols", "http.cookies": "internet protocols",
    "http.client": "internet protocols", "http.server": "internet protocols",
    "http.cookiejar": "internet protocols", "urllib.request": "internet protocols",
    "ftplib": "internet protocols", "smtplib": "internet protocols", "imaplib": "internet protocols",
    "poplib": "internet protocols", "xmlrpc.client": "internet protocols",
    "typing": "development tools", "doctest": "development tools", "unittest": "development tools",
    "pdb": "debugging and profiling", "timeit": "debugging and profiling",
    "cProfile": "debugging and profiling", "pstats": "debugging and profiling",
    "trace": "debugging and profiling", "bdb": "debugging and profiling",
    "dataclasses": "runtime services", "contextlib": "runtime services", "abc": "runtime services",
    "inspect": "runtime services", "traceback": "runtime services", "warnings": "runtime services",
    "types": "runtime services",
    "sys": "runtime services", "gc": "runtime services", "sysconfig": "runtime services",
    "atexit": "runtime services", "code": "runtime services", "codeop": "runtime services",
    "ast": "language services", "dis": "language services", "tokenize": "language services",
    "shlex": "language services", "keyword": "language services", "symtable": "language services",
    "py_compile": "language services", "compileall": "language services",
    "pickletools": "language services",
    "importlib.metadata": "importing modules", "pkgutil": "importing modules",
    "runpy": "importing modules", "zipimport": "importing modules",
    "builtins": "built-in types",
}
# Where a module's public objects report another __module__ than its import name.
EXTRA_OWNERS = {"os.path": ("genericpath",), "os": ("posix",), "random": ("_random",)}
# Hooks that a running program (pytest, logging.captureWarnings) may replace: skipped, so that the
# output does not depend on what else the process has imported.
REPLACEABLE = {"sys": {"breakpointhook", "displayhook", "excepthook", "unraisablehook"},
               "warnings": {"formatwarning", "showwarning"}, "threading": {"excepthook"}}
# pydoc topics joined to clustering under two areas of their own.
TOPIC_TYPE_KEYS = {"dict", "lists", "string-methods", "truth", "specialattrs"}

# Autogenerated slot-wrapper/object docstrings carry no information about the function.
BOILERPLATE = re.compile(
    r"^(return self\s*\S*\s*value|initialize self|create and return a new object|return repr\(self\)"
    r"|return str\(self\)|return hash\(self\)|implement \w+\(|helper for pickle|default object formatter"
    r"|size of object in memory|return getattr\(self|return self\[|set self\[|delete self\[|return len\(self\)"
    r"|return iter\(self\)|return bool\(self\)|return state information for pickling|support for pickle"
    r"|method generated by attrs|abstract classes can override this|see help\(type\(self\)\))",
    re.IGNORECASE,
)
SIGNATURE_LINE = re.compile(r"^[\w.\[\]]+\(.*\)\s*(->.*)?$")
SENTENCE_END = re.compile(r"(?<!\be\.g)(?<!\bi\.e)(?<!\betc)(?<!\bvs)[.!?](?=\s+[A-Z(\"'`*])")


@dataclasses.dataclass(frozen=True)
class DocItem:
    id: str  # module.qualname, or pydoc.<topic>
    module: str
    area: str
    kind: str  # function | method | class | topic
    summary: str
    body: str  # "" when the docstring has a summary only


def trim(text: str, max_chars: int) -> str:
    """Cut at a sentence end (or failing that a word end) at or before max_chars."""
    if len(text) <= max_chars:
        return text
    head = text[: max_chars + 1]
    ends = [m.end() for m in SENTENCE_END.finditer(head)]
    if ends and ends[-1] >= max_chars // 2:
        return head[: ends[-1]].strip()
    return head[: head.rfind(" ")].strip() if " " in head else head[:max_chars]


def split_docstring(doc: str) -> tuple[str, str] | None:
    """(summary sentence, rest) of a docstring, whitespace-normalised; None if unusable."""
    lines = inspect.cleandoc(doc).splitlines()
    while lines and (SIGNATURE_LINE.match(lines[0].strip()) or lines[0].strip() in ("", "--")):
        lines.pop(0)  # C functions often start with their signature
    paragraphs = [normalize(p) for p in "\n".join(lines).split("\n\n")]
    paragraphs = [p for p in paragraphs if p]
    if not paragraphs or BOILERPLATE.match(paragraphs[0]):
        return None
    first = paragraphs[0]
    m = SENTENCE_END.search(first)
    summary, rest = (first[: m.end()], first[m.end():].strip()) if m else (first, "")
    return summary, normalize(" ".join([rest, *paragraphs[1:]]))


def _owners(name: str, module) -> tuple[str, ...]:
    last = name.split(".")[-1]
    return (name, module.__name__, "_" + last, "_" + name, *EXTRA_OWNERS.get(name, ()))


def _owned(obj, name: str, owners: tuple[str, ...]) -> bool:
    owner = getattr(obj, "__module__", None) or ""
    return owner in owners or owner.startswith(name + ".")


def _item(id_: str, module: str, kind: str, doc, cfg: DemoDataConfig) -> DocItem | None:
    return _item_in_area(id_, module, MODULE_AREAS[module], kind, doc, cfg)


def _item_in_area(id_: str, module: str, area: str, kind: str, doc, cfg: DemoDataConfig) -> DocItem | None:
    if not isinstance(doc, str) or not doc.strip():
        return None
    parts = split_docstring(doc)
    if parts is None or len(parts[0].split()) < cfg.min_summary_words or len(parts[0]) > 300 \
            or ">>>" in parts[0]:
        return None  # no summary sentence: too short, a whole paragraph, or a doctest
    return DocItem(id_, module, area, kind, parts[0], trim(parts[1], cfg.max_chars))


def _is_routine(obj) -> bool:
    return inspect.isfunction(obj) or inspect.isbuiltin(obj) or inspect.ismethoddescriptor(obj)


def collect_module(name: str, cfg: DemoDataConfig) -> list[DocItem]:
    """Public functions, classes and class methods that the module itself defines."""
    with warnings.catch_warnings():  # e.g. typing.io warns on attribute access
        warnings.simplefilter("ignore")
        return _collect_module(name, cfg)


def _collect_module(name: str, cfg: DemoDataConfig) -> list[DocItem]:
    module = importlib.import_module(name)
    skip = REPLACEABLE.get(name, set())
    public = {a: getattr(module, a) for a in sorted(vars(module)) if not a.startswith("_") and a not in skip}
    owners = _owners(name, module)
    items = []
    for attr, obj in public.items():
        if inspect.ismethod(obj):  # e.g. random.choice, bound to a module-level instance
            obj = obj.__func__
        if inspect.isclass(obj) and _owned(obj, name, owners):
            items.append(_item(f"{name}.{attr}", name, "class", obj.__doc__, cfg))
            for meth in sorted(vars(obj)):
                raw = vars(obj)[meth]
                raw = getattr(raw, "__func__", raw)  # staticmethod / classmethod
                # C methods have no __module__; Python ones must come from this module (not a patch).
                if not meth.startswith("_") and _is_routine(raw) and (
                        getattr(raw, "__module__", None) is None or _owned(raw, name, owners)):
                    items.append(_item(f"{name}.{attr}.{meth}", name, "method", raw.__doc__, cfg))
        elif _is_routine(obj) and _owned(obj, name, owners):
            items.append(_item(f"{name}.{attr}", name, "function", obj.__doc__, cfg))
    return [i for i in items if i is not None]


def collect_topics(cfg: DemoDataConfig) -> list[DocItem]:
    """Language-reference topics (pydoc_data.topics) as clustering-only items."""
    from pydoc_data.topics import topics

    items = []
    for key in sorted(topics):
        lines = topics[key].strip().splitlines()
        if len(lines) < 3 or not set(lines[1].strip()) <= set("*=-"):
            continue
        area = "built-in types" if key.startswith(("bltin-", "types")) or key in TOPIC_TYPE_KEYS else "language reference"
        body = normalize(" ".join(lines[2:]))
        m = SENTENCE_END.search(body)
        summary = normalize(lines[0]) + ": " + trim(body[: m.end()] if m else body, 300)
        items.append(DocItem(f"pydoc.{key}", "pydoc_data.topics", area, "topic", summary, ""))
    return items


def dedupe(items: list[DocItem]) -> tuple[list[DocItem], int]:
    """Keep the first item (by id) of each summary and of each body; a duplicate is dropped whole."""
    seen, kept = set(), []
    for item in sorted(items, key=lambda i: i.id):
        keys = {("s", text_key(item.summary))} | ({("b", text_key(item.body))} if item.body else set())
        if keys & seen:
            continue
        seen |= keys
        kept.append(item)
    return kept, len(items) - len(kept)
