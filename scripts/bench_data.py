"""Time every real-data preset: cold (no cache: read files, clean, index, split, write Parquet) and
warm (fingerprint the files, read the cached Parquet scenario). The issue asks < 10 s cold and
< 1 s warm on 2 cores.

    python scripts/bench_data.py                       # all real presets
    python scripts/bench_data.py arts_office scientific split=ratio

Positional arguments that name a preset are benchmarked; ``key=value`` ones are extra Hydra
overrides. Config composition and loader construction are timed separately ("setup").
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time

from hydra.utils import instantiate
from omegaconf import OmegaConf

from tlexp.core.config import compose
from tlexp.data.scenario import build_scenario

PRESETS = ["arts_office", "food_kitchen", "books_movies", "douban_book_music", "sport_cloth",
           "electronic_phone", "ml100k_genres", "scientific"]


def bench(preset: str, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as out, tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        cfg = compose([f"data={preset}", f"paths.output_dir={out}", *extra])
        src, tgt = instantiate(cfg.source), instantiate(cfg.target)
        split = OmegaConf.to_container(cfg.split, resolve=True)
        t1 = time.perf_counter()
        cold = build_scenario(src, tgt, split, cache)
        t2 = time.perf_counter()
        warm = build_scenario(instantiate(cfg.source), instantiate(cfg.target), split, cache)
        t3 = time.perf_counter()
        assert not cold.cache_hit and warm.cache_hit
        return {"preset": preset, "setup": t1 - t0, "cold": t2 - t1, "warm": t3 - t2,
                "target_users": warm.target.n_users, "target_items": warm.target.n_items}


def main(argv: list[str]) -> int:
    presets = [a for a in argv if "=" not in a] or PRESETS
    extra = [a for a in argv if "=" in a]
    print(f"{'preset':20s} {'setup s':>8s} {'cold s':>8s} {'warm s':>8s}  target users x items")
    worst_cold = worst_warm = 0.0
    for p in presets:
        r = bench(p, extra)
        worst_cold, worst_warm = max(worst_cold, r["cold"]), max(worst_warm, r["warm"])
        print(f"{p:20s} {r['setup']:8.2f} {r['cold']:8.2f} {r['warm']:8.2f}  "
              f"{r['target_users']:,} x {r['target_items']:,}", flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"worst cold {worst_cold:.2f} s (limit 10), worst warm {worst_warm:.2f} s (limit 1), "
          f"peak RSS {rss:.0f} MiB")
    return 0 if worst_cold < 10 and worst_warm < 1 else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
