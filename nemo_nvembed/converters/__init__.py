"""Converters to training JSONL (NV-Embed section 4.2), behind ``mine`` and ``convert_data`` and reused by the
paper's data pipeline: ``mining.py`` (hard negatives for a BEIR retrieval set, TopK-PercPos),
``nonretrieval.py`` (classification, clustering and STS data as contrastive pairs)."""
