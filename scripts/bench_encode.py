"""How long does a cold encode of a preset's item texts take, and what does the cache save?

Loads the preset's scenario (source and target item tables, through the scenario cache), builds
the exact texts ``backbone=text_seq`` embeds, and calls the real ``embed_texts`` twice on a fresh
cache folder: the first call encodes (miss), the second reads the cache (hit). Prints wall and CPU
seconds, texts per second and the hit/miss speed-up, measured side by side in one process, plus
whether the two matrices are bit-identical.

    python scripts/bench_encode.py --data arts_office            # all item texts of Arts + Office
    python scripts/bench_encode.py --data ml100k_genres --threads 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="arts_office")
    parser.add_argument("--threads", type=int, default=None, help="torch threads while encoding (default: torch's)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--limit", type=int, default=None, help="encode only the first N texts (a quick look)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    import torch

    from tlexp.core.config import compose
    from tlexp.models.text_encoder import embed_texts, item_texts
    from tlexp.pipeline import load_scenario

    cfg = compose([f"data={args.data}", "backbone=text_seq"])
    scenario, _ = load_scenario(cfg)
    texts = item_texts(scenario.source.item_info) + item_texts(scenario.target.item_info)
    if args.limit:
        texts = texts[: args.limit]
    enc = cfg.backbone.encoder
    print(f"{args.data}: {len(texts):,} item texts (source {scenario.source.n_items:,} + target "
          f"{scenario.target.n_items:,}), encoder {enc.name_or_path}, max_length {enc.max_length}, "
          f"batch {args.batch_size}, torch threads {args.threads or torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as cache:
        kw = dict(name_or_path=enc.name_or_path, pooling=enc.pooling, max_length=enc.max_length,
                  normalize=enc.normalize, batch_size=args.batch_size, num_threads=args.threads,
                  progress=False, cache_dir=cache)
        t0 = time.time()
        cold, info_cold = embed_texts(texts, **kw)
        cold_s = time.time() - t0
        t0 = time.time()
        warm, info_warm = embed_texts(texts, **kw)
        warm_s = time.time() - t0
    print(f"cold (cache {info_cold['cache']}): {cold_s:.1f} s wall, {info_cold['encode_cpu_s']:.1f} s CPU, "
          f"{len(texts) / max(info_cold['encode_s'], 1e-9):.0f} texts/s")
    print(f"warm (cache {info_warm['cache']}): {warm_s:.2f} s wall")
    print(f"cold/warm = {cold_s / max(warm_s, 1e-9):.0f}x; identical matrices: {torch.equal(cold, warm)}; "
          f"shape {tuple(cold.shape)}")


if __name__ == "__main__":
    main()
