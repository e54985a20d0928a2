"""Bad input, table-driven: each case must exit non-zero with one message naming the file or field,
leave no partial output, and fail before any model weights are loaded where it can. In-process
(commands' ``main``/``run``) to stay fast; one subprocess checks the one-line, no-traceback form."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, read_only_folder, tiny_config

TASKS = str(REPO / "conf" / "tasks.yaml")


@pytest.fixture(scope="module")
def tiny_nemo(tmp_path_factory, tokenizer_file, single_process):
    from nemo_nvembed.models.network import NVEmbedNetwork

    path = tmp_path_factory.mktemp("bad_inputs") / "tiny.nemo"
    NVEmbedNetwork(tiny_config(tokenizer_file)).save_to(str(path))
    return path


def user_error(capsys, fn, *args) -> str:
    """Run a command entry point; it must exit non-zero; -> its stderr."""
    with pytest.raises(SystemExit) as e:
        fn(*args)
    assert e.value.code not in (0, None)
    err = capsys.readouterr().err
    return err + (e.value.code if isinstance(e.value.code, str) else "")


# ---------------------------------------------------------------- encode

ENCODE_CASES = {
    # name: (argv changes, expected text in the message)
    "batch size -1": ({"--batch-size": "-1"}, "--batch-size must be >= 1"),
    "batch size 0": ({"--batch-size": "0"}, "--batch-size must be >= 1"),
    "missing input": ({"--input": "{tmp}/nope.jsonl"}, "nope.jsonl: no such file"),
    "model is a text file": ({"--model": "{tmp}/text.nemo"}, "text.nemo: not a readable .nemo archive"),
    "model truncated": ({"--model": "{tmp}/truncated.nemo"}, "truncated.nemo"),
    "model bit-flipped": ({"--model": "{tmp}/bitflip.nemo"}, "bitflip.nemo: the weights do not match the checksum"),
    "output folder missing": ({"--output": "{tmp}/missing/emb.npy"}, "folder {tmp}/missing does not exist"),
    "output is a folder": ({"--output": "{tmp}/adir.npy"}, "adir.npy: is a directory"),
    "max length 0": ({"--max-length": "0"}, "--max-length must be >= 1"),
    "chunk size 0": ({"--chunk-size": "0"}, "--chunk-size must be >= 1"),
    "tp 0": ({"--tp": "0"}, "--tp must be >= 1"),
    # read-only: a read-only bind mount as root (permission bits do not stop root), chmod 555 otherwise
    "output folder read-only": ({"--output": "{tmp}/ro/emb.npy"}, "folder {tmp}/ro is not writable"),
}


@pytest.mark.parametrize("case", sorted(ENCODE_CASES))
def test_encode_refuses(case, tiny_nemo, tmp_path, capsys):
    from nemo_nvembed import encode
    from test_faults import damaged_nemo

    changes, expected = ENCODE_CASES[case]
    for damage in ("text", "truncated", "bitflip"):
        damaged_nemo(tiny_nemo, tmp_path / f"{damage}.nemo", damage)
    (tmp_path / "adir.npy").mkdir()
    (tmp_path / "ro").mkdir()
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"text": "a"}\n{"text": "b"}\n')
    args = {"--model": str(tiny_nemo), "--input": str(inp), "--output": str(tmp_path / "emb.npy")}
    args.update({k: v.format(tmp=tmp_path) for k, v in changes.items()})
    with read_only_folder(tmp_path / "ro"):
        err = user_error(capsys, encode.main, [x for kv in args.items() for x in kv])
    assert expected.format(tmp=tmp_path) in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "emb.npy").exists() and not list(tmp_path.rglob("*.tmp")), "no partial output"


@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_encode_failing_midway_removes_its_temporary(suffix, tiny_nemo, tmp_path, monkeypatch):
    """The model fails on the second chunk (after the first was written into ``<output>.tmp``): the error
    propagates (a bug or an out-of-memory keeps its traceback), and neither the output nor its temporary
    is left behind."""
    from nemo_nvembed import encode
    from nemo_nvembed.models.network import NVEmbedNetwork

    real, calls, temporaries = NVEmbedNetwork.encode, [], []

    def failing(self, texts, **kw):
        calls.append(texts)
        if len(calls) == 2:
            temporaries.extend(tmp_path.glob("*.tmp"))
            raise RuntimeError("out of memory (injected)")
        return real(self, texts, **kw)

    monkeypatch.setattr(NVEmbedNetwork, "encode", failing)
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c"}\n')
    out = tmp_path / f"emb{suffix}"
    with pytest.raises(RuntimeError, match="injected"):
        encode.main(["--model", str(tiny_nemo), "--input", str(inp), "--output", str(out), "--chunk-size", "1"])
    assert temporaries == [tmp_path / f"emb{suffix}.tmp"], "the first chunk went to the temporary"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"], "no output, no temporary"


# ---------------------------------------------------------------- convert from-hf


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory, tokenizer_file, single_process):
    from nemo_nvembed.interop.hf_export import export_hf
    from nemo_nvembed.models.network import NVEmbedNetwork

    out = tmp_path_factory.mktemp("hf") / "hf"
    export_hf(NVEmbedNetwork(tiny_config(tokenizer_file, **{"pooling.type": "mean"})), str(out))
    return out


def _edit_config(folder: Path, fn) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    fn(cfg["text_config"])
    (folder / "config.json").write_text(json.dumps(cfg))


def _truncate_weights(folder: Path) -> None:
    f = next(folder.glob("*.safetensors"))
    os.truncate(f, f.stat().st_size // 2)


CONVERT_CASES = {
    "fewer layers declared than stored": (lambda f: _edit_config(f, lambda c: c.update(num_hidden_layers=1)),
                                          "does not account for: layers.1."),
    "more layers declared than stored": (lambda f: _edit_config(f, lambda c: c.update(num_hidden_layers=3)),
                                         "missing 9 tensor(s) config.json implies: layers.2."),
    "wrong intermediate_size": (lambda f: _edit_config(f, lambda c: c.update(intermediate_size=96)),
                                "layers.0.mlp.down_proj.weight is (64, 128), config.json implies (64, 96)"),
    "missing intermediate_size": (lambda f: _edit_config(f, lambda c: c.pop("intermediate_size")),
                                  "config.json has no 'intermediate_size'"),
    "malformed config.json": (lambda f: (f / "config.json").write_text("{not json"), "config.json: not valid JSON"),
    "truncated safetensors": (_truncate_weights, ".safetensors: unreadable safetensors file"),
}


@pytest.mark.parametrize("case", sorted(CONVERT_CASES))
def test_convert_refuses(case, hf_folder, tmp_path, capsys):
    import shutil

    from nemo_nvembed import convert

    src = tmp_path / "src"
    shutil.copytree(hf_folder, src)
    damage, expected = CONVERT_CASES[case]
    damage(src)
    err = user_error(capsys, convert.main, ["from-hf", str(src), "--out", str(tmp_path / "out.nemo")])
    assert expected in err and str(src) in err, err
    assert "Traceback" not in err
    assert not list(tmp_path.glob("out.nemo*")), "no partial output"


def test_convert_checks_out_before_loading(tmp_path, capsys):
    from nemo_nvembed import convert

    err = user_error(capsys, convert.main, ["from-hf", "smollm2", "--out", str(tmp_path / "no" / "x.nemo")])
    assert "does not exist" in err


# ---------------------------------------------------------------- train: config and data, before any weights


def _write_examples(path: Path, duplicate: bool = False) -> None:
    rows = [{"task": "PyDocRetrieval", "query": f"q{i}", "pos": f"p{i}", "neg": [f"n{i}-{j}" for j in range(3)]}
            for i in range(12)]
    if duplicate:
        rows.append(rows[4])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


TRAIN_CASES = {
    "TP 0": (["parallel.tensor_model_parallel_size=0"], "parallel.tensor_model_parallel_size must be an integer >= 1"),
    "TP -1": (["parallel.tensor_model_parallel_size=-1"], "parallel.tensor_model_parallel_size must be an integer >= 1"),
    "lr 0": (["train.optim.lr=0"], "train.optim.lr must be > 0"),
    "query_max_length 0": (["train.data.query_max_length=0"], "train.data.query_max_length must be >= 1"),
    "global batch 0": (["train.data.global_batch_size=0"], "train.data.global_batch_size must be >= 1"),
    "negatives -1": (["train.data.num_negatives=-1"], "train.data.num_negatives must be >= 1"),
    "max_steps 0": (["trainer.max_steps=0"], "trainer.max_steps must be an integer >= 1"),
    "resume typo": (["resume=fersh"], "resume: 'fersh' is not one of"),
    "skip fraction 1": (["train.max_skipped_fraction=1.0"], "train.max_skipped_fraction must be in [0, 1)"),
    "heap trim -1": (["train.host_memory_trim_every_n_steps=-1"], "train.host_memory_trim_every_n_steps must be >= 0"),
    "duplicate examples": (["train.data.path={dup}"], "train_dup.jsonl:13: duplicate of line 5"),
    "init_from damaged": (["init_from={tmp}/text.nemo"], "text.nemo: not a readable .nemo archive"),
    # The layout (issue 23): each with the world size the launcher gives (WORLD_SIZE, set for the case).
    "TP 2 on 1 process": (["parallel.tensor_model_parallel_size=2"], "tensor_model_parallel_size=2 does not divide the world size 1"),
    "TP 3 vs heads (3 processes)": (["parallel.tensor_model_parallel_size=3", "world=3"],
                                    "backbone.num_attention_heads=4 is not divisible by tensor_model_parallel_size=3"),
    "TP 4 vs query groups (4 processes)": (["parallel.tensor_model_parallel_size=4", "world=4"],
                                           "backbone.num_query_groups=2 is not divisible by tensor_model_parallel_size=4"),
    "global batch vs DP (2 processes)": (["train.data.global_batch_size=3", "world=2"],
                                         "global_batch_size=3 is not divisible by the data-parallel size 2"),
    "query_max_length vs instruction": (["train.data.query_max_length=1"],
                                        "query_max_length=1 leaves no room for text after the instruction of PyDocRetrieval"),
    "doc_max_length vs EOS": (["train.data.doc_max_length=1"], "doc_max_length=1 leaves no room for text"),
}


def _compose(tmp_path: Path, base: Path, extra: list[str]):
    from hydra import compose, initialize_config_dir

    data = tmp_path / "train.jsonl"
    _write_examples(data)
    _write_examples(tmp_path / "train_dup.jsonl", duplicate=True)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return compose(config_name="stage1", overrides=[
            "model=tiny", f"run_root={tmp_path}/runs", f"init_from={base}", f"train.data.path={data}",
            f"train.data.tasks={TASKS}", "train.data.global_batch_size=4", "train.data.num_negatives=3",
            *[e.format(tmp=tmp_path, dup=tmp_path / "train_dup.jsonl") for e in extra]])


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_train_refuses_before_restoring_weights(case, tiny_nemo, tmp_path, monkeypatch):
    from nemo_nvembed import train
    from nemo_nvembed.checks.errors import UserError
    from nemo_nvembed.models.network import NVEmbedNetwork
    from test_faults import damaged_nemo

    damaged_nemo(tiny_nemo, tmp_path / "text.nemo", "text")
    extra, expected = TRAIN_CASES[case]
    world = next((int(e.split("=")[1]) for e in extra if e.startswith("world=")), None)
    cfg = _compose(tmp_path, tiny_nemo, [e for e in extra if not e.startswith("world=")])
    if world:  # rank 0 of a launch of `world` processes: refused before the process group exists
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv("WORLD_SIZE", str(world))
    restored = []
    real = NVEmbedNetwork.load.__func__

    def spy(cls, path, *a, **kw):
        restored.append(path)
        return real(cls, path, *a, **kw)

    monkeypatch.setattr(NVEmbedNetwork, "load", classmethod(spy))
    with pytest.raises(UserError) as e:
        train.run(cfg)
    assert expected.format(tmp=tmp_path) in str(e.value), str(e.value)
    assert not restored, "refused only after restoring weights"
    assert not (tmp_path / "runs" / "stage1" / "resolved_config.yaml").exists(), "no partial output"


def test_duplicates_drop_is_counted(tmp_path):
    from nemo_nvembed.data.jsonl import load_examples
    from nemo_nvembed.data.tasks import TaskRegistry

    _write_examples(tmp_path / "d.jsonl", duplicate=True)
    loaded = load_examples(tmp_path / "d.jsonl", TaskRegistry.from_yaml(TASKS), 3, duplicates="drop")
    assert len(loaded.examples) == 12 and loaded.summary.duplicates == 1
    assert "duplicate examples         1 (dropped)" in loaded.summary.format()


def test_busy_run_folder_is_refused_before_weights(tiny_nemo, tmp_path):
    """A second launch into a folder a live process holds: refused naming the holder; the holder's
    resolved_config.yaml is left as it was."""
    import socket

    from nemo_nvembed import train
    from nemo_nvembed.training.run_lock import RunFolderBusy

    run_dir = tmp_path / "runs" / "stage1"
    (run_dir / "run.lock").mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_dir / "run.lock" / "holder.json").write_text(json.dumps(
            {"host": socket.gethostname(), "pid": sleeper.pid, "slurm_job_id": None, "started": "earlier"}))
        (run_dir / "resolved_config.yaml").write_text("the holder's\n")
        with pytest.raises(RunFolderBusy, match=f"pid {sleeper.pid}"):
            train.run(_compose(tmp_path, tiny_nemo, []))
        assert (run_dir / "resolved_config.yaml").read_text() == "the holder's\n"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_train_user_error_is_one_line_without_traceback(tmp_path):
    """One process; the same under 2 processes: tests/test_stops.py."""
    p = subprocess.run([sys.executable, "-m", "nemo_nvembed.train", "--config-name", "stage1", "model=tiny",
                        f"run_root={tmp_path}", "train.data.path=x.jsonl", f"train.data.tasks={TASKS}",
                        "trainer.max_steps=0"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert p.returncode == 2
    errors = [line for line in (p.stdout + p.stderr).splitlines() if line.startswith("error:")]
    assert errors == ["error: stage1: trainer.max_steps must be an integer >= 1, got 0 (a stage of 0 steps would write an "
                      "untrained .nemo)"], p.stderr
    assert "Traceback" not in p.stdout + p.stderr, p.stderr
