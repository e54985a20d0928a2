"""``python -m nemo_nvembed.convert from-hf SRC --out model.nemo [--tp N] [overrides]``

SRC is a Hugging Face folder (config.json + safetensors + tokenizer), a GGUF file, or
``smollm2`` (the packaged SmolLM2-135M-Instruct). The backbone section of the model config comes
from SRC; pooling, LoRA, attention and text handling come from ``--model-config`` (default:
``smollm2_135m`` for ``smollm2``, ``mistral_7b`` otherwise) plus Hydra-style overrides such as
``model.pooling.type=mean model.attention=causal``. The pooling head and LoRA start freshly
initialised.

SRC may also be a folder in NV-Embed-v2's layout (a released NV-Embed-v2 checkpoint, or what
``python -m nemo_nvembed.export hf`` writes): ``config.json`` with ``text_config`` (the backbone)
and ``latent_attention_config`` (the head). Then the backbone AND the head weights are loaded, the
pooling section comes from ``latent_attention_config`` (latent attention; ``num_latents``,
``num_heads``, ``dim_head``, ``normalize``; ``ff_mult`` from the weights), and only LoRA starts
fresh (B = 0, so the imported model computes exactly what the checkpoint does). Our exporter's
extra fields (``pooling`` for mean/eos exports, ``attention``, ``query_template``, ``max_length``)
are honoured when present; overrides still apply last.

The ``.nemo`` stores weights in the TP=1 layout and restores under any TP size;
``--tp N`` checks that the model can run with N tensor-parallel ranks (and builds it sharded when
started with N processes under torchrun or srun).
"""
from __future__ import annotations

import argparse
import sys

from nemo_nvembed.checks import path_checks as checks
from nemo_nvembed.checks.errors import exit_on_user_error


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m nemo_nvembed.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("from-hf", help="import Hugging Face Mistral/Llama weights into a .nemo")
    f.add_argument("src", help="HF folder (plain Mistral/Llama or NV-Embed-v2 layout), .gguf file, or 'smollm2'")
    f.add_argument("--out", required=True, help="output .nemo path")
    f.add_argument("--tp", type=int, default=1, help="tensor-parallel size to validate/build for")
    f.add_argument("--model-config", default=None, help="conf/model name or YAML path for the non-backbone sections")
    f.epilog = "Any further key=value arguments are Hydra-style overrides, e.g. model.pooling.type=mean"
    args, extra = p.parse_known_args(argv)
    bad = [x for x in extra if x.startswith("-") or "=" not in x]
    if bad:
        p.error(f"unrecognized arguments: {' '.join(bad)}")
    args.overrides = extra
    checks.positive("--tp", args.tp)
    checks.output_file(args.out, "--out")
    if args.cmd == "from-hf":
        from nemo_nvembed.interop.from_hf import from_hf

        from_hf(args.src, args.out, args.tp, args.model_config, args.overrides)


if __name__ == "__main__":
    sys.exit(main())
