"""Training stays correct over a run: TP x DP against one process with the whole batch.

Over STEPS optimizer steps with clipping that really clips, LoRA dropout on and the warm-up / decay
LR schedule, TP=2 x DP=1, TP=1 x DP=2 and TP=2 x DP=2 (gloo processes), each with and without
GradCache, end within WEIGHT_ATOL of the one-process run and with identical replicas. The loop is
the strategy's (objective step, DP gradient SUM, global-norm clipping, AdamW, LR scheduler)
without Lightning; one spawn per world size runs its layouts, each with both GradCache settings
and the clipping and replica-guard checks, shared by the tests below through a module fixture.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from conftest import tiny_config
from dist_utils import run_distributed
from test_training import TASKS, write_examples

STEPS = 10
CHUNK = 8  # sequences per forward: several chunks per rank (GradCache replays them)
CLIP = 0.02  # far below the gradient norms of this model (checked): every step is clipped
WEIGHT_ATOL = 2e-5  # fp32: summation order differs between layouts (weights are ~0.02-0.5)
LAYOUTS = {"tp2_dp1": (2, 2), "tp1_dp2": (1, 2), "tp2_dp2": (2, 4)}  # name: (TP, world size)


def train_cfg(data, grad_cache: bool):
    from nemo_nvembed.training.config import stage_train_config

    # conf/stage1.yaml's train section + this test's sizes; plain and GradCache over the same chunks
    return stage_train_config("stage1", [
        f"train.data.path={data}", f"train.data.tasks={TASKS}", "train.data.num_negatives=3",
        "train.data.global_batch_size=8", "train.loss.temperature=0.05", "train.optim.lr=1e-3",
        "train.optim.warmup_steps=3", "train.optim.min_lr=1e-4", f"train.chunking.chunk_size={CHUNK}",
        f"train.chunking.grad_cache={grad_cache}"])


def train(model, data, grad_cache: bool, steps: int = STEPS) -> list[float]:
    """The training loop of MegatronDPStrategy on this rank; returns the pre-clip global norms."""
    from nemo_nvembed.data.jsonl import load_examples
    from nemo_nvembed.data.sampler import GlobalBatchSampler
    from nemo_nvembed.data.tasks import TaskRegistry
    from nemo_nvembed.parallel import distributed
    from nemo_nvembed.training.batches import BatchStream
    from nemo_nvembed.training.objective import ContrastiveObjective
    from nemo_nvembed.training.optim import build_optimizer
    from nemo_nvembed.training.strategy import clip_gradients_globally, sum_gradients

    tcfg = train_cfg(data, grad_cache)
    registry = TaskRegistry.from_yaml(TASKS)
    exs = load_examples(data, registry, 3).examples
    sampler = GlobalBatchSampler([e.task for e in exs], registry, 8, distributed.dp_rank(), distributed.dp_size(),
                                 0, "blend")
    stream = BatchStream(exs, sampler, registry, model.text, tcfg.data, True, start=lambda: 0)
    params = [p for p in model.parameters() if p.requires_grad]
    opt, sched = build_optimizer(params, tcfg.optim, steps)
    objective = ContrastiveObjective(tcfg, 8, seed=5)
    model.train()
    norms = []
    for batch in itertools.islice(stream, steps):
        model.zero_grad(set_to_none=True)
        loss, _ = objective.step(model, batch)
        if loss.requires_grad:  # GradCache has back-propagated already
            loss.backward()
        if distributed.dp_size() > 1:
            sum_gradients(model.parameters(), distributed.dp_group())
        norms.append(float(clip_gradients_globally(params, CLIP)))
        opt.step()
        sched.step()
    return norms


def start_weights(tokenizer_file):
    """Full-layout weights of a tiny model whose LoRA B are non-zero (so every factor trains)."""
    from nemo_nvembed.models.network import NVEmbedNetwork

    full = NVEmbedNetwork(tiny_config(tokenizer_file)).full_state_dict()
    g = torch.Generator().manual_seed(11)
    for k in full:
        if k.endswith("lora_B"):
            full[k] = 0.05 * torch.randn(full[k].shape, generator=g)
    return full


def trainable_full(model) -> dict:
    from nemo_nvembed.parallel import tp_layout

    return {tp_layout.canonical(n): tp_layout.gather_tensor(n, p).cpu() for n, p in model.named_parameters()
            if p.requires_grad}


def _clip_check(model, grads_full):
    """Set the full-layout gradients (this rank's shard), clip globally; return norm and full grads."""
    from nemo_nvembed.parallel import distributed, tp_layout
    from nemo_nvembed.training.strategy import clip_gradients_globally

    for n, p in model.named_parameters():
        if p.requires_grad:
            dim, chunks = tp_layout.layout(n, p)
            p.grad = tp_layout.shard(grads_full[tp_layout.canonical(n)], dim, chunks, distributed.tp_rank(),
                                     distributed.tp_size()).clone().to(p.device)
    norm = clip_gradients_globally([p for p in model.parameters() if p.requires_grad], 1.0)
    return float(norm), tp_layout.full_grads(model)


def _guard_check(model, step):
    """Inject mismatches into one rank's copy and collect every rank's guard error (None: passed)."""
    from nemo_nvembed.parallel import distributed
    from nemo_nvembed.training.replica_guard import ReplicaMismatchError, check_replicas

    def run():
        try:
            check_replicas(model.named_parameters(), step, distributed.tp_group(), distributed.dp_group())
        except ReplicaMismatchError as e:
            return str(e)
        return None

    import torch.distributed as dist

    out = {"clean": run()}
    rep = next(p for n, p in model.named_parameters() if p.requires_grad and n.endswith("latents"))
    split = next(p for n, p in model.named_parameters() if p.requires_grad and getattr(p, "tensor_model_parallel", False))
    for name, p in (("replicated", rep), ("split", split)):
        saved = p.detach().clone()
        if dist.get_rank() == dist.get_world_size() - 1:
            with torch.no_grad():
                p.view(-1)[0] += 1e-7
        out[name] = run()
        with torch.no_grad():
            p.copy_(saved)
    return out


def _layout_worker(rank, world, layouts, tokenizer_file, full, data, grads_full, device="cpu"):
    """Every layout of ``layouts`` on this world, one after the other (one spawn, one import)."""
    from megatron.core import parallel_state as ps

    from nemo_nvembed.models.network import NVEmbedNetwork
    from nemo_nvembed.parallel import distributed

    results = {}
    for name in layouts:
        tp = LAYOUTS[name][0]
        if ps.model_parallel_is_initialized():
            ps.destroy_model_parallel()
        distributed.initialize(tp)
        if device == "cuda":
            torch.cuda.set_device(rank)
        model = NVEmbedNetwork(tiny_config(tokenizer_file)).to(device)
        out = {"tp_rank": distributed.tp_rank(), "dp_rank": distributed.dp_rank()}
        model.load_full_state_dict(full)
        out["clip"] = _clip_check(model, grads_full)
        for gc in (False, True):
            model.load_full_state_dict(full)
            norms = train(model, data, gc)
            out[gc] = {"norms": norms, "full": trainable_full(model),
                       "local": {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}}
        out["guard"] = _guard_check(model, STEPS)
        results[name] = out
    return results


@pytest.fixture(scope="module")
def matrix(tokenizer_file, tmp_path_factory):
    """One-process reference (both GradCache settings) and each layout's per-rank results."""
    from nemo_nvembed.models.network import NVEmbedNetwork
    from nemo_nvembed.parallel import distributed

    distributed.initialize(1)
    data = tmp_path_factory.mktemp("matrix") / "train.jsonl"
    write_examples(data, n=40)
    full = start_weights(tokenizer_file)
    g = torch.Generator().manual_seed(5)
    model = NVEmbedNetwork(tiny_config(tokenizer_file))
    grads_full = {k: torch.randn(v.shape, generator=g) for k, v in trainable_full(model).items()}
    import time

    t0 = time.perf_counter()
    ref = {}
    for gc in (False, True):
        model.load_full_state_dict(full)
        norms = train(model, data, gc)
        ref[gc] = {"norms": norms, "full": trainable_full(model)}
    print(f"\n[matrix] one-process reference: {time.perf_counter() - t0:.1f}s")
    runs = {}
    for world in sorted({w for _, w in LAYOUTS.values()}):
        names = [n for n, (_, w) in LAYOUTS.items() if w == world]
        t0 = time.perf_counter()
        per_rank = run_distributed(_layout_worker, world, names, tokenizer_file, full, data, grads_full, timeout_s=600)
        runs.update({n: [r[n] for r in per_rank] for n in names})
        print(f"[matrix] {'+'.join(names)} ({world} processes): {time.perf_counter() - t0:.1f}s")
    return {"ref": ref, "runs": runs, "grads": grads_full, "start": full, "data": data}


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_clipping_really_clips_and_trains(matrix):
    ref = matrix["ref"]
    for gc in (False, True):
        assert min(ref[gc]["norms"]) > 5 * CLIP, ref[gc]["norms"]  # every step is clipped
        assert max_diff(ref[gc]["full"], {k: matrix["start"][k] for k in ref[gc]["full"]}) > 1e-3  # it trained
    torch.testing.assert_close(ref[True]["norms"], ref[False]["norms"], rtol=1e-4, atol=0)


def test_global_norm_clipping_equals_torch_clip_on_the_full_model(matrix, tokenizer_file):
    from nemo_nvembed.models.network import NVEmbedNetwork

    model = NVEmbedNetwork(tiny_config(tokenizer_file))
    params = dict(model.named_parameters())
    for k, gr in matrix["grads"].items():
        params[k].grad = gr.clone()
    want_norm = float(torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0))
    want = {k: params[k].grad for k in matrix["grads"]}
    assert want_norm > 10  # clips
    for name, per_rank in matrix["runs"].items():
        for r in per_rank:
            norm, grads = r["clip"]
            assert norm == pytest.approx(want_norm, rel=1e-5), name
            for k in want:
                torch.testing.assert_close(grads[k], want[k], rtol=1e-5, atol=1e-8, msg=lambda m: f"{name} {k}: {m}")


