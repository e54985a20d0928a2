"""Training: the DP-gathered stage-1 step vs one process with the whole batch (real model),
resume after a kill equals an uninterrupted run, config validation, and a demo smoke run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, model_with_random_lora, tiny_config
from dist_utils import run_distributed

TASKS = str(REPO / "conf" / "tasks.yaml")


def write_examples(path: Path, n: int = 24, k: int = 3) -> None:
    """Retrieval examples; queries 0 and 1 share a positive (a duplicate that must be masked)."""
    rows = []
    for i in range(n):
        pos = "shared passage about lists" if i in (0, 1) else f"passage number {i} about topic {i % 5}"
        pos_id = "shared" if i in (0, 1) else f"p{i}"
        rows.append({"task": "PyDocRetrieval", "query": f"question {i} on topic {i % 5}", "pos": pos, "pos_id": pos_id,
                     "neg": [f"negative {i}-{j} text" for j in range(k)], "neg_ids": [f"n{i}-{j}" for j in range(k)]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_teacher(data_path: Path, out: Path, dim: int = 5) -> Path:
    """A teacher-vectors file (train.distill) of random unit vectors for every text of ``data_path``."""
    from nemo_nvembed.converters.teacher import training_texts
    from nemo_nvembed.data.teacher import text_hash

    texts = training_texts([data_path])
    vectors = torch.nn.functional.normalize(torch.randn(len(texts), dim, generator=torch.Generator().manual_seed(3)), dim=-1)
    torch.save({"hashes": torch.tensor([text_hash(t) for t in texts]), "vectors": vectors.half(), "model": "random"}, out)
    return out


def contrastive_step(model, data_path, global_batch, dp_rank, dp_size, chunking=None, in_batch=True, teacher=None):
    """One contrastive step on the first global batch; returns (global loss, full-layout gradients
    summed over the DP ranks, token counts). Shared by the training and scale tests. ``teacher``: a
    teacher-vectors file (train.distill)."""

    from nemo_nvembed.parallel import distributed, tp_layout
    from nemo_nvembed.data.jsonl import load_examples
    from nemo_nvembed.data.sampler import GlobalBatchSampler
    from nemo_nvembed.data.tasks import TaskRegistry
    from nemo_nvembed.parallel.grad_sum import sum_gradients
    from nemo_nvembed.training.config import stage_train_config
    from nemo_nvembed.training.batches import BatchStream
    from nemo_nvembed.training.objective import ContrastiveObjective

    # conf/stage1.yaml's train section (its chunking: GradCache, length-aware chunks) + this test's changes
    tcfg = stage_train_config("stage1", [
        f"train.data.path={data_path}", f"train.data.tasks={TASKS}", "train.data.num_negatives=3",
        f"train.data.global_batch_size={global_batch}", "train.loss.temperature=0.05",
        f"train.loss.in_batch_negatives={in_batch}", "train.optim.lr=1e-3",
        *(f"train.chunking.{k}={v}" for k, v in (chunking or {}).items()),
        *([f"train.distill.embeddings={teacher}", "train.distill.weight=0.5"] if teacher else [])])
    registry = TaskRegistry.from_yaml(TASKS)
    exs = load_examples(data_path, registry, 3).examples
    table = None
    if teacher:
        from nemo_nvembed.data.teacher import TeacherTable

        table = TeacherTable(teacher)
        table.check(exs, data_path)
    sampler = GlobalBatchSampler([e.task for e in exs], registry, global_batch, dp_rank, dp_size, 0, "blend")
    batch = next(iter(BatchStream(exs, sampler, registry, model.text, tcfg.data, in_batch, start=lambda: 0,
                                  teacher=table)))
    model.zero_grad(set_to_none=True)
    objective = ContrastiveObjective(tcfg, global_batch, seed=5)
    loss, out = objective.step(model, batch)
    if loss.requires_grad:  # GradCache has back-propagated already
        loss.backward()
    if dp_size > 1:
        sum_gradients(model.parameters(), distributed.dp_group())
    return out.global_loss.detach(), tp_layout.full_grads(model), objective.tokens


def _grads_for(model, data_path, global_batch, dp_rank, dp_size, in_batch, teacher=None):
    return contrastive_step(model, data_path, global_batch, dp_rank, dp_size, in_batch=in_batch, teacher=teacher)[:2]


def _dp_worker(rank, world, tokenizer_file, full, data_path, in_batch, teacher):
    from nemo_nvembed.parallel import distributed
    from nemo_nvembed.models.network import NVEmbedNetwork

    distributed.initialize(1)  # TP=1, DP=2
    model = NVEmbedNetwork(tiny_config(tokenizer_file, **{"lora.dropout": 0.0}))
    model.load_full_state_dict(full)
    return _grads_for(model, data_path, 8, rank, world, in_batch, teacher)


@pytest.mark.parametrize("in_batch, distill", [(True, False), (False, False), (True, True)],
                         ids=["stage1", "stage2", "stage1-distill"])
def test_dp2_step_equals_one_process_with_whole_batch(in_batch, distill, tokenizer_file, single_process, tmp_path):
    data = tmp_path / "train.jsonl"
    write_examples(data)
    teacher = write_teacher(data, tmp_path / "teacher.pt") if distill else None  # the batches carry its vectors
    model, full = model_with_random_lora(tokenizer_file, 3, **{"lora.dropout": 0.0})
    ref_loss, ref_grads = _grads_for(model, data, 8, 0, 1, in_batch, teacher)
    if distill:  # the teacher's term is in the loss
        assert not torch.allclose(ref_loss, _grads_for(model, data, 8, 0, 1, in_batch)[0])
    for loss, grads in run_distributed(_dp_worker, 2, tokenizer_file, full, data, in_batch, teacher, timeout_s=300):
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
        assert grads.keys() == ref_grads.keys()
        for k in ref_grads:
            scale = ref_grads[k].abs().max().item()  # fp32 summation order differs: tolerance relative to the tensor
            torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-4, atol=1e-5 * scale, msg=lambda m: f"{k}: {m}")


# ---------------------------------------------------------------- whole runs through torchrun

def torchrun_cmd(run_root: Path, base: Path, data: Path, max_steps: int, extra=()):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "nemo_nvembed.train",
            "--config-name", "stage1", "model=tiny", f"run_root={run_root}", f"init_from={base}",
            f"train.data.path={data}", f"train.data.tasks={TASKS}", "train.data.global_batch_size=8",
            "train.data.num_negatives=3", "train.data.query_max_length=32", "train.data.doc_max_length=32",
            "train.optim.lr=1e-3", "train.optim.warmup_steps=2", "trainer.precision=32-true",
            f"trainer.max_steps={max_steps}", "exp_manager.checkpoint_callback_params.every_n_train_steps=2",
            "trainer.enable_progress_bar=false", *extra]


def _save_tiny_base(tokenizer_file: str, path: str) -> None:
    from nemo_nvembed.models.network import NVEmbedNetwork

    NVEmbedNetwork.from_config(tiny_config(tokenizer_file)).save_to(path)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory, tokenizer_file):
    """A tiny random base .nemo, built in a child process (its own process group and parallel state; forked
    from the test fork server, which has the model code imported: no fresh interpreter)."""
    from dist_utils import forkserver_context

    path = tmp_path_factory.mktemp("base") / "tiny_base.nemo"
    child = forkserver_context().Process(target=_save_tiny_base, args=(tokenizer_file, str(path)))
    child.start()
    child.join(300)
    assert child.exitcode == 0 and path.exists(), f"building the tiny base failed (exit {child.exitcode})"
    return path


def nemo_weights(path: Path) -> dict:
    with tarfile.open(path) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("model_weights.ckpt"))
        return torch.load(tar.extractfile(member), map_location="cpu")


def assert_same_nemo_weights(a_path: Path, b_path: Path) -> None:
    """Two .nemo files hold bit-identical weights under the same names."""
    a, b = nemo_weights(a_path), nemo_weights(b_path)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=lambda m: f"{k}: {m}")


def last_trace(run_dir: Path) -> dict:
    """(rank, step) -> example lines, the last entry of a step winning (a resumed run replays)."""
    out = {}
    for f in sorted(run_dir.glob("samples/rank*.jsonl")):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            out[(f.name, r["step"])] = r["lines"]
    return out


def worker_pids(run_dir: Path, exclude: int | None = None) -> list[int]:
    """Live processes whose command line names ``run_dir`` (the launcher and its workers)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) in (exclude, os.getpid()):
            continue
        try:
            if str(run_dir) in (d / "cmdline").read_bytes().decode(errors="replace") and alive([int(d.name)]):
                pids.append(int(d.name))
        except OSError:
            continue
    return pids


