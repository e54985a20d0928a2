"""The two commands of the foundation, end to end on the embedded default (SmolLM2-135M)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest


def run(*args, cwd=None):
    p = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


@pytest.fixture(scope="module")
def smol_nemo(tmp_path_factory):
    out = tmp_path_factory.mktemp("smol") / "smol_mean.nemo"
    p = run("nemo_nvembed.convert", "from-hf", "smollm2", "--out", str(out), "model.pooling.type=mean")
    assert "pooling=mean" in p.stdout
    return out


def test_convert_then_encode_smollm2(smol_nemo, tmp_path):
    lines = [
        {"text": "How do I sort a list in Python?", "instruction": "Given a question, retrieve passages that answer the question"},
        {"text": "sorted(iterable) returns a new sorted list from the items in iterable."},
        {"text": "The Eiffel Tower is in Paris."},
        {"text": "list.sort() sorts the list in place."},
    ]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "emb.npy"
    run("nemo_nvembed.encode", "--model", str(smol_nemo), "--input", str(inp), "--output", str(out), "--batch-size", "2")
    emb = np.load(out)
    assert emb.shape == (4, 576) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    # The real pretrained model ranks the two sorting passages above the unrelated one.
    sims = emb[1:] @ emb[0]
    assert sims[0] > sims[1] and sims[2] > sims[1], sims
    # Rows follow input order: encoding a permuted file permutes the rows.
    inp2 = tmp_path / "in2.jsonl"
    inp2.write_text("".join(json.dumps(x) + "\n" for x in lines[::-1]))
    run("nemo_nvembed.encode", "--model", str(smol_nemo), "--input", str(inp2), "--output", str(tmp_path / "e2.npy"))
    np.testing.assert_allclose(np.load(tmp_path / "e2.npy"), emb[::-1], rtol=1e-4, atol=1e-5)


def test_encode_reports_bad_line(smol_nemo, tmp_path):
    inp = tmp_path / "bad.jsonl"
    inp.write_text('{"text": "ok"}\n{"txt": "typo"}\n')
    p = subprocess.run([sys.executable, "-m", "nemo_nvembed.encode", "--model", str(smol_nemo), "--input", str(inp),
                        "--output", str(tmp_path / "x.npy")], capture_output=True, text=True)
    assert p.returncode != 0 and "bad.jsonl:2" in p.stderr and "txt" in p.stderr


def test_convert_rejects_tp_that_does_not_divide_heads(tmp_path):
    p = subprocess.run([sys.executable, "-m", "nemo_nvembed.convert", "from-hf", "smollm2", "--out",
                        str(tmp_path / "x.nemo"), "--tp", "2"], capture_output=True, text=True)
    assert p.returncode != 0 and "not divisible by tensor_model_parallel_size=2" in p.stderr
    assert not (tmp_path / "x.nemo").exists()
