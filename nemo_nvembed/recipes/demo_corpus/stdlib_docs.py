"""Documented items of the Python standard library (the demo corpus's raw text): the public functions,
methods and classes of an allowlist of side-effect-free modules, and the language-reference topics
of ``pydoc_data.topics``, each split into a summary sentence and the rest of its docstring
(:mod:`.docstrings`).
"""
from __future__ import annotations

import importlib
import inspect
import warnings

from pydoc_data.topics import topics

from nemo_nvembed.data.bm25 import normalize, text_key
from nemo_nvembed.recipes.demo_corpus.docstrings import SENTENCE_END, DocItem, doc_item, is_routine, trim

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


def _owners(name: str, module) -> tuple[str, ...]:
    last = name.split(".")[-1]
    return (name, module.__name__, "_" + last, "_" + name, *EXTRA_OWNERS.get(name, ()))


def _owned(obj, name: str, owners: tuple[str, ...]) -> bool:
    owner = getattr(obj, "__module__", None) or ""
    return owner in owners or owner.startswith(name + ".")


def collect_module(name: str, min_summary_words: int, max_chars: int) -> list[DocItem]:
    """Public functions, classes and class methods that the module itself defines
    (:func:`.docstrings.doc_item` with these limits)."""
    with warnings.catch_warnings():  # e.g. typing.io warns on attribute access
        warnings.simplefilter("ignore")
        return _collect_module(name, min_summary_words, max_chars)


def _collect_module(name: str, min_summary_words: int, max_chars: int) -> list[DocItem]:
    module = importlib.import_module(name)
    skip = REPLACEABLE.get(name, set())
    public = {a: getattr(module, a) for a in sorted(vars(module)) if not a.startswith("_") and a not in skip}
    owners = _owners(name, module)
    area = MODULE_AREAS[name]
    item = lambda id_, kind, doc: doc_item(id_, name, area, kind, doc, min_summary_words, max_chars)  # noqa: E731
    items = []
    for attr, obj in public.items():
        if inspect.ismethod(obj):  # e.g. random.choice, bound to a module-level instance
            obj = obj.__func__
        if inspect.isclass(obj) and _owned(obj, name, owners):
            items.append(item(f"{name}.{attr}", "class", obj.__doc__))
            for meth in sorted(vars(obj)):
                raw = vars(obj)[meth]
                raw = getattr(raw, "__func__", raw)  # staticmethod / classmethod
                # C methods have no __module__; Python ones must come from this module (not a patch).
                if not meth.startswith("_") and is_routine(raw) and (
                        getattr(raw, "__module__", None) is None or _owned(raw, name, owners)):
                    items.append(item(f"{name}.{attr}.{meth}", "method", raw.__doc__))
        elif is_routine(obj) and _owned(obj, name, owners):
            items.append(item(f"{name}.{attr}", "function", obj.__doc__))
    return [i for i in items if i is not None]


def collect_topics() -> list[DocItem]:
    """Language-reference topics (pydoc_data.topics) as clustering-only items."""
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
