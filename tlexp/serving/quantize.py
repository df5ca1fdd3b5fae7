"""Post-training int8 compression of a served model (``tlexp recommend ... quantize=int8``).

:func:`quantize_recommender` turns a finished run's :class:`~tlexp.models.recommender.Recommender`
into one that serves the same way — ``score_fn()``, ``user_vectors()``, ``device`` — so
:func:`tlexp.serving.recommend.recommend`, the evaluation plan and ``tlexp explain`` use it unchanged:

- every ``nn.Linear`` of the model (user/item MLP towers, the sequence Transformer's feed-forward
  layers, a trainable text encoder — LoRA adapters are merged into it first) becomes a *dynamically
  quantised* int8 Linear: int8 weights, activations quantised per call (``torch.ao``'s
  ``quantize_dynamic``, fbgemm/x86 kernels);
- the item side of the score — the biggest part of an ID model — is computed once (items do not
  depend on the user) and served as an int8 matrix with one scale per item (a per-channel dynamic
  int8 Linear ``d -> n_items``). The backbone's own score is kept: :meth:`Backbone.score_factors`
  splits it into a user part and an item part (dot product; cosine / temperature for the text
  backbones). Each user vector is scaled to unit length before the int8 product and the score
  scaled back, so a user's scores do not depend on which other users share the batch (the dynamic
  activation scale is per call) beyond rounding.

Recommenders that score in their own way (fusion's ensemble, item-item) keep their ``score_fn`` and
get only the int8 Linear layers. What was quantised is in ``model.quantization`` (a
:class:`QuantInfo`).

:func:`export_scorer` writes the quantised scorer of the known users as plain tensors (int8 item
matrix, per-item scales, the users' vectors) that :func:`load_scorer` reads back with
``torch.load(weights_only=True)`` — no code runs while loading (TorchScript, the other option, is
deprecated in torch 2.13 and executes code on load).

``torch.ao.quantization`` is deprecated in favour of ``torchao``; torchao 0.18 installs next to
torch 2.13 but its CPU int8 path ran ~13x *slower* than fp32 here (it targets GPUs/``torch.compile``),
so this module uses ``torch.ao`` and silences exactly its deprecation warnings (:func:`quiet_quantization`).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tlexp.core.errors import ConfigError
from tlexp.evaluation.kshot import Adapter
from tlexp.models.base import Backbone
from tlexp.models.mapping import MappedColdUsers
from tlexp.models.recommender import Recommender, ScoreFn

MODES = ("none", "int8")
EXPORT_FORMAT = "tlexp-int8-scorer/1"

# The warnings torch 2.13 gives for torch.ao's eager quantisation (module deprecated in favour of
# torchao; quantized-tensor constructors deprecated). Nothing else is silenced.
_DEPRECATIONS = (
    (DeprecationWarning, r"torch\.ao\.quantization is deprecated"),
    (UserWarning, r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized tensor creation"),
)


@contextmanager
def quiet_quantization() -> Iterator[None]:
    """Silence exactly torch.ao quantisation's deprecation warnings inside the block."""
    with warnings.catch_warnings():
        for category, message in _DEPRECATIONS:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def check_mode(mode: str | None) -> str:
    """``none`` or ``int8``; anything else is a one-line ConfigError."""
    m = "none" if mode is None else str(mode).strip().lower()
    if m not in MODES:
        raise ConfigError(f"quantize='{mode}' is unknown; use quantize=none (fp32, the default) or quantize=int8 "
                          "(dynamic int8 towers, text encoder and item matrix)")
    return m


@dataclass
class QuantInfo:
    """What :func:`quantize_recommender` made int8."""

    mode: str
    linears: list[str] = field(default_factory=list)   # names of the nn.Linear layers now int8
    item_matrix: tuple[int, int] | None = None         # (n_items, d) of the int8 item matrix; None: not used
    merged_lora: int = 0                                # LoRA-wrapped encoders merged before quantising
    note: str = ""

    def summary(self) -> str:
        parts = [f"{len(self.linears)} Linear layer(s) int8"]
        if self.item_matrix is not None:
            parts.append(f"item matrix {self.item_matrix[0]}x{self.item_matrix[1]} int8 (per-item scales)")
        if self.merged_lora:
            parts.append("LoRA merged")
        if self.note:
            parts.append(self.note)
        return "int8: " + ", ".join(parts)


def _dynamic_linear_types() -> tuple[type, ...]:
    import torch.ao.nn.quantized.dynamic as nnqd

    return (nnqd.Linear,)


def int8_linears(model: nn.Module) -> list[str]:
    """Names of the dynamically quantised int8 Linear modules in ``model``."""
    types = _dynamic_linear_types()
    return [n for n, m in model.named_modules() if isinstance(m, types)]


def _merge_lora(model: nn.Module) -> int:
    """Merge peft LoRA adapters into their base weights (in place): the base Linear layers then carry
    the whole weight and quantise like any other."""
    merged = 0
    for holder in list(model.modules()):
        inner = getattr(holder, "model", None)
        if inner is not None and hasattr(inner, "merge_and_unload") and hasattr(inner, "peft_config"):
            holder.model = inner.merge_and_unload()
            merged += 1
    return merged


