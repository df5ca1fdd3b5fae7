"""Every real-data preset and domain against the files in ../shared/data (or $TLEXP_DATA_DIR).

Counts are checked against each dataset's SOURCE.md after the documented cleaning (drop missing
ids, dedupe user-item pairs keeping the latest; nothing else by default). Without the data folder
these tests are skipped with the reason; the config checks at the top always run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from hydra.utils import instantiate

from tlexp.core.config import compose, project_root
from tlexp.cli.data import describe

DATA = Path(os.environ.get("TLEXP_DATA_DIR") or project_root().parent / "shared" / "data")
PRESETS = {  # preset: (source, target)
    "arts_office": ("amazon_arts", "amazon_office"),
    "food_kitchen": ("amazon_food", "amazon_kitchen"),
    "books_movies": ("amazon_books", "amazon_movies"),
    "douban_book_music": ("douban_book", "douban_music"),
    "sport_cloth": ("disencdr_sport_cloth_sport", "disencdr_sport_cloth_cloth"),
    "electronic_phone": ("disencdr_electronic_phone_electronic", "disencdr_electronic_phone_phone"),
    "ml100k_genres": ("ml100k_action", "ml100k_comedy"),
    "scientific": ("amazon_arts", "amazon_scientific"),
}
DOMAINS = ["amazon_arts", "amazon_office", "amazon_food", "amazon_kitchen", "amazon_books", "amazon_movies",
           "douban_book", "douban_music", "amazon_scientific", "ml100k_action", "ml100k_comedy", "ml100k_drama"] + [
    f"disencdr_{pair}_{d}" for pair in ("sport_cloth", "electronic_phone", "cloth_electronic", "phone_sport")
    for d in pair.split("_")]
FOLDER = {"amazon_arts": "amazon-arts-office", "amazon_office": "amazon-arts-office",
          "amazon_food": "amazon-food-kitchen", "amazon_kitchen": "amazon-food-kitchen",
          "amazon_books": "amazon-books-movies-dense", "amazon_movies": "amazon-books-movies-dense",
          "douban_book": "douban-book-music", "douban_music": "douban-book-music",
          "amazon_scientific": "amazon-scientific"}

# SOURCE.md numbers after the documented cleaning: (users, items listed, items occurring, interactions,
# items with text). Dedupe changes: arts-office 1,880 repeats (861 Arts + 1,019 Office), books/movies
# duplicate rows (6,645 / 5,939), Scientific 291 repeated items inside sequences (59,427 -> 59,136).
EXPECTED = {
    "amazon_arts": (9_577, 18_639, 18_639, 110_016, 18_639),
    "amazon_office": (9_577, 19_757, 15_780, 96_645, 19_757),
    "amazon_food": (5_472 + 9_398, 8_661, 8_661, 98_316, 8_661),
    "amazon_kitchen": (38_191 + 9_398, 27_637, 27_637, 337_811, 27_637),
    "amazon_books": (1_426, 723, 723, 38_149 - 6_645, 0),
    "amazon_movies": (1_381, 1_338, 1_338, 68_023 - 5_939, 0),
    "douban_book": (2_110, 6_777, 6_777, 96_041, 0),
    "douban_music": (1_672, 5_567, 5_567, 69_709, 0),
    "amazon_scientific": (8_442, 4_385, 4_385, 59_427 - 291, 4_385),
    # DisenCDR: train rows + one held-out (test_original) row per user
    "disencdr_sport_cloth_sport": (9_928, 32_310, 32_310, 92_612 + 9_928, 0),
    "disencdr_sport_cloth_cloth": (9_928, 41_303, 41_303, 87_829 + 9_928, 0),
    "disencdr_electronic_phone_electronic": (3_325, 39_463, 39_463, 115_554 + 3_325, 0),
    "disencdr_electronic_phone_phone": (3_325, 18_462, 18_462, 50_407 + 3_325, 0),
    "disencdr_cloth_electronic_cloth": (15_761, 51_865, 51_865, 121_083 + 15_761, 0),
    "disencdr_cloth_electronic_electronic": (15_761, 53_309, 53_309, 210_865 + 15_761, 0),
    "disencdr_phone_sport_phone": (4_998, 14_618, 14_618, 42_446 + 4_998, 0),
    "disencdr_phone_sport_sport": (4_998, 22_101, 22_101, 50_558 + 4_998, 0),
}
OVERLAP = {"arts_office": 9_577, "food_kitchen": 9_398, "books_movies": 1_329, "douban_book_music": 1_566,
           "sport_cloth": 9_928, "electronic_phone": 3_325, "scientific": 708}


def folder_of(domain: str) -> str:
    if domain.startswith("disencdr_"):
        return "amazon-disencdr"
    if domain.startswith("ml100k_"):
        return "movielens-100k"
    return FOLDER[domain]


def need(*domains: str) -> None:
    for d in domains:
        if not (DATA / folder_of(d)).is_dir():
            pytest.skip(f"real data not found: {DATA / folder_of(d)} (set TLEXP_DATA_DIR to the shared data folder)")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def run_describe(preset: str, cache: Path, *extra: str) -> dict:
    return describe([f"data={preset}", f"paths.data_dir={DATA}", f"paths.cache_dir={cache}", *extra])


# -- config (always runs) ------------------------------------------------------------------------------
def test_every_domain_is_one_yaml_usable_as_source_and_target(tmp_path):
    conf = project_root() / "conf"
    for name in DOMAINS:
        assert (conf / "domain" / f"{name}.yaml").exists(), f"conf/domain/{name}.yaml missing"
    assert not (conf / "source").exists() and not (conf / "target").exists()  # no wrapper file per side
    cfg = compose([f"source={DOMAINS[0]}", f"target={DOMAINS[1]}", f"paths.output_dir={tmp_path}"])
    assert cfg.source.name == DOMAINS[0] and cfg.target.name == DOMAINS[1]
    # instantiating reads no file: works without the data
    for src, tgt in zip(DOMAINS[::2], DOMAINS[1::2], strict=True):
        cfg = compose([f"source={src}", f"target={tgt}", f"paths.output_dir={tmp_path}", f"paths.data_dir={tmp_path}"])
        assert (instantiate(cfg.source).name, instantiate(cfg.target).name) == (src, tgt)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_selects_its_domains(preset, tmp_path):
    cfg = compose([f"data={preset}", f"paths.output_dir={tmp_path}"])
    assert (cfg.source.name, cfg.target.name) == PRESETS[preset]


# -- real files ------------------------------------------------------------------------------------------
@pytest.mark.realdata
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_counts_match_source_md(preset, cache):
    need(*PRESETS[preset])
    d = run_describe(preset, cache)
    for side in ("source", "target"):
        s = d[side]
        if s["domain"].startswith("ml100k_"):
            continue  # checked as a whole in test_movielens_groups_partition_the_ratings
        want = EXPECTED[s["domain"]]
        got = (s["users"], s["items"], s["items_with_interactions"], s["interactions"], s["items_with_text"])
        assert got == want, f"{preset} {side} {s['domain']}"
        assert s["train"] + s["valid"] + s["test"] == s["interactions"]
        assert s["cleaning"]["kept"] == s["interactions"]
    if preset in OVERLAP:
        assert d["target"]["overlap_users"] == OVERLAP[preset]
    cold = round(0.2 * d["target"]["overlap_users"])  # split.cold_user_share; half of them validate
    assert d["target"]["cold_start_users_in_valid"] == round(0.5 * cold)
    assert d["target"]["cold_start_users_in_test"] == cold - round(0.5 * cold)


@pytest.mark.realdata
def test_movielens_groups_partition_the_ratings(cache, tmp_path):
    need("ml100k_action")
    doms = {}
    for g in ("action", "comedy", "drama"):
        cfg = compose([f"source=ml100k_{g}", f"paths.data_dir={DATA}", f"paths.output_dir={tmp_path}"])
        doms[g] = instantiate(cfg.source).load()
    items = [set(d.items["item"]) for d in doms.values()]
    assert not (items[0] & items[1] or items[0] & items[2] or items[1] & items[2])  # disjoint
    # SOURCE.md: 1,682 movies, 100,000 ratings; the 2 movies labelled only 'unknown' (10 ratings) are in no group
    assert sum(map(len, items)) == 1_682 - 2
    assert sum(len(d.interactions) for d in doms.values()) == 100_000 - 10
    assert {g: len(d.items) for g, d in doms.items()} == {"action": 464, "comedy": 515, "drama": 701}
    assert all(d.interactions["user"].nunique() >= 937 for d in doms.values())  # near-total user overlap


@pytest.mark.realdata
def test_ml100k_is_all_of_movielens_100k_and_splits_at_random_or_in_time(tmp_path):
    """The single-domain benchmark as RecBole reads it; split.order=random is RecBole's RO, time its TO."""
    need("ml100k_action")
    from tlexp.data.scenario import split_domain

    cfg = compose(["target=ml100k", f"paths.data_dir={DATA}", f"paths.output_dir={tmp_path}"])
    dom = instantiate(cfg.target).load()
    # SOURCE.md: 943 users, 1,682 movies, 100,000 ratings, with timestamps
    assert (dom.interactions["user"].nunique(), len(dom.items), len(dom.interactions)) == (943, 1_682, 100_000)
    ratio = {"protocol": "ratio", "ratios": [0.8, 0.1, 0.1], "min_user_interactions": 3, "seed": 2024}
    timed = split_domain(dom, {**ratio, "order": "time"})
    rand = split_domain(dom, {**ratio, "order": "random"})
    assert timed.ordered and not rand.ordered
    assert len(timed.train) + len(timed.valid) + len(timed.test) == 100_000
    assert (len(rand.train), len(rand.valid), len(rand.test)) == (len(timed.train), len(timed.valid), len(timed.test))
    assert not rand.test.equals(timed.test)


