"""The embedded synthetic cross-domain world (the default data: no files needed).

One population of users has a latent taste vector. Each domain has its own items (latent
vectors, a topic, a generated title and a category) and sees each user's taste through a
domain-specific *shift*: ``taste_d = sqrt(1 - s^2) * taste + s * noise_d``. With ``s = 0`` the
domains agree perfectly (transfer is easy), with ``s = 1`` they are independent (transfer cannot
help). Users pick items by a softmax over taste·item + a popularity bias, without replacement,
at increasing timestamps. Only a share of users is present in each domain, so any two domains
have partial user overlap — the setting cross-domain transfer is about.

Everything is a pure function of the world seed and the domain's spec: the same config gives
the same data on any machine.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from tlexp.data.domain import Domain

# Topic vocabulary for generated titles; a topic's words appear in its items' titles so that a
# text encoder has real signal to pick up (and shares it across domains).
TOPICS: dict[str, list[str]] = {
    "jazz": ["jazz", "saxophone", "swing", "blue note", "trumpet"],
    "fitness": ["fitness", "workout", "running", "yoga", "protein"],
    "cooking": ["cooking", "recipe", "kitchen", "baking", "spice"],
    "travel": ["travel", "adventure", "island", "backpack", "road trip"],
    "gaming": ["gaming", "console", "arcade", "quest", "pixel"],
    "fashion": ["fashion", "denim", "sneaker", "vintage", "runway"],
    "science": ["science", "physics", "space", "telescope", "lab"],
    "gardening": ["garden", "plant", "flower", "seed", "greenhouse"],
    "finance": ["finance", "stock", "budget", "crypto", "savings"],
    "pets": ["pet", "puppy", "kitten", "aquarium", "leash"],
    "photography": ["camera", "lens", "portrait", "film", "tripod"],
    "cars": ["car", "engine", "racing", "electric vehicle", "tire"],
    "history": ["history", "empire", "medieval", "archive", "war"],
    "kids": ["kids", "toy", "cartoon", "lego", "playground"],
    "art": ["art", "painting", "canvas", "sculpture", "sketch"],
    "music": ["rock", "guitar", "concert", "vinyl", "drums"],
}
ADJECTIVES = ["classic", "modern", "essential", "deluxe", "mini", "ultimate", "daily", "pro",
              "smart", "retro", "eco", "premium", "quick", "handmade", "wild", "cozy"]


@dataclass(frozen=True)
class WorldSpec:
    """The shared user population."""

    n_users: int = 6000
    dim: int = 16
    seed: int = 2024


@dataclass(frozen=True)
class DomainSpec:
    """How one synthetic domain looks; see the module docstring for the generative story."""

    name: str
    nouns: tuple[str, ...] = ("item",)
    n_items: int = 1500
    user_share: float = 0.6
    shift: float = 0.3
    mean_interactions: float = 15.0
    min_interactions: int = 4
    sharpness: float = 8.0
    popularity: float = 1.0
    world: WorldSpec = field(default_factory=WorldSpec)


def _domain_seed(world_seed: int, name: str) -> int:
    """A stable per-domain seed (Python's hash() is salted per process, so use sha256)."""
    digest = hashlib.sha256(f"{world_seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def user_tastes(world: WorldSpec) -> np.ndarray:
    """The users' domain-independent taste vectors, unit-normalised."""
    rng = np.random.default_rng(world.seed)
    z = rng.standard_normal((world.n_users, world.dim))
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def topic_prototypes(world: WorldSpec) -> np.ndarray:
    """One latent direction per topic, shared by all domains (so topics mean the same thing)."""
    rng = np.random.default_rng(world.seed + 1)
    p = rng.standard_normal((len(TOPICS), world.dim))
    return p / np.linalg.norm(p, axis=1, keepdims=True)


def generate_domain(spec: DomainSpec) -> Domain:
    """Generate one domain of the world described by ``spec.world``."""
    world = spec.world
    rng = np.random.default_rng(_domain_seed(world.seed, spec.name))
    taste = user_tastes(world)
    protos = topic_prototypes(world)
    topic_names = list(TOPICS)

    # Items: each has a main topic; its latent vector sits near that topic's prototype.
    item_topic = rng.integers(0, len(topic_names), spec.n_items)
    v = protos[item_topic] + 0.6 * rng.standard_normal((spec.n_items, world.dim)) / np.sqrt(world.dim)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    log_pop = rng.normal(0.0, 1.0, spec.n_items)

    # Which users live in this domain, and how their taste reads here.
    present = np.flatnonzero(rng.random(world.n_users) < spec.user_share)
    noise = rng.standard_normal((present.size, world.dim))
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    s = float(np.clip(spec.shift, 0.0, 1.0))
    t = np.sqrt(1.0 - s * s) * taste[present] + s * noise
    t /= np.linalg.norm(t, axis=1, keepdims=True)

    # Softmax choice without replacement via the Gumbel top-k trick (vectorised over users).
    logits = spec.sharpness * (t @ v.T)
    logits += spec.popularity * log_pop[None, :]
    gumbel = -np.log(-np.log(rng.random(logits.shape)))
    counts = np.maximum(spec.min_interactions,
                        rng.poisson(spec.mean_interactions - spec.min_interactions, present.size)
                        + spec.min_interactions)
    counts = np.minimum(counts, spec.n_items)
    order = np.argsort(-(logits + gumbel), axis=1)
    rows_u, rows_i = [], []
    for k, u in enumerate(present):
        rows_u.append(np.full(counts[k], u))
        rows_i.append(order[k, : counts[k]])
    users = np.concatenate(rows_u)
    items = np.concatenate(rows_i)
    # Timestamps: each user's choices in a random order, spaced by random gaps from a random start.
    gaps = rng.integers(60, 86_400, users.size)
    start = rng.integers(1_600_000_000, 1_650_000_000, world.n_users)
    ts = np.empty(users.size, dtype=np.int64)
    pos = 0
    for k, u in enumerate(present):
        n = counts[k]
        perm = rng.permutation(n)
        ts[pos: pos + n] = start[u] + np.cumsum(gaps[pos: pos + n])[perm]
        pos += n

    interactions = pd.DataFrame({
        "user": pd.Series(users).map(lambda x: f"u{x}").astype(str),
        "item": pd.Series(items).map(lambda x: f"{spec.name}_i{x}").astype(str),
        "timestamp": ts,
    })
    titles = []
    for i in range(spec.n_items):
        words = TOPICS[topic_names[item_topic[i]]]
        second = topic_names[int(np.argsort(-(protos @ v[i]))[1])]
        titles.append(" ".join([
            ADJECTIVES[rng.integers(len(ADJECTIVES))],
            words[rng.integers(len(words))],
            TOPICS[second][rng.integers(len(TOPICS[second]))],
            spec.nouns[rng.integers(len(spec.nouns))],
        ]))
    item_df = pd.DataFrame({
        "item": [f"{spec.name}_i{i}" for i in range(spec.n_items)],
        "text": titles,
        "category": [topic_names[c] for c in item_topic],
    })
    return Domain(name=spec.name, interactions=interactions, items=item_df)


class SyntheticDomainLoader:
    """Hydra-instantiable loader for one synthetic domain (``conf/domain/*.yaml``)."""

    def __init__(self, name: str, world: dict | None = None, nouns: list[str] | None = None, **spec):
        self.name = name
        self.spec = DomainSpec(name=name, world=WorldSpec(**(dict(world) if world else {})),
                               nouns=tuple(nouns or ("item",)), **spec)

    def load(self) -> Domain:
        return generate_domain(self.spec)

    def fingerprint(self) -> dict:
        d = asdict(self.spec)
        d["kind"] = "synthetic-v1"
        return d