def alive(pids: list[int]) -> list[int]:
    """Those of ``pids`` that still run (a zombie, dead but not yet reaped, does not count)."""
    out = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            out.append(pid)
    return out


def test_killed_run_resumes_to_the_same_weights(tmp_path, tiny_base):
    data = tmp_path / "train.jsonl"
    write_examples(data, n=40)
    steps = 12
    # TP=2 through the real trainer: global-norm clipping that really clips, the replica guard at
    # every checkpoint and at the end (per-rank clipping would make the replicas diverge).
    tp2 = ["parallel.tensor_model_parallel_size=2", "trainer.gradient_clip_val=0.02"]
    straight = tmp_path / "straight"
    subprocess.run(torchrun_cmd(straight, tiny_base, data, steps, tp2), check=True, capture_output=True, cwd=REPO)

    resumed = tmp_path / "resumed"
    proc = subprocess.Popen(torchrun_cmd(resumed, tiny_base, data, steps, tp2), cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt_dir = resumed / "stage1" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and not list(ckpt_dir.glob("*step=4*.ckpt")):
        time.sleep(0.05)
    workers = worker_pids(resumed, exclude=proc.pid)
    assert len(workers) >= 2, workers
    # A crash of the launcher only (torchrun's workers run in their own sessions, outside its
    # process group): the workers must die with it, not keep training into the run folder.
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 20
    while time.time() < deadline and alive(workers):
        time.sleep(0.1)
    survivors = alive(workers)
    for pid in survivors:  # never leave them running, even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"workers {survivors} outlived their launcher"
    assert not worker_pids(resumed), "a process still runs in the killed run's folder"
    assert not (resumed / "stage1" / "stage1.nemo").exists(), "the run finished before it could be killed"
    done_before = max(s for (_, s) in last_trace(resumed / "stage1"))
    assert done_before < steps - 1
    relaunch = subprocess.run(torchrun_cmd(resumed, tiny_base, data, steps, tp2), capture_output=True, text=True, cwd=REPO)
    assert relaunch.returncode == 0, f"relaunch failed:\n{relaunch.stdout[-3000:]}\n{relaunch.stderr[-5000:]}"
    # The run folder records the launch: torchrun's own command line, relaunchable as written.
    launch = json.loads((resumed / "stage1" / "launch.json").read_text())
    assert launch["launcher"] == "torchrun" and "torch.distributed.run" in launch["launcher_command"], launch
    assert "nemo_nvembed.train" in (resumed / "stage1" / "launch_command.sh").read_text()

    assert_same_nemo_weights(straight / "stage1" / "stage1.nemo", resumed / "stage1" / "stage1.nemo")
    # Same samples, step by step, on both ranks; every step trained exactly once in effect.
    ta, tb = last_trace(straight / "stage1"), last_trace(resumed / "stage1")
    assert ta == tb and sorted({s for (_, s) in ta}) == list(range(steps))
    # Relaunching a finished stage is a no-op (one process: the .nemo is found before the layout matters).
    cmd = torchrun_cmd(resumed, tiny_base, data, steps, tp2)
    p = subprocess.run([sys.executable, "-m", "nemo_nvembed.train", *cmd[cmd.index("--config-name"):]], check=True,
                       capture_output=True, text=True, cwd=REPO)
    assert "already finished" in p.stdout


def test_nonfinite_loss_stops_with_the_step(tmp_path, tiny_base):
    data = tmp_path / "train.jsonl"
    write_examples(data)
    p = subprocess.run(torchrun_cmd(tmp_path / "r", tiny_base, data, 3, ["train.loss.temperature=1e-45"]),
                       capture_output=True, text=True, cwd=REPO)
    assert p.returncode != 0 and "non-finite loss" in p.stdout + p.stderr and "at step 0" in p.stdout + p.stderr


def test_stage_config_mismatch_is_named(tmp_path, tiny_base):
    data = tmp_path / "train.jsonl"
    write_examples(data)
    p = subprocess.run(torchrun_cmd(tmp_path / "r", tiny_base, data, 3, ["model.pooling.num_latents=8"]),
                       capture_output=True, text=True, cwd=REPO)
    assert p.returncode != 0 and "model.pooling.num_latents" in p.stdout + p.stderr


def test_every_stage_yaml_composes_and_validates():
    from hydra import compose, initialize_config_dir

    from nemo_nvembed.models.config import validate_model_config
    from nemo_nvembed.training.config import validate_train_config

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        for name in ("stage1", "stage2"):
            cfg = compose(config_name=name, overrides=["train.data.path=x.jsonl", "train.data.tasks=conf/tasks.yaml"])
            validate_model_config(cfg.model, require_complete=False)
            t = validate_train_config(cfg.train)
            assert t.data.global_batch_size == 128 and t.data.num_negatives == 7
    assert (t.optim.lr, t.loss.in_batch_negatives, cfg.trainer.max_steps) == (1.5e-5, False, 18000)


def test_demo_smoke(tmp_path, tokenizer_file):
    """The demo pipeline end to end on a tiny random HF Mistral: data, convert, eval, two stages."""
    from omegaconf import OmegaConf
    from transformers import MistralConfig, MistralModel

    hf = tmp_path / "tiny_hf"
    torch.manual_seed(0)
    MistralModel(MistralConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                               rms_norm_eps=1e-5, rope_theta=10000.0)).save_pretrained(hf)
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_file=tokenizer_file, eos_token="<|im_end|>", pad_token="<|im_end|>",
                            bos_token="<|im_start|>").save_pretrained(hf)
    cfg = OmegaConf.load(REPO / "conf" / "demo.yaml")
    cfg.out = str(tmp_path / "demo")
    cfg.base_source, cfg.base_model_config = str(hf), "tiny"
    cfg.eval_precision = "fp32"
    cfg.minilm_baseline = False  # its scorer: tests/test_st_baseline.py (saves ~25 s here)
    cfg.common = [x for x in cfg.common if not x.startswith("model=")] + ["model=tiny", "trainer.precision=32-true"]
    cfg.stage1 = [x for x in cfg.stage1 if "max_steps" not in x] + ["trainer.max_steps=2"]
    cfg.stage2 = [x for x in cfg.stage2 if "max_steps" not in x] + ["trainer.max_steps=2"]
    OmegaConf.save(cfg, tmp_path / "demo.yaml")
    p = subprocess.run([sys.executable, "-m", "nemo_nvembed.demo", "--config", str(tmp_path / "demo.yaml")],
                       capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert list(results["results"]) == ["BM25 (bm25s, no training)", "after stage1", "after stage2"]  # base_mean_baseline: false
    assert list(results["results_heldout_manpages"]) == ["BM25 (bm25s, no training)", "after stage2"]
    assert [step for step, _, _ in results["curves"]["after stage2"]] == [2]
    assert (tmp_path / "demo" / "runs" / "stage2" / "stage2.nemo").exists()
    assert (tmp_path / "demo" / "learning_curve.png").stat().st_size > 0
    assert "| after stage2 | 2 |" in p.stdout and "heldout_manpages nDCG@10" in p.stdout
    assert "UserWarning" not in p.stdout + p.stderr  # library warnings go to the log file
    assert "UserWarning" in (tmp_path / "demo" / "demo.log").read_text()