@pytest.mark.realdata
@pytest.mark.parametrize("pair", ["cloth_electronic", "phone_sport"])
def test_other_disencdr_pairs(pair, tmp_path):
    x, y = pair.split("_")
    need(f"disencdr_{pair}_{x}")
    cfg = compose([f"source=disencdr_{pair}_{x}", f"target=disencdr_{pair}_{y}", f"paths.data_dir={DATA}",
                   f"paths.output_dir={tmp_path}"])
    a, b = instantiate(cfg.source).load(), instantiate(cfg.target).load()
    for dom in (a, b):
        users, items, _, inter, _ = EXPECTED[dom.name]
        assert (dom.interactions["user"].nunique(), len(dom.items), len(dom.interactions)) == (users, items, inter)
    assert set(a.interactions["user"]) == set(b.interactions["user"])


@pytest.mark.realdata
@pytest.mark.parametrize("preset,checks", [
    # SOURCE.md: URLLM user split test = users 8,000-8,999, valid = 9,000-9,576 (their last tokens)
    # (Office test users = test users whose line-1 target is an Office item, counted from the file below)
    ("arts_office", {"source": {"test_users": 1_000, "valid_users": 577}, "target": {"test_users": "office"}}),
    # SOURCE.md: valid targets 363 Food / 597 Kitchen, test targets 300 Food / 637 Kitchen
    ("food_kitchen", {"source": {"valid": 363, "test": 300}, "target": {"valid": 597, "test": 637}}),
    # SOURCE.md: test.txt has 8,326 (Sport) / 7,540 (Cloth) rows; valid = each user's last train row (tlexp's)
    ("sport_cloth", {"source": {"test": 8_326, "valid": 9_928}, "target": {"test": 7_540, "valid": 9_928},
                     "overrides": ["source.test_file=test.txt", "target.test_file=test.txt"]}),
    # SOURCE.md: 8,442 test rows (leave-one-out); 16 valid targets repeat as the test target (dedupe)
    ("scientific", {"target": {"test": 8_442, "valid_users_min": 8_400}}),
])
def test_given_split(preset, checks, cache):
    need(*PRESETS[preset])
    from tlexp.data.scenario import build_scenario

    checks = dict(checks)
    cfg = compose([f"data={preset}", "split=given", "split.cold_user_share=0.0", f"paths.data_dir={DATA}",
                   f"paths.output_dir={cache}", *checks.pop("overrides", [])])
    scn = build_scenario(instantiate(cfg.source), instantiate(cfg.target), dict(cfg.split), cache)
    for side, want in checks.items():
        dd = getattr(scn, side)
        got = {"test": len(dd.test), "valid": len(dd.valid), "train": len(dd.train),
               "test_users": dd.test["user"].nunique(), "valid_users": dd.valid["user"].nunique()}
        for k, v in want.items():
            if v == "office":  # line 1 of each user (odd lines) ends with an Office item (id >= 18,639)
                lines = (DATA / "amazon-arts-office" / "test_F2.txt").read_text().splitlines()[::2]
                v = sum(int(line.rstrip("\t").split("\t")[-1].split("|")[0]) >= 18_639 for line in lines)
            if k.endswith("_min"):
                assert got[k[:-4]] >= v, (side, k)
            else:
                assert got[k] == v, (side, k, got[k])


