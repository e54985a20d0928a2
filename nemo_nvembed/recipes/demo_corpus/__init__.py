"""The demo's offline data (``python -m nemo_nvembed.demo_data``): ``build.py`` (the tasks, splits and
checks), ``stdlib_docs.py`` and ``package_docs.py`` (where the text comes from), ``docstrings.py``
(the item type and docstring rules both sources share)."""
