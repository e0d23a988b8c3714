"""Tiny random-weight models built offline, for tests and CI (no hub, no downloads).

A byte-level BPE tokenizer is trained in memory on a fixed corpus, so ids are stable across runs.
Weights use a large init range so logits are peaked: greedy argmax then has no near-ties that
float noise from padding could flip.
"""
from __future__ import annotations

from pathlib import Path

CORPUS = [
    "Shakespeare was a playwright and poet from England.",
    "My dog really wanted to eat icecream because it was hot.",
    "I skip across the street and the park every morning.",
    "Once upon a time there was a small cat who lived in a house.",
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "The animal didn't cross the street because it was too tired.",
    "No, I am your father. Search your feelings, you know it to be true.",
    "This game is great fun and I loved every level. Terrible controls, I hated it.",
] * 20

EOS = "<|endoftext|>"


def make_tokenizer(path: Path, vocab_size: int = 400):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=vocab_size, min_frequency=1, special_tokens=[EOS])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=EOS, pad_token=EOS,
                                  bos_token=EOS, unk_token=EOS)
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    tok.save_pretrained(path)
    return tok


def make_tiny_llama(path: Path, seed: int = 0, init_range: float = 0.5, **config) -> Path:
    """A 2-layer Llama with grouped-query attention (4 query heads, 2 KV heads); ~0.2 MB. `config` overrides
    any LlamaConfig field (sizes included)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(path)
    cfg = LlamaConfig(**{"vocab_size": len(tok), "hidden_size": 64, "intermediate_size": 128,
                         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                         "max_position_embeddings": 256, "initializer_range": init_range,
                         "eos_token_id": tok.eos_token_id, "bos_token_id": tok.bos_token_id,
                         "pad_token_id": tok.pad_token_id, "tie_word_embeddings": False, **config})
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path)
    return path


def perturb(src: Path, dst: Path, scale: float = 0.05, seed: int = 1) -> Path:
    """A copy of a model with noise added to every weight (a "regressed" checkpoint)."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    shutil.copytree(src, dst, dirs_exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(src)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * p.std())
    model.save_pretrained(dst)
    return dst


# Causal LMs with their own attention, position, cache and final-norm code: ALiBi (BLOOM), learned positions
# (OPT, GPT-2), rotary variants (GPT-NeoX, Falcon, Phi, Qwen2, Gemma); final norms under other names (ln_f,
# final_layer_norm, final_layernorm, decoder.final_layer_norm) or Gemma's 1 + weight. Random weights, two layers.
ARCHITECTURES = {
    "bloom": ("BloomConfig", "BloomForCausalLM", dict(hidden_size=32, n_layer=2, n_head=2)),
    "opt": ("OPTConfig", "OPTForCausalLM", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                 ffn_dim=64, word_embed_proj_dim=32, max_position_embeddings=128)),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(hidden_size=32, num_hidden_layers=2,
                                                              num_attention_heads=2, intermediate_size=64)),
    "falcon": ("FalconConfig", "FalconForCausalLM", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2)),
    "phi": ("PhiConfig", "PhiForCausalLM", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                 intermediate_size=64)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                       num_key_value_heads=1, intermediate_size=64)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                       num_key_value_heads=1, intermediate_size=64, head_dim=16)),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=32, n_layer=2, n_head=2, n_positions=128)),
}


def tiny_causal_lm(arch: str, vocab_size: int, **overrides):
    """A random `ARCHITECTURES[arch]` model (seeded, large init range, eval mode); `overrides` go to its config."""
    import torch
    import transformers

    config_class, model_class, kwargs = ARCHITECTURES[arch]
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(vocab_size=vocab_size, initializer_range=0.5, **kwargs, **overrides)
    return getattr(transformers, model_class)(config).eval()
