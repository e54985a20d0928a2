"""MTEB (mteb 2.x) on a tiny model, with a local retrieval task and a local classification task.

The tasks hold their data in memory (no download; the hub is also switched offline). Checks that
mteb reports scores, that queries carry the task's Table-7-style instruction from the registry
while documents carry none, that classification inputs all carry it, and that results are written.
"""
from __future__ import annotations

import json
import math
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import pytest  # noqa: E402

mteb = pytest.importorskip("mteb")

from datasets import Dataset, DatasetDict  # noqa: E402
from mteb.abstasks.classification import AbsTaskClassification  # noqa: E402
from mteb.abstasks.retrieval import AbsTaskRetrieval  # noqa: E402
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData  # noqa: E402
from mteb.abstasks.task_metadata import TaskMetadata  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

from nemo_nvembed.data.tasks import TaskRegistry  # noqa: E402

RETRIEVAL_INSTRUCTION = "Given a question about Python, retrieve the passage that answers it"
CLASSIFICATION_INSTRUCTION = "Classify the given sentence as being about cooking or about sports"

COMMON = dict(description="local test task", reference="https://example.invalid", dataset={"path": "NA", "revision": "NA"},
              category="t2t", eval_splits=["test"], eval_langs=["eng-Latn"], date=("2024-01-01", "2024-01-01"),
              dialect=["Written"], domains=[], task_subtypes=[], license="cc-by-4.0", annotations_creators="derived",
              modalities=["text"], sample_creation="found", bibtex_citation="")


class LocalPyRetrieval(AbsTaskRetrieval):
    metadata = TaskMetadata(type="Retrieval", name="LocalPyRetrieval", main_score="ndcg_at_10", **COMMON)

    def load_data(self, num_proc=None, **kwargs):
        docs = {"d1": "sorted(iterable) returns a new sorted list.", "d2": "A tuple is an immutable sequence.",
                "d3": "dict.get returns a default when the key is missing.", "d4": "The Eiffel Tower is in Paris.",
                "d5": "len(s) returns the number of items."}
        queries = {"q1": "How do I sort a list?", "q2": "What is a tuple?", "q3": "How long is my list?"}
        split = RetrievalSplitData(
            queries=Dataset.from_list([{"id": k, "text": v} for k, v in queries.items()]),
            corpus=Dataset.from_list([{"id": k, "text": v, "title": ""} for k, v in docs.items()]),
            relevant_docs={"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d5": 1}},
            top_ranked=None,
        )
        self.dataset = {"default": {"test": split}}
        self.data_loaded = True


class LocalTopicClassification(AbsTaskClassification):
    classifier = LogisticRegression(max_iter=50)
    metadata = TaskMetadata(type="Classification", name="LocalTopicClassification", main_score="accuracy", **COMMON)

    def load_data(self, num_proc=None, **kwargs):
        cooking = ["Stir the soup slowly.", "Bake the bread for an hour.", "Chop the onions finely.", "Season the pasta water.",
                   "Whisk the eggs.", "Roast the carrots."]
        sports = ["He scored a late goal.", "The team won the final.", "She ran a fast marathon.", "The referee blew the whistle.",
                  "They lost the match.", "A great tennis serve."]
        train = {"text": cooking[:4] + sports[:4], "label": [0] * 4 + [1] * 4}
        test = {"text": cooking[4:] + sports[4:], "label": [0] * 2 + [1] * 2}
        self.dataset = DatasetDict({"train": Dataset.from_dict(train), "test": Dataset.from_dict(test)})
        self.data_loaded = True


def registry() -> TaskRegistry:
    spec = dict(weight=1.0, in_batch_negatives=True, train_instruction="train")
    return TaskRegistry.from_dict({"tasks": {
        "LocalPyRetrieval": dict(kind="retrieval", eval_instruction=RETRIEVAL_INSTRUCTION, **spec),
        "LocalTopicClassification": dict(kind="classification", eval_instruction=CLASSIFICATION_INSTRUCTION, **spec),
    }}, source="test registry")


def test_mteb_local_retrieval_and_classification(make_tiny, tmp_path):
    from nemo_nvembed.eval.mteb import NVEmbedMTEBEncoder, run

    model = make_tiny()
    calls = []  # (task texts, instruction) of every encode call
    encode = model.encode

    def spy(texts, instruction=None, **kw):
        calls.append((list(texts), instruction))
        return encode(texts, instruction=instruction, **kw)

    model.encode = spy
    enc = NVEmbedMTEBEncoder(model, registry=registry(), name="nemo_nvembed/tiny", revision="test", batch_size=4, progress=False)
    scores = run(enc, [LocalPyRetrieval(), LocalTopicClassification()], output_folder=str(tmp_path))

    assert set(scores) == {"LocalPyRetrieval", "LocalTopicClassification"}
    assert all(math.isfinite(s) and 0.0 <= s <= 1.0 for s in scores.values()), scores
    by_instruction = {}
    for texts, instruction in calls:
        by_instruction.setdefault(instruction, []).extend(texts)
    assert set(by_instruction[RETRIEVAL_INSTRUCTION]) == {"How do I sort a list?", "What is a tuple?", "How long is my list?"}
    assert "The Eiffel Tower is in Paris." in by_instruction[None]  # documents: no instruction
    assert not any("?" in t for t in by_instruction[None])
    assert "Whisk the eggs." in by_instruction[CLASSIFICATION_INSTRUCTION] and "He scored a late goal." in by_instruction[CLASSIFICATION_INSTRUCTION]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["main_score"] == scores
    written = {p.name for p in tmp_path.rglob("*.json")}
    assert {"LocalPyRetrieval.json", "LocalTopicClassification.json"} <= written


def test_registry_names_for_mteb_versions():
    from nemo_nvembed.eval.mteb import registry_name
    from nemo_nvembed.paths import CONF

    reg = TaskRegistry.from_yaml(CONF / "tasks.yaml")
    assert registry_name("SciFact", reg) == "SciFact"
    assert registry_name("ArxivClusteringP2P.v2", reg) == "ArxivClusteringP2P"
    assert registry_name("Touche2020Retrieval.v3", reg) == "Touche2020"
    assert registry_name("HotpotQAHardNegatives", reg) == "HotpotQA"
    assert registry_name("NoSuchTask", reg) is None
