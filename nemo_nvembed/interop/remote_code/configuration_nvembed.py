"""Configuration of an NV-Embed model exported by nemo_nvembed (``python -m nemo_nvembed.export hf``).

Keeps NV-Embed-v2's interface: ``NVEmbedConfig`` (``model_type: nvembed``) holds
``latent_attention_config`` (``LatentAttentionConfig``) and ``text_config`` (the backbone), plus the
text-handling fields of the release (``padding_side``, ``is_mask_instruction``, ``add_eos``,
``mask_type``) and ours (``pool_span``, ``query_template``, ``max_length``).

``text_config.model_type`` names the attention: ``bidir_mistral`` / ``bidir_llama`` are
bidirectional (NV-Embed), ``mistral`` / ``llama`` causal. ``bidir_mistral`` is the release's own
name. The release knows no Llama backbone; ``bidir_llama`` is our name for it, chosen so that the
released code fails on it (unknown model type) instead of silently building a causal model.

Written for the transformers versions nemo_nvembed installs (>= 4.56, 5.x).
"""
from transformers import AutoConfig, LlamaConfig, MistralConfig, PretrainedConfig


class LatentAttentionConfig(PretrainedConfig):
    """The latent-attention pooling head (NV-Embed paper section 3.2)."""

    model_type = "latent_attention"

    def __init__(self, num_latents_value=512, num_cross_heads=8, output_normalize=True, hidden_dim=4096,
                 latent_dim=4096, cross_dim_head=4096, ff_mult=4, **kwargs):
        self.num_latents_value = num_latents_value
        self.num_cross_heads = num_cross_heads
        self.output_normalize = output_normalize
        self.hidden_dim = hidden_dim
        self.latent_dim = latent_dim
        self.cross_dim_head = cross_dim_head
        self.ff_mult = ff_mult  # GEGLU MLP: d -> 2*ff_mult*d -> ff_mult*d -> d (the release: 4)
        super().__init__(**kwargs)


class BidirectionalMistralConfig(MistralConfig):
    model_type = "bidir_mistral"


class BidirectionalLlamaConfig(LlamaConfig):
    model_type = "bidir_llama"


TEXT_CONFIGS = {
    "bidir_mistral": BidirectionalMistralConfig,
    "bidir_llama": BidirectionalLlamaConfig,
    "mistral": MistralConfig,
    "llama": LlamaConfig,
}
POOL_SPANS = ("exact", "nvembed_v2")


def _text_config(value):
    if value is None or isinstance(value, PretrainedConfig):
        return value
    value = dict(value)
    model_type = value.pop("model_type", None)
    if model_type not in TEXT_CONFIGS:
        raise ValueError(f"text_config.model_type {model_type!r} is not one of {sorted(TEXT_CONFIGS)}")
    return TEXT_CONFIGS[model_type](**value)


class NVEmbedConfig(PretrainedConfig):
    model_type = "nvembed"
    sub_configs = {"latent_attention_config": LatentAttentionConfig, "text_config": AutoConfig}

    def __init__(self, latent_attention_config=None, text_config=None, padding_side="right", add_pad_token=True,
                 is_mask_instruction=True, add_eos=True, mask_type="b", pool_span="nvembed_v2",
                 query_template="Instruct: {instruction}\nQuery: ", max_length=4096, **kwargs):
        # Defaults are the released NV-Embed-v2 client's behaviour; our exports write every field.
        if isinstance(latent_attention_config, dict):
            latent_attention_config = LatentAttentionConfig(**latent_attention_config)
        self.latent_attention_config = latent_attention_config
        self.text_config = _text_config(text_config)
        self.padding_side = padding_side
        self.add_pad_token = add_pad_token
        self.is_mask_instruction = is_mask_instruction
        self.add_eos = add_eos
        self.mask_type = mask_type  # "b": bidirectional, "c": causal (follows text_config.model_type)
        if pool_span not in POOL_SPANS:
            raise ValueError(f"pool_span {pool_span!r} is not one of {POOL_SPANS}")
        self.pool_span = pool_span
        self.query_template = query_template
        self.max_length = max_length
        super().__init__(**kwargs)
