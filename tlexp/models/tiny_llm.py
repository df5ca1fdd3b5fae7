"""A tiny, randomly initialised decoder LLM (Llama architecture) saved as a Hugging Face folder.

Nothing can be downloaded here, yet the decoder-LLM path (``backbone.encoder.name_or_path=<a causal
LM>``, ``pooling=last``, LoRA on ``q_proj``/``v_proj``, a tokenizer without a padding token) must
run end to end. This builds what a real checkpoint folder holds — ``config.json``, safetensors
weights of ``LlamaForCausalLM`` and a byte-level BPE tokenizer trained on the given texts with
Llama's special tokens and no pad token — so that every loading, tokenising and pooling line is
the one a real Llama/Qwen/Mistral goes through. Its vectors mean nothing: it checks plumbing, not
quality (``scripts/make_tiny_llm.py`` writes one for a smoke run).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def save_tiny_causal_lm(path: str | Path, texts: Iterable[str], seed: int = 0, hidden: int = 32, layers: int = 2,
                        heads: int = 4, kv_heads: int = 2, vocab_size: int = 512) -> Path:
    """Write a random ``LlamaForCausalLM`` (``layers`` x ``hidden``) and a BPE tokenizer trained on
    ``texts`` to ``path``; returns ``path``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    special = ["<unk>", "<s>", "</s>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(list(texts), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                        model_max_length=128)  # no pad token, as Llama's own tokenizer
    tokenizer.save_pretrained(path)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=128, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=None, tie_word_embeddings=True)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
    return path
