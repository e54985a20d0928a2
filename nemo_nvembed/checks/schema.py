"""Config files merged onto their schema, and configs compared: the one way every YAML is read.

Every config of the project (model, stage, task registry, data manifest) is a dataclass schema;
YAML is merged onto ``OmegaConf.structured(schema)`` in struct mode (lingua's habit), so a
misspelled key fails naming it (with a "did you mean" when one key is close) and a required value
left unset fails listing every such key. :func:`config_diff` compares two configs with floats
compared to a relative tolerance (a YAML's ``2e-5`` and a saved ``2.0e-05`` are the same value).
"""
from __future__ import annotations

import difflib
import math
from typing import Callable, Iterable, Iterator

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nemo_nvembed.checks.errors import UserError


def close_matches(name: str, candidates, n: int = 3) -> list[str]:
    """Closest names by difflib ratio, for 'did you mean' messages (case-insensitive)."""
    lowered = {c.lower(): c for c in candidates}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.6)
    return [lowered[h] for h in hits]


def did_you_mean(name: str, candidates) -> str:
    """`` Did you mean: 'a', 'b'?`` (empty when nothing is close)."""
    hits = close_matches(name, list(candidates))
    return f" Did you mean: {', '.join(repr(h) for h in hits)}?" if hits else ""


def load_yaml(path, what: str, error: type[UserError] = UserError):
    """A YAML file as a DictConfig; a missing file or a syntax error raises ``error`` naming ``path``
    (YAML errors carry their own line and column)."""
    try:
        return OmegaConf.load(path)
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except Exception as e:  # noqa: BLE001 - any parse failure is the file's
        raise error(f"{path}: cannot parse YAML: {e}") from None


def merge_onto_schema(schema, raw, where: str, error: type[UserError] = UserError, key_prefix: str = "",
                      require_complete: bool = True, valid_keys: Callable[[str], Iterable[str]] | None = None,
                      key_sep: str = ": ") -> DictConfig:
    """``raw`` (dict or DictConfig) merged onto ``schema`` (a dataclass) in struct mode.

    A wrong key or type raises ``error('<where><key_sep><key_prefix><key>: <reason>')``, with a suggestion
    from the keys valid under the bad key's parent (``valid_keys(parent)``, default: the schema's); with
    ``require_complete``, required values still unset (``???``) raise ``error`` naming all of them."""
    if isinstance(raw, DictConfig):
        raw = OmegaConf.to_container(raw, resolve=True)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), raw)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "<root>"
        reason = str(getattr(e, "msg", e)).splitlines()[0]
        hint = ""
        bad = getattr(e, "key", None)
        if isinstance(bad, str) and "not in" in reason:
            parent = key.rsplit(".", 1)[0] if "." in key else ""
            if valid_keys is not None:
                hint = did_you_mean(bad, valid_keys(parent))
            else:
                node = OmegaConf.select(OmegaConf.structured(schema), parent) if parent else OmegaConf.structured(schema)
                hint = did_you_mean(bad, node.keys()) if isinstance(node, DictConfig) else ""
        raise error(f"{where}{key_sep}{key_prefix}{key}: {reason}.{hint}") from None
    if require_complete:
        missing = sorted(OmegaConf.missing_keys(merged))
        if missing:
            raise error(f"{where}: required key(s) not set: {', '.join(key_prefix + m for m in missing)}")
    return merged


def same_value(a, b, rel_tol: float = 1e-6) -> bool:
    """Equal, with numbers compared to ``rel_tol`` when either is a float."""
    if isinstance(a, float) or isinstance(b, float):
        try:
            return a is not None and b is not None and math.isclose(float(a), float(b), rel_tol=rel_tol)
        except (TypeError, ValueError):
            return False
    return a == b


def config_diff(a, b, prefix: str = "") -> Iterator[tuple[str, object, object]]:
    """(dotted key, value in a, value in b) for every leaf where plain containers ``a`` and ``b`` differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            yield from config_diff(a.get(k), b.get(k), f"{prefix}{k}.")
    elif not same_value(a, b):
        yield prefix[:-1], a, b
