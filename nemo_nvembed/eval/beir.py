"""Old name of :mod:`nemo_nvembed.eval.retrieval_metrics`, kept only while ``training/callbacks.py`` still
imports it; delete this file once it imports ``retrieval_metrics``."""
from nemo_nvembed.eval.retrieval_metrics import score  # noqa: F401
