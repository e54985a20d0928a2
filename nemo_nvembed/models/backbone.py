"""The decoder backbone: megatron-core ``GPTModel`` as a bidirectional (or causal) encoder.

Mistral and Llama are the same megatron layer (RMSNorm, SwiGLU, RoPE, GQA, no biases); the
bidirectional model of NV-Embed (paper section 3.1) is a spec change: the self-attention's
``attn_mask_type`` becomes ``padding`` and the mask we pass holds only the padding keys, instead
of megatron's default causal mask. The LM head is never built: ``forward`` returns the final
normed hidden states.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt import gpt_layer_specs
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.transformer_config import TransformerConfig

from nemo_nvembed.parallel import cpu_compat
from nemo_nvembed.models.sdpa_attention import SDPACoreAttention


def use_transformer_engine(lora_cfg=None) -> bool:
    """TE layer specs when TE imports and CUDA is present; megatron's local specs otherwise.

    TE fuses the pre-norms into ``linear_qkv``/``linear_fc1``, so a LoRA adapter on those would see
    the un-normalised input: with LoRA on them, the local spec (with fused SDPA) is used instead.
    """
    if not cpu_compat.cuda_available():
        return False
    if lora_cfg is not None and lora_cfg.enabled and {"linear_qkv", "linear_fc1"} & set(lora_cfg.target_modules):
        return False
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return False
    return True


def transformer_config(backbone_cfg, tp: int, recompute=None, dtype: torch.dtype = torch.float32,
                       sequence_parallel: bool = False) -> TransformerConfig:
    """Megatron config for a Mistral/Llama backbone. Fusions only where their kernels exist."""
    on_gpu = cpu_compat.cuda_available()
    b = backbone_cfg
    granularity = recompute.granularity if recompute is not None else None
    return TransformerConfig(
        num_layers=b.num_layers,
        hidden_size=b.hidden_size,
        num_attention_heads=b.num_attention_heads,
        num_query_groups=b.num_query_groups,
        ffn_hidden_size=b.ffn_hidden_size,
        kv_channels=b.hidden_size // b.num_attention_heads,
        normalization="RMSNorm",
        layernorm_epsilon=b.norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=b.init_std,
        tensor_model_parallel_size=tp,
        sequence_parallel=sequence_parallel and on_gpu and tp > 1,  # model.sequence_parallel: off until run on GPUs
        params_dtype=dtype,
        use_cpu_initialization=not on_gpu,
        perform_initialization=True,
        bf16=False,
        bias_activation_fusion=on_gpu,
        bias_dropout_fusion=on_gpu,
        masked_softmax_fusion=on_gpu,
        persist_layer_norm=False,  # apex's persistent kernel is LayerNorm-only; megatron's torch RMSNorm asserts it off
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        recompute_granularity=granularity,
        recompute_method=recompute.method if granularity == "full" else None,
        recompute_num_layers=recompute.num_layers if granularity == "full" else None,
    )


def layer_spec(attention: str, te: bool):
    """Transformer layer spec with the attention mask type of ``attention`` (paper Table 3)."""
    if te:
        spec = gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec()
        mask_type = AttnMaskType.padding if attention == "bidirectional" else AttnMaskType.padding_causal
    else:
        spec = gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm")
        mask_type = AttnMaskType.padding
    spec = copy.deepcopy(spec)
    if not te:
        # Fused SDPA instead of megatron's unfused local kernel; both variants pass an explicit
        # mask (see ``attention_mask``) and use the padding type.
        spec.submodules.self_attention.submodules.core_attention = SDPACoreAttention
    spec.submodules.self_attention.params = {"attn_mask_type": mask_type}
    return spec


class GPTEncoder(GPTModel):
    """``GPTModel`` that stops after the final norm. Built with tied output weights so that no
    LM-head matrix is allocated; ``_postprocess`` returns the hidden states."""

    def _postprocess(self, hidden_states, **kwargs):  # noqa: D401
        return hidden_states  # [s, b, h] (sequence-parallel shard when SP is on)


def build_backbone(backbone_cfg, attention: str, tp: int, recompute=None, lora_cfg=None,
                   sequence_parallel: bool = False) -> GPTEncoder:
    config = transformer_config(backbone_cfg, tp, recompute, sequence_parallel=sequence_parallel)
    te = use_transformer_engine(lora_cfg)
    model = GPTEncoder(
        config=config,
        transformer_layer_spec=layer_spec(attention, te),
        vocab_size=backbone_cfg.vocab_size,
        max_sequence_length=backbone_cfg.max_position_embeddings,
        pre_process=True,
        post_process=True,
        share_embeddings_and_output_weights=True,  # no LM-head weight is allocated
        position_embedding_type="rope",
        rotary_base=int(backbone_cfg.rope_theta),
    )
    model.uses_te = te
    for m in model.modules():
        if isinstance(m, SDPACoreAttention):  # packed sequences carry no mask: the kernel is told
            m.causal = attention == "causal"
    return model


def attention_mask(pad_mask: torch.Tensor, attention: str, te: bool = False) -> torch.Tensor:
    """Boolean mask for megatron attention, True where attention is NOT allowed.

    pad_mask: [b, s], 1 for real tokens. Bidirectional: every token sees every real token
    ([b, 1, 1, s]). Causal: additionally no token sees a later one ([b, 1, s, s]); with TE the
    kernel adds the causal part itself, so only the padding part is passed.
    """
    key_blocked = ~pad_mask.bool()[:, None, None, :]  # [b, 1, 1, s]
    if attention == "bidirectional" or te:
        return key_blocked
    s = pad_mask.shape[1]
    future = torch.ones(s, s, dtype=torch.bool, device=pad_mask.device).triu(1)  # [s, s]
    return key_blocked | future[None, None]  # [b, 1, s, s]
