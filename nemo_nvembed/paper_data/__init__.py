"""The paper's public training data (``python -m nemo_nvembed.prepare``): ``manifest.py`` (the recipe
manifest's schema and checks), ``sources.py`` (reading a set's tables with `datasets`),
``build_set.py`` (one set -> training rows with its report), ``subsample.py`` (Table 6 counts), ``table6.py``
(the manifest and task weights against conf/data/table6.yaml),
``teachers.py`` (hard-negative mining teachers), ``run.py`` (a stage, set by set, resumably).
The conversion rules themselves are :mod:`nemo_nvembed.converters`'."""
