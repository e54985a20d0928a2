"""Old name of :mod:`nemo_nvembed.data.beir_folder`, kept only while ``training/callbacks.py`` still imports
it; delete this file once it imports ``beir_folder``."""
from nemo_nvembed.data.beir_folder import BeirError, RetrievalSet, load_beir, read_retrieval_set  # noqa: F401
