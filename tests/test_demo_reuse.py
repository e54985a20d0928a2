"""The demo reuses a step's output only when the same arguments made it (recipes/demo_pipeline.reuse)."""
import json

import pytest

from nemo_nvembed.recipes.console import Console, DemoFailed
from nemo_nvembed.recipes.demo_pipeline import reuse


def test_a_changed_configuration_never_reuses_a_stale_output(tmp_path):
    con = Console(tmp_path / "demo.log")
    nemo = tmp_path / "base.nemo"
    args = ["smollm2", "--model-config", "smollm2_135m", "model.lora.dropout=0"]
    assert reuse(con, nemo, args) is False  # not made yet: run it, arguments recorded first
    assert json.loads((tmp_path / "base.nemo.args.json").read_text())["args"] == args
    nemo.write_bytes(b"model")
    assert reuse(con, nemo, args) is True  # made by these arguments: skipped
    with pytest.raises(DemoFailed, match=r"base\.nemo was made with other arguments .* now without "
                                         r"\['model\.lora\.dropout=0'\], now with \['model\.lora\.dropout=0\.1'\]"):
        reuse(con, nemo, args[:-1] + ["model.lora.dropout=0.1"])
    nemo.unlink()  # interrupted with the old arguments: still refused (a stage would resume their checkpoints)
    with pytest.raises(DemoFailed, match="was started with other arguments"):
        reuse(con, nemo, args[:-1])


def test_done_marker_and_outputs_made_before_records(tmp_path):
    con = Console(tmp_path / "demo.log")
    run, nemo = tmp_path / "runs" / "stage1", tmp_path / "runs" / "stage1" / "stage1.nemo"
    assert reuse(con, run, ["a=1"], done=nemo) is False
    assert (tmp_path / "runs" / "stage1.args.json").exists()  # beside the run folder, not in it
    run.mkdir(parents=True)
    assert reuse(con, run, ["a=1"], done=nemo) is False  # folder without its .nemo: not done
    nemo.write_bytes(b"x")
    assert reuse(con, run, ["a=1"], done=nemo) is True
    old = tmp_path / "old.nemo"
    old.write_bytes(b"x")
    assert reuse(con, old, ["b=2"]) is True  # no record: made before records existed, reused as before


def test_an_input_made_again_refuses_the_steps_made_from_the_old_one(tmp_path):
    import os

    from nemo_nvembed.recipes.demo_pipeline import stamp

    con = Console(tmp_path / "demo.log")
    stage1, stage2 = tmp_path / "stage1.nemo", tmp_path / "stage2.nemo"
    stage1.write_bytes(b"first")
    assert reuse(con, stage2, ["lr=3e-4", stamp(stage1)]) is False
    stage2.write_bytes(b"x")
    assert reuse(con, stage2, ["lr=3e-4", stamp(stage1)]) is True
    stage1.write_bytes(b"again")  # stage 1 made again (other size and time)
    os.utime(stage1, ns=(1, 1))
    with pytest.raises(DemoFailed, match=r"now with \['input .*stage1\.nemo 5-1'\]"):
        reuse(con, stage2, ["lr=3e-4", stamp(stage1)])