@pytest.mark.realdata
def test_scientific_sequences_match_the_shipped_histories(tmp_path):
    need("amazon_scientific")
    cfg = compose(["source=amazon_scientific", f"paths.data_dir={DATA}", f"paths.output_dir={tmp_path}",
                   "source.cleaning.dedupe=false"])
    dom = instantiate(cfg.source).load()
    assert len(dom.interactions) == 59_427  # SOURCE.md, before dedupe
    root = DATA / "amazon-scientific"
    a2i = pd.read_csv(root / "Scientific.item2index", sep="\t", header=None, dtype=str).set_index(0)[1]
    u2i = pd.read_csv(root / "Scientific.user2index", sep="\t", header=None, dtype=str).set_index(0)[1]
    inter = dom.interactions.sort_values(["user", "timestamp"])
    inter = inter.assign(user=u2i.reindex(inter["user"]).to_numpy(), item=a2i.reindex(inter["item"]).to_numpy())
    seqs = inter.groupby("user", sort=False)["item"].agg(list).to_dict()
    test = pd.read_csv(root / "Scientific.test.inter", sep="\t", dtype=str)
    test.columns = ["u", "hist", "item"]
    for row in test.itertuples():
        s = seqs[row.u]
        assert s[-1] == row.item and s[:-1][-50:] == row.hist.split(" "), row.u