@pytest.mark.parametrize("grad_cache", [False, True], ids=["plain", "gradcache"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_training_equals_one_process(matrix, layout, grad_cache):
    ref = matrix["ref"][grad_cache]
    per_rank = matrix["runs"][layout]
    diff = max(max_diff(r[grad_cache]["full"], ref["full"]) for r in per_rank)
    print(f"\n[matrix] {layout} {'gradcache' if grad_cache else 'plain'}: max |w - w_ref| = {diff:.3e} "
          f"after {STEPS} steps (pre-clip norms {min(ref['norms']):.3g}..{max(ref['norms']):.3g}, clip {CLIP})")
    assert diff <= WEIGHT_ATOL
    for r in per_rank:
        torch.testing.assert_close(torch.tensor(r[grad_cache]["norms"]), torch.tensor(ref["norms"]), rtol=1e-4, atol=0)
    # Replicas are bit-identical: DP replicas hold the same shard; TP-replicated parameters agree.
    first = {}
    for r in per_rank:
        for n, t in r[grad_cache]["local"].items():
            key = (n, r["tp_rank"]) if n in split_names(per_rank, grad_cache) else n
            if key in first:
                assert torch.equal(t, first[key]), f"{layout}: replica of {n} differs (tp {r['tp_rank']}, dp {r['dp_rank']})"
            else:
                first[key] = t


def split_names(per_rank, grad_cache) -> set:
    """Names whose local shapes differ from the full layout (TP-split) on this layout."""
    r = per_rank[0]
    return {n for n, t in r[grad_cache]["local"].items()
            if n in r[grad_cache]["full"] and t.shape != r[grad_cache]["full"][n].shape}


def test_replica_guard_names_the_parameter_and_step(matrix):
    for name, per_rank in matrix["runs"].items():
        tp, world = LAYOUTS[name]
        assert all(r["guard"]["clean"] is None for r in per_rank), name
        last = per_rank[-1]  # the rank whose copy was changed
        msg = last["guard"]["replicated"]
        assert msg is not None and f"at step {STEPS}" in msg and "latents" in msg, (name, msg)
        assert ("tensor-parallel" if tp > 1 else "data-parallel") in msg, msg
        msg = last["guard"]["split"]  # a TP shard has no copy unless DP > 1
        if world // tp == 1:
            assert msg is None, msg
        else:
            assert msg is not None and f"at step {STEPS}" in msg and "differs between data-parallel ranks" in msg, msg


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (NCCL between devices); "
                    "the gloo matrix above covers the same arithmetic on CPU")
def test_nccl_training_on_two_gpus_equals_one_process(matrix, tokenizer_file):
    """TP=2 and DP=2 on two GPUs over NCCL against the CPU one-process reference (fp32; matmuls on
    GPU sum in another order, hence the looser tolerance)."""
    names = ["tp2_dp1", "tp1_dp2"]
    per_rank = run_distributed(_layout_worker, 2, names, tokenizer_file, matrix["start"], matrix["data"],
                               matrix["grads"], "cuda", backend="nccl", timeout_s=600)
    for name in names:
        for gc in (False, True):
            diff = max(max_diff(r[name][gc]["full"], matrix["ref"][gc]["full"]) for r in per_rank)
            print(f"\n[matrix, 2 GPUs] {name} {'gradcache' if gc else 'plain'}: max |w - w_ref| = {diff:.3e}")
            assert diff <= 1e-4
            a, b = (r[name][gc]["local"] for r in per_rank)
            for n in a:
                if name == "tp1_dp2" or a[n].shape == matrix["ref"][gc]["full"].get(n, a[n]).shape:
                    assert torch.equal(a[n], b[n]), f"{name}: replica of {n} differs"
