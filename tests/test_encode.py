"""encode CLI on a tiny random model (CPU): chunked streaming equals one model.encode call, .npy and
.parquet outputs keep input order, parquet ids come from the input or are line numbers."""
from __future__ import annotations

import json

import numpy as np
import pytest

from command_errors import refused
from conftest import tiny_config
from nemo_nvembed import encode

INSTR = "Given a question, retrieve passages that answer the question"
LINES = [
    {"text": "How do I sort a list in Python?", "instruction": INSTR},
    {"text": "sorted(iterable) returns a new sorted list from the items in iterable."},
    {"text": "The Eiffel Tower is in Paris."},
    {"text": "Which city is the Eiffel Tower in?", "instruction": INSTR},
    {"text": "list.sort() sorts the list in place, and it is stable: equal items keep their order."},
    {"text": "A"},
    {"text": "Heaps are binary trees for which every parent node has a value <= any of its children."},
]


@pytest.fixture(scope="module")
def tiny_nemo(tmp_path_factory, tokenizer_file, single_process):
    from nemo_nvembed.models.network import NVEmbedNetwork

    path = tmp_path_factory.mktemp("tiny") / "tiny.nemo"
    NVEmbedNetwork(tiny_config(tokenizer_file, **{"pooling.type": "mean"})).save_to(str(path))
    return path


@pytest.fixture(scope="module")
def reference(tiny_nemo):
    """Each line embedded on its own by model.encode: [n, d]."""
    from nemo_nvembed.models.network import NVEmbedNetwork

    model = NVEmbedNetwork.load(str(tiny_nemo))
    return np.concatenate([model.encode([x["text"]], instruction=x.get("instruction")).numpy() for x in LINES])


def write(path, lines):
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_npy_chunked_in_input_order(tiny_nemo, reference, tmp_path):
    inp = write(tmp_path / "in.jsonl", LINES)
    out = tmp_path / "emb.npy"
    encode.main(["--model", str(tiny_nemo), "--input", str(inp), "--output", str(out), "--chunk-size", "3",
                 "--batch-size", "2"])
    emb = np.load(out)
    assert emb.shape == reference.shape and emb.dtype == np.float32
    np.testing.assert_allclose(emb, reference, rtol=1e-4, atol=1e-5)
    assert not (tmp_path / "emb.npy.tmp").exists()


def test_parquet_ids(tiny_nemo, reference, tmp_path):
    import pyarrow.parquet as pq

    # Without ids: 1-based line numbers.
    out = tmp_path / "emb.parquet"
    encode.main(["--model", str(tiny_nemo), "--input", str(write(tmp_path / "a.jsonl", LINES)), "--output", str(out),
                 "--chunk-size", "4"])
    table = pq.read_table(out)
    assert table.column_names == ["id", "embedding"]
    assert table.schema.field("embedding").type.list_size == reference.shape[1]
    assert table.column("id").to_pylist() == list(range(1, len(LINES) + 1))
    np.testing.assert_allclose(np.array(table.column("embedding").to_pylist(), dtype=np.float32), reference,
                               rtol=1e-4, atol=1e-5)
    # With ids (strings or integers, written as strings), reversed input: rows follow the input.
    ids = [f"doc-{i}" if i % 2 else i for i in range(len(LINES))]
    lines = [{**x, "id": id_} for x, id_ in zip(LINES, ids)][::-1]
    encode.main(["--model", str(tiny_nemo), "--input", str(write(tmp_path / "b.jsonl", lines)), "--output",
                 str(out), "--chunk-size", "2"])
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == [str(i) for i in ids][::-1]
    np.testing.assert_allclose(np.array(table.column("embedding").to_pylist(), dtype=np.float32), reference[::-1],
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("lines,output,message", [
    ([{"text": "a", "id": "x"}, {"text": "b", "id": "x"}], "o.parquet", "in.jsonl:2: id 'x' already used on line 1"),
    ([{"text": "a", "id": "x"}, {"text": "b"}], "o.parquet", "in.jsonl:2: field 'id' must be given on every line"),
    ([{"text": "a", "id": 1.5}], "o.npy", "in.jsonl:1: field 'id' must be a non-empty string or an integer"),
    ([{"text": "a"}], "o.txt", "o.txt: output must end in .npy or .parquet"),
])
def test_errors_before_the_model_loads(tmp_path, capsys, lines, output, message):
    inp = write(tmp_path / "in.jsonl", lines)
    model = tmp_path / "never_loaded.nemo"  # exists (paths are checked first) but is no model: loading it would fail otherwise
    model.write_text("not a model\n")
    err = refused(capsys, encode.main, ["--model", str(model), "--input", str(inp), "--output", str(tmp_path / output)])
    assert message in err, err
