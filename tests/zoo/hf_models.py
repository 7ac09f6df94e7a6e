"""HF transformers models from tiny configs (no downloads): 2 layers, 4 heads, hidden 32-64.

``build(name)`` returns the model (eval mode, random weights), its example inputs (a tuple of
positional arguments) and ``Heads``: where its attention layers are and how many heads they have,
so a test can check that pruned heads really leave the q/k/v/o weights.
Names end in ``:eager`` or ``:sdpa``, the attention implementation the config asks for.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

VOCAB, SEQ, BATCH = 96, 8, 2
HIDDEN, HEADS, LAYERS, FFN = 32, 4, 2, 64


@dataclass(frozen=True)
class Heads:
    """The attention layers of a model: each ``layer`` pattern (``{}`` = layer index) names a
    module holding linear layers ``q``, ``k``, ``v``, ``o`` (attribute paths); ``fused``: q, k and v
    are one layer ``q`` of width ``(heads + 2 * kv_heads) * head_dim``."""

    layer: str
    q: str
    k: str
    v: str
    o: str
    heads: int | tuple[int, ...]     # a tuple: per layer
    kv_heads: int | tuple[int, ...]
    head_dim: int
    layers: int = LAYERS
    fused: bool = False
    conv1d: bool = False  # HF Conv1D weights are (in, out)

    def count(self, i: int, kv: bool = False) -> int:
        """Heads (``kv``: key/value heads) of layer ``i``."""
        n = self.kv_heads if kv else self.heads
        return n if isinstance(n, int) else n[i]


@dataclass(frozen=True)
class Spec:
    build: Callable[[str], nn.Module]
    inputs: Callable[[], tuple]
    heads: Heads | None   # None: no attention


def _ids() -> tuple:
    return (torch.randint(1, VOCAB, (BATCH, SEQ)),)


def _pixels(size: int = 32, channels: int = 3) -> Callable[[], tuple]:
    return lambda: (torch.randn(BATCH, channels, size, size),)


def _bert_like(cls_name: str, config_name: str, **extra) -> Callable[[str], nn.Module]:
    def build(attn: str) -> nn.Module:
        import transformers as T
        cfg = getattr(T, config_name)(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                      num_attention_heads=HEADS, intermediate_size=FFN,
                                      max_position_embeddings=64, attn_implementation=attn, **extra)
        return getattr(T, cls_name)(cfg)
    return build


def _decoder(cls_name: str, config_name: str, kv_heads: int, **extra) -> Callable[[str], nn.Module]:
    def build(attn: str) -> nn.Module:
        import transformers as T
        cfg = getattr(T, config_name)(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                      num_attention_heads=HEADS, num_key_value_heads=kv_heads,
                                      intermediate_size=FFN, max_position_embeddings=64,
                                      use_cache=False, attn_implementation=attn, **extra)
        return getattr(T, cls_name)(cfg)
    return build


def _gpt2(attn: str) -> nn.Module:
    import transformers as T
    cfg = T.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=64,
                       n_inner=FFN, bos_token_id=0, eos_token_id=0, use_cache=False,
                       attn_implementation=attn)
    return T.GPT2Model(cfg)


def _opt(attn: str) -> nn.Module:
    import transformers as T
    cfg = T.OPTConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                      num_attention_heads=HEADS, ffn_dim=FFN, word_embed_proj_dim=HIDDEN,
                      max_position_embeddings=64, use_cache=False, attn_implementation=attn)
    return T.OPTModel(cfg)


def _distilbert(attn: str) -> nn.Module:
    import transformers as T
    cfg = T.DistilBertConfig(vocab_size=VOCAB, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS,
                             hidden_dim=FFN, max_position_embeddings=64, attn_implementation=attn)
    return T.DistilBertModel(cfg)


def _t5_encoder(attn: str) -> nn.Module:
    import transformers as T
    cfg = T.T5Config(vocab_size=VOCAB, d_model=HIDDEN, d_kv=HIDDEN // HEADS, d_ff=FFN,
                     num_layers=LAYERS, num_heads=HEADS, use_cache=False, attn_implementation=attn)
    return T.T5EncoderModel(cfg)


def _vit(attn: str) -> nn.Module:
    import transformers as T
    cfg = T.ViTConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                      intermediate_size=FFN, image_size=32, patch_size=8, attn_implementation=attn)
    return T.ViTModel(cfg)


def _clip_vision(attn: str) -> nn.Module:
    import transformers as T
    cfg = T.CLIPVisionConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                             intermediate_size=FFN, image_size=32, patch_size=8,
                             attn_implementation=attn)
    return T.CLIPVisionModel(cfg)


def _whisper_encoder(attn: str) -> nn.Module:
    import transformers as T
    cfg = T.WhisperConfig(vocab_size=VOCAB, d_model=HIDDEN, encoder_layers=LAYERS,
                          encoder_attention_heads=HEADS, decoder_layers=1, decoder_attention_heads=HEADS,
                          encoder_ffn_dim=FFN, decoder_ffn_dim=FFN, num_mel_bins=16,
                          max_source_positions=8, max_target_positions=16, pad_token_id=0,
                          bos_token_id=0, eos_token_id=0, decoder_start_token_id=1, use_cache=False,
                          begin_suppress_tokens=None, suppress_tokens=None, attn_implementation=attn)
    return T.WhisperModel(cfg).get_encoder()


def _swin(attn: str) -> nn.Module:
    import transformers as T
    cfg = T.SwinConfig(image_size=32, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4,
                       mlp_ratio=2.0, attn_implementation=attn)
    return T.SwinModel(cfg)


def _convnext(attn: str) -> nn.Module:
    import transformers as T
    cfg = T.ConvNextConfig(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, patch_size=2, image_size=32,
                           layer_scale_init_value=0.5)
    return T.ConvNextModel(cfg)


HD = HIDDEN // HEADS
_BERT_HEADS = Heads("encoder.layer.{}.attention", "self.query", "self.key", "self.value", "output.dense",
                    HEADS, HEADS, HD)
_LLAMA_HEADS = Heads("layers.{}.self_attn", "q_proj", "k_proj", "v_proj", "o_proj", HEADS, 2, HD)
_BART_HEADS = Heads("layers.{}.self_attn", "q_proj", "k_proj", "v_proj", "out_proj", HEADS, HEADS, HD)

SPECS: dict[str, Spec] = {
    "bert": Spec(_bert_like("BertModel", "BertConfig"), _ids, _BERT_HEADS),
    "roberta": Spec(_bert_like("RobertaModel", "RobertaConfig", pad_token_id=0), _ids, _BERT_HEADS),
    "distilbert": Spec(_distilbert, _ids, Heads("transformer.layer.{}.attention", "q_lin", "k_lin",
                                                  "v_lin", "out_lin", HEADS, HEADS, HD)),
    "gpt2": Spec(_gpt2, _ids, Heads("h.{}.attn", "c_attn", "c_attn", "c_attn", "c_proj", HEADS, HEADS, HD,
                                     fused=True, conv1d=True)),
    "llama": Spec(_decoder("LlamaModel", "LlamaConfig", kv_heads=2), _ids, _LLAMA_HEADS),
    "mistral": Spec(_decoder("MistralModel", "MistralConfig", kv_heads=2), _ids, _LLAMA_HEADS),
    "qwen2": Spec(_decoder("Qwen2Model", "Qwen2Config", kv_heads=2), _ids, _LLAMA_HEADS),
    "opt": Spec(_opt, _ids, Heads("decoder.layers.{}.self_attn", "q_proj", "k_proj", "v_proj", "out_proj",
                                  HEADS, HEADS, HD)),
    "t5_encoder": Spec(_t5_encoder, _ids, Heads("encoder.block.{}.layer.0.SelfAttention", "q", "k", "v",
                                                  "o", HEADS, HEADS, HD)),
    "vit": Spec(_vit, _pixels(), Heads("layers.{}.attention", "q_proj", "k_proj", "v_proj", "o_proj",
                                       HEADS, HEADS, HD)),
    "clip_vision": Spec(_clip_vision, _pixels(), Heads("encoder.layers.{}.self_attn", "q_proj",
                                                        "k_proj", "v_proj", "out_proj", HEADS, HEADS, HD)),
    "swin": Spec(_swin, _pixels(), Heads("encoder.layers.{}.blocks.0.attention", "q_proj", "k_proj", "v_proj",
                                         "o_proj", (2, 4), (2, 4), 8)),
    "convnext": Spec(_convnext, _pixels(), None),
    "whisper_encoder": Spec(_whisper_encoder, lambda: (torch.randn(BATCH, 16, 16),), _BART_HEADS),
}

# (family, attention implementation) pairs the zoo runs.
CASES = [f"{family}:eager" for family in SPECS] + ["bert:sdpa", "llama:sdpa", "gpt2:sdpa", "vit:sdpa"]


def build(name: str) -> tuple[nn.Module, tuple, Heads]:
    family, attn = name.split(":")
    spec = SPECS[family]
    torch.manual_seed(0)
    model = spec.build(attn).eval()
    return model, spec.inputs(), spec.heads

# Attention otofx cannot prove head-separable: the heads stay (pinned, with this reason in the
# analysis) and everything else still shrinks exactly. Swin's relative position bias is a gather
# (aten.index.Tensor) of a (cells, heads) parameter that carries no head channel.
PINNED_HEADS: dict[str, str] = {
    "swin:eager": "joined with data that carries no channel",
}


class Headed(nn.Module):
    """A base model with a linear head on its last hidden state: the hidden size then reaches no
    graph output, so it can shrink (a base model's own output is its hidden states)."""

    def __init__(self, model: nn.Module, classes: int = 3):
        super().__init__()
        self.model = model
        self.head = nn.Linear(HIDDEN, classes)

    def forward(self, *inputs):
        return self.head(self.model(*inputs).last_hidden_state)


def _lm(cls_name: str, build: Callable[[str], nn.Module]) -> Callable[[str], nn.Module]:
    """The language model of a family, its output layer tied to the token embedding."""
    def make(attn: str) -> nn.Module:
        import transformers as T
        cfg = build(attn).config
        cfg.tie_word_embeddings = True
        return getattr(T, cls_name)(cfg)
    return make


LMS: dict[str, Callable[[str], nn.Module]] = {
    "gpt2_lm": _lm("GPT2LMHeadModel", _gpt2),
    "llama_lm": _lm("LlamaForCausalLM", _decoder("LlamaModel", "LlamaConfig", kv_heads=2)),
    "opt_lm": _lm("OPTForCausalLM", _opt),
}


def build_hidden(name: str) -> tuple[nn.Module, tuple]:
    """``name`` (``family:attn``) with a head on its hidden states, or one of ``LMS``."""
    family, attn = name.split(":")
    torch.manual_seed(0)
    if family in LMS:
        return LMS[family](attn).eval(), _ids()
    spec = SPECS[family]
    return Headed(spec.build(attn)).eval(), spec.inputs()


# Residual streams otofx keeps, and why: Whisper adds frozen sinusoidal position embeddings (training
# cannot zero their columns); Swin's windows pad the stream.
PINNED_HIDDEN: dict[str, str] = {
    "whisper_encoder:eager": "is frozen",
    "swin:eager": "pad",
}