@pytest.mark.realdata
def test_scientific_items_never_appear_in_its_sources(tmp_path):
    """The scientific preset's sources (Arts, or Office) share no item with Scientific — by key, and
    (Arts/Office ship no ASINs) by normalised title. Note: 37 Scientific ASINs do occur in Kitchen."""
    need("amazon_scientific", "amazon_arts")

    def load(name):
        cfg = compose([f"source={name}", f"paths.data_dir={DATA}", f"paths.output_dir={tmp_path}"])
        return instantiate(cfg.source).load().items

    sci = load("amazon_scientific")
    sci_titles = set(sci["text"].str.lower().str.rstrip(". ").str.rsplit(". ", n=2).str[0]
                     .str.replace(r"[^a-z0-9]+", " ", regex=True).str.strip())
    for name in ("amazon_arts", "amazon_office"):
        items = load(name)
        assert not set(sci["item"]) & set(items["item"])
        raw = pd.read_csv(DATA / "amazon-arts-office" / ("item_listA_F.csv" if name == "amazon_arts"
                                                         else "item_listO_AA_F.csv"), dtype=str, keep_default_na=False)
        own = set(raw["item_title"].str.replace(r"[^a-z0-9]+", " ", regex=True).str.strip())
        assert not sci_titles & own, name


@pytest.mark.realdata
@pytest.mark.parametrize("preset", ["douban_book_music", "sport_cloth", "electronic_phone", "ml100k_genres",
                                    "books_movies", "arts_office"])
def test_domains_of_a_preset_share_no_item_keys(preset, tmp_path):
    """Item ids local to each domain (Douban, DisenCDR) are namespaced: a transfer strategy that carries
    embeddings by item key must never map an item onto an unrelated item of the other domain."""
    cfg = compose([f"data={preset}", f"paths.data_dir={DATA}", f"paths.output_dir={tmp_path}"])
    need(cfg.source.name, cfg.target.name)
    src, tgt = instantiate(cfg.source).load(), instantiate(cfg.target).load()
    assert not set(src.items["item"]) & set(tgt.items["item"])
    assert set(src.interactions["user"]) & set(tgt.interactions["user"])  # ...while users do match
