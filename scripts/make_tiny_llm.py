"""Write a tiny random Llama (causal LM + BPE tokenizer, no pad token) for an offline smoke run of the
decoder-LLM encoder path.

    python scripts/make_tiny_llm.py outputs/tiny-llama
    tlexp run backbone=text_seq backbone.encoder.name_or_path=outputs/tiny-llama backbone.encoder.pooling=last

The tokenizer is trained on the default world's item texts. Its vectors mean nothing: this checks
loading, tokenising, pooling, LoRA targets and the encode cache, not quality (docs/backbones.md).
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from tlexp.core.config import compose
    from tlexp.core.console import quiet_third_party
    from tlexp.models.text_encoder import item_texts
    from tlexp.models.tiny_llm import save_tiny_causal_lm
    from tlexp.pipeline.build import load_scenario

    quiet_third_party()
    scenario, _ = load_scenario(compose([]))
    texts = item_texts(scenario.source.item_info) + item_texts(scenario.target.item_info)
    path = save_tiny_causal_lm(args.folder, texts, seed=args.seed, hidden=args.hidden, layers=args.layers)
    print(f"wrote a {args.layers}-layer, {args.hidden}-wide random Llama to {path}")


if __name__ == "__main__":
    main()
