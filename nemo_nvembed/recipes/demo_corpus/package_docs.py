"""Docstrings of installed third-party packages as extra demo training data (training side only).

The standard library gives the demo ~700 retrieval examples; the packages the environment installs
anyway (numpy, torch, scipy, pandas, networkx, sympy, ...) document thousands more functions in the
same shape (a summary sentence, then the details). Each listed module contributes the public
functions, classes and methods it defines, as :class:`.docstrings.DocItem` with
``area`` = the package's name, so they join retrieval, classification (by module) and clustering (by
package). They never enter the held-out split, which stays whole standard-library modules; the
near-duplicate filter against held-out text applies to them like to every training item.

Only an explicit allowlist is imported (no package walking: importing arbitrary submodules may have
side effects); a module that is not installed or fails to import is skipped and reported.
"""
from __future__ import annotations

import importlib
import inspect
import warnings

import numpy as np

from nemo_nvembed.checks.errors import UserError
from nemo_nvembed.recipes.demo_corpus.docstrings import DocItem, doc_item, is_routine

# module -> area (the package it belongs to). Pure library code: importing it has no side effects.
PACKAGE_MODULES = {
    "numpy": "numpy", "numpy.linalg": "numpy", "numpy.fft": "numpy", "numpy.random": "numpy",
    "numpy.ma": "numpy", "numpy.polynomial.polynomial": "numpy", "numpy.lib.stride_tricks": "numpy",
    "torch": "pytorch", "torch.nn": "pytorch", "torch.nn.functional": "pytorch", "torch.linalg": "pytorch",
    "torch.fft": "pytorch", "torch.optim": "pytorch", "torch.utils.data": "pytorch", "torch.nn.init": "pytorch",
    "torch.distributed": "pytorch", "torch.autograd": "pytorch", "torch.special": "pytorch",
    "scipy.linalg": "scipy", "scipy.optimize": "scipy", "scipy.stats": "scipy", "scipy.signal": "scipy",
    "scipy.sparse": "scipy", "scipy.interpolate": "scipy", "scipy.integrate": "scipy", "scipy.spatial": "scipy",
    "pandas": "pandas", "networkx": "networkx", "sympy": "sympy", "sklearn.metrics": "scikit-learn",
    "sklearn.preprocessing": "scikit-learn", "sklearn.model_selection": "scikit-learn",
    "pyarrow.compute": "pyarrow", "omegaconf": "omegaconf", "yaml": "pyyaml", "jinja2": "jinja2",
    "requests": "requests", "tqdm": "tqdm",
}


def _owned(obj, package: str) -> bool:
    owner = getattr(obj, "__module__", None) or ""
    return owner == package or owner.startswith(package + ".")


def collect_package_module(name: str, min_summary_words: int, max_chars: int) -> list[DocItem]:
    """Public functions, classes and class methods of ``name`` whose code lives in its package."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = importlib.import_module(name)
        package, area = name.split(".")[0], PACKAGE_MODULES[name]
        item = lambda id_, kind, doc: doc_item(id_, name, area, kind, doc, min_summary_words, max_chars)  # noqa: E731
        items = []
        for attr in sorted(vars(module)):
            if attr.startswith("_"):
                continue
            obj = getattr(module, attr)
            if inspect.isclass(obj) and _owned(obj, package):
                items.append(item(f"{name}.{attr}", "class", obj.__doc__))
                for meth in sorted(vars(obj)):
                    raw = getattr(vars(obj)[meth], "__func__", vars(obj)[meth])
                    if not meth.startswith("_") and is_routine(raw):
                        items.append(item(f"{name}.{attr}.{meth}", "method", raw.__doc__))
            elif (is_routine(obj) or isinstance(obj, np.ufunc)) and (
                    _owned(obj, package) or getattr(obj, "__module__", None) is None):
                items.append(item(f"{name}.{attr}", "function", obj.__doc__))
    return [i for i in items if i is not None]


def collect_packages(names: list[str], min_summary_words: int,
                     max_chars: int) -> tuple[list[DocItem], dict[str, str]]:
    """(items, skipped modules with the reason) for the listed allowlist modules."""
    unknown = sorted(set(names) - set(PACKAGE_MODULES))
    if unknown:
        raise UserError(f"--packages: {unknown} not in the allowlist nemo_nvembed/recipes/demo_corpus/package_docs.py"
                        f" PACKAGE_MODULES ({', '.join(sorted(PACKAGE_MODULES))})")
    items, skipped = [], {}
    for name in sorted(names):
        try:
            items += collect_package_module(name, min_summary_words, max_chars)
        except Exception as exc:  # not installed here, or a broken build
            skipped[name] = f"{type(exc).__name__}: {exc}"
    return items, skipped