def _quantize_linears(model: nn.Module) -> list[str]:
    """Every plain ``nn.Linear`` of ``model`` -> a dynamic int8 Linear, in place. Attention output
    projections (``NonDynamicallyQuantizableLinear``) stay fp32: their module type does not match."""
    names = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    if names:
        with quiet_quantization():
            torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
        for m in model.modules():
            if isinstance(m, nn.TransformerEncoderLayer):
                # its fused inference fast path reads linear1.weight as a tensor (an int8 Linear's is a
                # method); a registered hook is torch's documented way to make the layer take its Python path
                m.register_forward_pre_hook(_python_path)
    return names


def _python_path(module: nn.Module, args: Any) -> None:
    """A no-op pre-hook: its presence keeps nn.TransformerEncoderLayer off the fused fast path."""
    return None


def _int8_item_linear(items: torch.Tensor) -> nn.Module:
    """``Linear(d -> n_items)`` whose weight is ``items``, quantised int8 with one scale per item."""
    lin = nn.Linear(items.shape[1], items.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(items)
    holder = nn.Sequential(lin)
    with quiet_quantization():
        torch.ao.quantization.quantize_dynamic(
            holder, {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    return holder[0]


def _int8_linear_from(qweight: torch.Tensor, scales: torch.Tensor) -> nn.Module:
    """The int8 item Linear from plain tensors (int8 rows, fp32 per-row scales): :func:`load_scorer`."""
    import torch.ao.nn.quantized.dynamic as nnqd

    n, d = qweight.shape
    with quiet_quantization():
        lin = nnqd.Linear(d, n, bias_=False, dtype=torch.qint8)
        w = torch._make_per_channel_quantized_tensor(qweight, scales.double(), torch.zeros(n, dtype=torch.long), 0)
        lin.set_weight_bias(w, None)
    return lin


def _factorable(backbone: Backbone) -> bool:
    """Whether ``backbone.score`` is ``score_factors``' product (else its own score is kept)."""
    cls = type(backbone)
    return cls.score is Backbone.score or cls.score_factors is not Backbone.score_factors


def _scores_with_backbone(model: Recommender) -> bool:
    """Whether ``model.score_fn`` is ``backbone.score(user_vectors(users), backbone.item_repr())``."""
    return type(model).score_fn in (Recommender.score_fn, MappedColdUsers.score_fn)


class Int8ItemScorer(nn.Module):
    """User factors -> scores against an int8 item matrix (per-item scales), fp32 out."""

    def __init__(self, item_linear: nn.Module):
        super().__init__()
        self.items = item_linear

    def forward(self, user_factors: torch.Tensor) -> torch.Tensor:
        norm = user_factors.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return self.items((user_factors / norm).float()) * norm


class ItemTable(nn.Module):
    """A text item tower's output for every item, computed once (serving): ``forward(items)`` looks rows up.

    The computing tower is kept (``tower``), and its adaptor is reachable as ``adaptor`` (cold users'
    source-domain histories go through it)."""

    def __init__(self, tower: nn.Module, table: torch.Tensor):
        super().__init__()
        self.tower = tower
        self.register_buffer("table", table, persistent=False)

    @property
    def adaptor(self) -> nn.Module:
        return self.tower.adaptor

    def forward(self, items: torch.Tensor | None = None) -> torch.Tensor:
        return self.table if items is None else self.table[items]


class QuantizedRecommender(Recommender):
    """A recommender's int8 copy that scores through an int8 item matrix (see the module docstring)."""

    def __init__(self, inner: Recommender, info: QuantInfo):
        super().__init__(inner.backbone)
        self.inner = inner
        self.quantization = info
        with torch.no_grad():
            items = inner.backbone.item_repr().detach().float()
            tower = getattr(inner.backbone, "item_tower", None)
            if tower is not None and not isinstance(tower, ItemTable) and hasattr(tower, "text_vectors"):
                # text towers: sequences read item vectors too; compute them once, not per request
                inner.backbone.item_tower = ItemTable(tower, items)
            self.n_items = items.shape[0]
            _, item_factors = inner.backbone.score_factors(items[:1], items)
            self.scorer = Int8ItemScorer(_int8_item_linear(item_factors.contiguous()))
        info.item_matrix = (int(item_factors.shape[0]), int(item_factors.shape[1]))

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")  # quantised kernels are CPU kernels

    def eval_batch(self, users: torch.Tensor, split: str = "test") -> dict[str, Any]:
        return self.inner.eval_batch(users, split)

    def user_vectors(self, users: torch.Tensor, split: str = "test") -> torch.Tensor:
        return self.inner.user_vectors(users, split)

    def user_factors(self, users: torch.Tensor, split: str = "test") -> torch.Tensor:
        """The user side of the score (e.g. unit vector / temperature for cosine backbones)."""
        u = self.user_vectors(users, split)
        return self.backbone.score_factors(u, u[:1])[0]

    def score_fn(self, split: str = "test") -> ScoreFn:
        return lambda users: self.scorer(self.user_factors(users, split))

    def kshot_adapter(self, steps: int = 0, lr: float = 0.1) -> Adapter:
        return self.inner.kshot_adapter(steps, lr)


def quantize_recommender(model: Recommender, mode: str = "int8") -> Recommender:
    """A copy of ``model`` served in ``mode`` (``none``: ``model`` itself; ``int8``: see the module docstring).

    The input is not changed (fp32 and int8 can be compared side by side); the result is in eval mode
    on the CPU, its ``quantization`` attribute a :class:`QuantInfo`.
    """
    mode = check_mode(mode)
    if mode == "none":
        return model
    inner = copy.deepcopy(model).cpu().eval()
    merged = _merge_lora(inner)
    linears = _quantize_linears(inner)
    info = QuantInfo(mode, linears, merged_lora=merged)
    if _scores_with_backbone(inner) and _factorable(inner.backbone):
        out: Recommender = QuantizedRecommender(inner, info)
    else:
        info.note = f"{type(inner).__name__} scores its own way: its item side stays fp32"
        inner.quantization = info
        out = inner
    return out.eval()


def quantize_run(loaded: Any, mode: str = "int8") -> Any:
    """A :class:`tlexp.serving.recommend.LoadedRun` whose model is served in ``mode`` (a new one for int8)."""
    import dataclasses

    mode = check_mode(mode)
    return loaded if mode == "none" else dataclasses.replace(loaded, model=quantize_recommender(loaded.model, mode))


# ----- export -----
def export_scorer(model: Recommender, path: str | Path, split: str = "test", users: torch.Tensor | None = None,
                  batch_size: int = 1024) -> Path:
    """Write ``model``'s int8 scorer (an int8 model from :func:`quantize_recommender`, or any recommender:
    it is quantised first) as plain tensors: the int8 item matrix with its per-item scales and the user
    factors of ``users`` (default: all users) for ``split``. :func:`load_scorer` reads it back.

    User vectors are a snapshot: a sequential model's users as their ``split`` history stands now.
    """
    q = model if isinstance(model, QuantizedRecommender) else quantize_recommender(model, "int8")
    if not isinstance(q, QuantizedRecommender):
        raise ConfigError(f"{type(model).__name__} scores its own way (not user x item matrix), so it has no "
                          "int8 scorer to export; quantize=int8 still serves it through tlexp recommend")
    n_users = int(q.backbone.n_users)
    users = torch.arange(n_users) if users is None else users.long()
    parts = []
    with torch.no_grad():
        for lo in range(0, users.numel(), batch_size):
            parts.append(q.user_factors(users[lo: lo + batch_size], split).float())
    factors = torch.zeros(n_users, q.scorer.items.in_features)
    factors[users] = torch.cat(parts) if parts else factors[:0]
    known = torch.zeros(n_users, dtype=torch.bool)
    known[users] = True
    w = q.scorer.items.weight()
    payload = {"format": EXPORT_FORMAT, "split": split,
               "item_int8": w.int_repr().contiguous(), "item_scales": w.q_per_channel_scales().float(),
               "user_factors": factors, "known_users": known,
               "quantization": q.quantization.summary()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


class Int8Scorer(nn.Module):
    """A loaded export: ``scorer(users)`` -> (B, n_items) fp32 scores, as the int8 model scored them."""

    def __init__(self, payload: dict[str, Any]):
        super().__init__()
        self.register_buffer("user_factors", payload["user_factors"])
        self.register_buffer("known_users", payload["known_users"])
        self.split = str(payload["split"])
        self.summary = str(payload.get("quantization", ""))
        self.scorer = Int8ItemScorer(_int8_linear_from(payload["item_int8"], payload["item_scales"]))

    @property
    def n_items(self) -> int:
        return int(self.scorer.items.out_features)

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        if not bool(self.known_users[users].all()):
            raise ConfigError("the exported scorer has no vector for some of these users (exported with users=...)")
        return self.scorer(self.user_factors[users])


def load_scorer(path: str | Path) -> Int8Scorer:
    """Read back :func:`export_scorer`'s file (tensors only: nothing runs while it loads)."""
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"no exported scorer at {path}") from None
    if not isinstance(payload, dict) or payload.get("format") != EXPORT_FORMAT:
        raise ConfigError(f"{path} is not a tlexp int8 scorer (format {EXPORT_FORMAT})")
    return Int8Scorer(payload).eval()


def describe(model: nn.Module) -> str:
    """One line about how ``model`` is served (``fp32`` or its QuantInfo summary)."""
    info = getattr(model, "quantization", None)
    return info.summary() if isinstance(info, QuantInfo) else "fp32"


__all__ = ["MODES", "Int8Scorer", "QuantInfo", "QuantizedRecommender", "check_mode", "describe", "export_scorer",
           "int8_linears", "load_scorer", "quantize_recommender", "quantize_run", "quiet_quantization"]
