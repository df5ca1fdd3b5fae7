"""Every real-data loader on a tiny fixture written here in its dataset's format (no ../shared needed),
the cleaning steps, each bad-input case, and cache invalidation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from tlexp.data.cleaning import CleaningConfig, clean_interactions
from tlexp.data.loaders import (
    ArtsOfficeLoader,
    DisenCDRLoader,
    FoodKitchenLoader,
    MovieLensGenreLoader,
    RecBoleLoader,
    TabularLoader,
    UniSRecLoader,
)
from tlexp.data.scenario import build_scenario
from tlexp.core.errors import DataError

SPLIT = {"protocol": "loo", "min_user_interactions": 3, "cold_user_share": 0.5, "seed": 0}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# -- fixtures in each dataset's format ------------------------------------------------------------
def tabular_fixture(root: Path) -> Path:
    write(root / "shop" / "events.csv",
          "customer,sku,ts,stars\n"
          "c1,a,2024-01-01T10:00:00,5\nc1,b,2024-01-02T10:00:00,3\nc1,a,2024-01-03T10:00:00,4\n"
          "c2,b,2024-01-01T09:00:00,4\nc2,c,2024-01-05T09:00:00,2\nc3,a,2024-02-01T00:00:00,5\n"
          ",c,2024-02-02T00:00:00,5\n")
    write(root / "shop" / "products.csv", 'sku,title,brand,cat\na,"Red, mug",Acme,kitchen\nb,Blue pen,,office\n'
          "c,Green lamp,Lux,home\nd,Never bought,,misc\n")
    return root


def ml_fixture(root: Path) -> Path:
    d = root / "movielens-100k"
    write(d / "ml-100k.item", "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
          "1\tToy Story\t1995\tAnimation Children's Comedy\n2\tGoldenEye\t1995\tAction Adventure Thriller\n"
          "3\tGet Shorty\t1995\tAction Comedy Drama\n4\tCopycat\t1995\tCrime Drama Thriller\n"
          "5\tSeven\t1995\tDrama\n6\tOdd\t1995\tunknown\n7\tCasablanca\t1942\tDrama Romance War\n")
    rows = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    t = 880000000
    for u in range(1, 9):
        for i in range(1, 8):
            if (u + i) % 5:
                t += 17
                rows.append(f"{u}\t{i}\t{1 + (u * i) % 5}\t{t}")
    write(d / "ml-100k.inter", "\n".join(rows) + "\n")
    write(d / "ml-100k.user",
          "user_id:token\tage:token\tgender:token\n" + "".join(f"{u}\t30\tF\n" for u in range(1, 9)))
    return root


def douban_fixture(root: Path) -> Path:
    d = root / "douban-book-music"
    book = "".join(f"{u}\t{i}\t{1 + (u + i) % 5}\n" for u in range(1, 9) for i in range(1, 7) if (u * i) % 4)
    music = "".join(f"{u}\t{i}\t{1 + (u * i) % 5}\n" for u in range(4, 12) for i in range(1, 6) if (u + i) % 3)
    write(d / "douban_book_ratings.dat", book)
    write(d / "douban_music_ratings.dat", music)
    return root


def arts_office_fixture(root: Path) -> Path:
    d = root / "amazon-arts-office"
    write(d / "Dualuser_dict.json", json.dumps(["R0", "R1", "R2"]))
    write(d / "item_listA_F.csv", "idBefore,item_title,idAfter,item_attribute\n"
          "0,clover clips,0,arts crafts sewing clover\n"
          "1,rotary cutter,1,arts crafts sewing omnigrid\n2,paint set,2,arts painting\n")
    write(d / "item_listO_AA_F.csv", "idBefore,item_title,idAfter,item_attribute\n0,ink,3,office products hp\n"
          "1,mouse pad,4,office products reflex\n2,stapler,5,office products swingline\n")

    def line(u, items):
        return f"{u}\t{len(items) - 1}\t" + "".join(f"{i}|{k}|{k}\t" for k, i in enumerate(items)) + "\n"
    write(d / "train_F2.txt", line(0, [0, 3, 1, 4]) + line(0, [0, 3, 1, 2]))
    write(d / "valid_F2.txt", line(2, [2, 5, 0, 3]) + line(2, [2, 5, 0, 1]))
    write(d / "test_F2.txt", line(1, [1, 4, 0, 5, 1, 3]) + line(1, [1, 4, 0, 5, 1, 2]))
    return root


def food_kitchen_fixture(root: Path) -> Path:
    d = root / "amazon-food-kitchen"
    write(d / "items_A_food.tsv",
          "global_item_id\tdomain_item_id\tasin\ttitle\n0\t0\tF0\tTea\n1\t1\tF1\tCoffee\n2\t2\tF2\tJam\n")
    write(d / "items_B_kitchen.tsv", "global_item_id\tdomain_item_id\tasin\ttitle\n3\t0\tK0\tKettle\n4\t1\tK1\tMug\n"
          "5\t2\tK2\t\"Pan\" 10in\n")
    write(d / "train_A.txt", "1\t0,1,2\n")
    write(d / "train_B.txt", "1\t3,4,5\n2\t4,5\n")
    write(d / "train_overlap.txt", "1\t0,3,1,4\n")
    write(d / "valid.txt", "1\t2,5,1,4\n")
    write(d / "test.txt", "1\t0,3,4,1\n")
    return root


def unisrec_fixture(root: Path, seqs: dict[int, list[int]], maxlen: int = 50) -> Path:
    d = root / "amazon-scientific"
    head = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    tr, va, te = [head], [head], [head]
    for u, s in seqs.items():
        for k in range(len(s) - 3, 0, -1):  # prefixes, longest first
            tr.append(f"{u}\t{' '.join(map(str, s[:k][-maxlen:]))}\t{s[k]}\n")
        va.append(f"{u}\t{' '.join(map(str, s[:-2][-maxlen:]))}\t{s[-2]}\n")
        te.append(f"{u}\t{' '.join(map(str, s[:-1][-maxlen:]))}\t{s[-1]}\n")
    write(d / "Scientific.train.inter", "".join(tr))
    write(d / "Scientific.valid.inter", "".join(va))
    write(d / "Scientific.test.inter", "".join(te))
    n_items = 1 + max(max(s) for s in seqs.values())
    write(d / "Scientific.item2index", "".join(f"ASIN{i}\t{i}\n" for i in range(n_items)))
    write(d / "Scientific.user2index", "".join(f"REV{u}\t{u}\n" for u in seqs))
    write(d / "Scientific.text", "item_id:token\ttext:token_seq\n"
          + "".join(f"ASIN{i}\tThing {i}, v2. Industrial & Scientific Tools. Brand{i % 2}. \n" for i in range(n_items)))
    return root


def disencdr_fixture(root: Path) -> Path:
    d = root / "amazon-disencdr"
    for folder, n_items in (("sport_cloth", 6), ("cloth_sport", 5)):
        train = "".join(f"{u}\t{(u + k) % n_items}\t1\n" for u in range(4) for k in range(4))
        write(d / folder / "train.txt", train)
        write(d / folder / "test_original.txt", "".join(f"{u}\t{(u + 4) % n_items}\t1\n" for u in range(4)))
        write(d / folder / "test.txt", "".join(f"{u}\t{(u + 4) % n_items}\t1\n" for u in range(3)))
    return root


# -- loaders -----------------------------------------------------------------------------------------
def test_tabular_csv_with_items_dates_and_cleaning(tmp_path):
    tabular_fixture(tmp_path)
    loader = TabularLoader("shop", "events.csv", "products.csv", data_dir=tmp_path, folder="shop",
                           columns={"user": "customer", "item": "sku", "timestamp": "ts", "rating": "stars"},
                           item_columns={"item": "sku", "text": ["title", "brand"], "category": "cat"},
                           user_prefix="shop:")
    d = loader.load()
    assert loader.last_cleaning == {"rows": 7, "missing_ids": 1, "duplicates": 1, "kept": 5}
    inter = d.interactions.set_index(["user", "item"])
    assert inter.loc[("shop:c1", "a"), "rating"] == 4.0  # the latest of the repeated pair
    assert inter.loc[("shop:c1", "a"), "timestamp"] == int(pd.Timestamp("2024-01-03T10:00:00Z").timestamp())
    items = d.items.set_index("item")
    assert items.loc["a", "text"] == "Red, mug. Acme" and items.loc["b", "text"] == "Blue pen"
    assert items.loc["d", "category"] == "misc"  # listed but never bought: a cold-start item
    assert d.interactions["timestamp"].dtype == "int64"


def test_tabular_headerless_tsv_parquet_and_split_column(tmp_path):
    write(tmp_path / "x.tsv", "1\t10\t4\n1\t11\t5\n2\t10\t3\n")
    d = TabularLoader("x", "x.tsv", data_dir=tmp_path, header=False, names=["user", "item", "rating"]).load()
    assert list(d.interactions["timestamp"]) == [0, 1, 0]  # row order within a user
    pd.DataFrame({"u": [1, 1, 1, 2, 2, 2], "i": [5, 6, 7, 5, 6, 8], "t": [1, 2, 3, 1, 2, 3],
                  "split": ["train", "valid", "test"] * 2}).to_parquet(tmp_path / "x.parquet")
    d = TabularLoader("p", "x.parquet", data_dir=tmp_path, columns={"user": "u", "item": "i", "timestamp": "t"}).load()
    assert set(d.interactions["split"]) == {"train", "valid", "test"} and d.interactions["user"].iloc[0] == "1"
    cols = {"user": "u", "item": "i", "timestamp": "t"}
    scn = build_scenario(TabularLoader("p", "x.parquet", data_dir=tmp_path, columns=cols),
                         TabularLoader("q", "x.parquet", data_dir=tmp_path, columns=cols),
                         {**SPLIT, "protocol": "given", "cold_user_share": 0.0})
    assert len(scn.target.train) == len(scn.target.valid) == len(scn.target.test) == 2


def test_recbole_atomic_files_and_benchmark_split(tmp_path):
    ml_fixture(tmp_path)
    loader = RecBoleLoader("ml", "ml-100k", data_dir=tmp_path, folder="movielens-100k", user_file="ml-100k.user",
                           text_fields=["movie_title", "release_year"], category_field="class")
    d = loader.load()
    assert len(d.items) == 7 and d.items.set_index("item").loc["1", "text"] == "Toy Story. 1995"
    assert "rating" in d.interactions and d.interactions["timestamp"].min() > 880000000
    assert len(loader.files()) == 3
    # RecBole's benchmark files (<dataset>.train.inter, ...) become the given split
    root = tmp_path / "bench"
    head = "user_id:token\titem_id:token\n"
    write(root / "b.train.inter", head + "u1\ti1\nu1\ti2\nu2\ti1\n")
    write(root / "b.valid.inter", head + "u1\ti3\n")
    write(root / "b.test.inter", head + "u1\ti4\nu2\ti3\n")
    d = RecBoleLoader("b", "b", data_dir=root, benchmark=["train", "valid", "test"]).load()
    got = d.interactions.groupby("split").size().to_dict()
    assert got == {"train": 3, "valid": 1, "test": 2}
    assert list(d.interactions.query("user == 'u1'").sort_values("timestamp")["item"]) == ["i1", "i2", "i3", "i4"]


def test_movielens_genre_groups_are_disjoint_and_follow_the_rule(tmp_path):
    ml_fixture(tmp_path)
    doms = {g: MovieLensGenreLoader(f"ml_{g}", g, dataset="ml-100k", data_dir=tmp_path, folder="movielens-100k",
                                    user_prefix="ml:").load() for g in ("action", "comedy", "drama")}
    items = {g: set(d.items["item"]) for g, d in doms.items()}
    # most labels wins; ties -> drama, comedy, action; 'unknown' -> none
    assert items == {"action": {"2", "4"}, "comedy": {"1"}, "drama": {"3", "5", "7"}}
    for g, d in doms.items():
        assert set(d.interactions["item"]) <= items[g]
        assert d.interactions["user"].str.startswith("ml:").all()
    assert doms["comedy"].items["category"].iloc[0] == "Animation Children's Comedy"


def test_arts_office_sequences(tmp_path):
    arts_office_fixture(tmp_path)
    arts = ArtsOfficeLoader("a", "arts", data_dir=tmp_path).load()
    office = ArtsOfficeLoader("o", "office", data_dir=tmp_path).load()
    assert set(arts.interactions["user"]) == set(office.interactions["user"]) == {"R0", "R1", "R2"}
    assert set(arts.items["item"]) == {"0", "1", "2"} and set(office.items["item"]) == {"3", "4", "5"}
    r1 = arts.interactions.query("user == 'R1'").sort_values("timestamp")
    # history 1,0,1 (the repeated 1 collapses to the later one) + line-2 target 2 (test)
    assert list(r1["item"]) == ["0", "1", "2"] and r1.set_index("item").loc["2", "split"] == "test"
    assert office.interactions.query("user == 'R1' and item == '3'")["split"].item() == "test"
    assert office.interactions.query("user == 'R2' and item == '3'")["split"].item() == "valid"
    assert arts.items.set_index("item").loc["0", "text"] == "clover clips. arts crafts sewing clover"


def test_food_kitchen_sequences(tmp_path):
    food_kitchen_fixture(tmp_path)
    food = FoodKitchenLoader("f", "food", data_dir=tmp_path).load()
    kitchen = FoodKitchenLoader("k", "kitchen", data_dir=tmp_path).load()
    fu, ku = set(food.interactions["user"]), set(kitchen.interactions["user"])
    assert fu & ku == {"foodkitchen:overlap:1", "foodkitchen:valid:1", "foodkitchen:test:1"}
    assert "foodkitchen:A:1" in fu - ku and "foodkitchen:B:2" in ku - fu
    assert set(food.items["item"]) == {"F0", "F1", "F2"}
    assert kitchen.items.set_index("item").loc["K2", "text"] == '"Pan" 10in'
    # valid line 2,5,1,4: target 4 is Kitchen -> kitchen valid; test line target 1 is Food -> food test
    assert kitchen.interactions.query("user == 'foodkitchen:valid:1' and item == 'K1'")["split"].item() == "valid"
    assert food.interactions.query("user == 'foodkitchen:test:1' and item == 'F1'")["split"].item() == "test"
    assert (food.interactions.query("user == 'foodkitchen:valid:1'")["split"] == "train").all()


def test_unisrec_rebuilds_sequences_with_truncated_histories(tmp_path):
    seqs = {0: list(range(8)), 1: [3, 4, 5], 2: [7, 1, 2, 7, 5, 6]}
    unisrec_fixture(tmp_path, seqs, maxlen=3)
    loader = UniSRecLoader("s", "Scientific", data_dir=tmp_path, folder="amazon-scientific",
                           cleaning={"dedupe": False})
    d = loader.load()
    for u, s in seqs.items():
        got = d.interactions.query(f"user == 'REV{u}'").sort_values("timestamp")
        assert list(got["item"]) == [f"ASIN{i}" for i in s]
        assert list(got["split"])[-2:] == ["valid", "test"]
    items = d.items.set_index("item")
    assert items.loc["ASIN1", "category"] == "Industrial & Scientific Tools"
    assert items.loc["ASIN1", "text"].startswith("Thing 1, v2.")
    assert UniSRecLoader("s", "Scientific", data_dir=tmp_path, folder="amazon-scientific").load() \
        .interactions.query("user == 'REV2'")["item"].tolist().count("ASIN7") == 1  # dedupe keeps the later 7


def test_disencdr_pair_shares_users(tmp_path):
    disencdr_fixture(tmp_path)
    sport = DisenCDRLoader("s", "sport_cloth", "sport", data_dir=tmp_path).load()
    cloth = DisenCDRLoader("c", "sport_cloth", "cloth", data_dir=tmp_path).load()
    assert set(sport.interactions["user"]) == set(cloth.interactions["user"])
    assert sport.interactions["user"].iloc[0].startswith("disencdr:sport_cloth:")
    assert len(sport.items) == 6 and len(cloth.items) == 5
    assert sport.interactions.groupby("split").size().to_dict() == {"test": 4, "train": 12, "valid": 4}
    last = sport.interactions.sort_values("timestamp").groupby("user").tail(1)
    assert (last["split"] == "test").all()
    short = DisenCDRLoader("s", "sport_cloth", "sport", data_dir=tmp_path, test_file="test.txt").load()
    assert (short.interactions["split"] == "test").sum() == 3


# -- cleaning ----------------------------------------------------------------------------------------
def test_cleaning_steps_and_counts(caplog):
    df = pd.DataFrame({"user": ["a", "a", "a", "b", "b", "c", "c", None, "d"],
                       "item": ["x", "y", "x", "x", "y", "z", "w", "x", "x"],
                       "timestamp": [1, 2, 3, 1, 2, 1, 2, 1, 1], "rating": [5, 5, 4, 5, 5, 5, 2, 5, 1]})
    cfg = CleaningConfig.from_dict({"min_rating": 4, "k_core": {"user": 2, "item": 2}})
    with caplog.at_level("INFO", logger="tlexp.data.cleaning"):
        out, counts = clean_interactions(df, cfg, "t")
    assert counts == {"rows": 9, "missing_ids": 1, "duplicates": 1, "below_min_rating": 2, "k_core": 1, "kept": 4}
    assert sorted(zip(out["user"], out["item"], strict=True)) == [("a", "x"), ("a", "y"), ("b", "x"), ("b", "y")]
    assert out.set_index(["user", "item"]).loc[("a", "x"), "timestamp"] == 3
    assert "k_core removed 1" in caplog.text
    with pytest.raises(DataError, match="unknown key"):
        CleaningConfig.from_dict({"kcore": 5})


# -- bad input: one clear line naming the file and the field ------------------------------------------
def test_missing_folder_and_file(tmp_path):
    with pytest.raises(DataError, match=r"data folder .*nowhere.* not found; set TLEXP_DATA_DIR"):
        DisenCDRLoader("d", "sport_cloth", "sport", data_dir=tmp_path / "nowhere").load()
    disencdr_fixture(tmp_path)
    (tmp_path / "amazon-disencdr" / "sport_cloth" / "test_original.txt").unlink()
    with pytest.raises(DataError, match=r"input file .*sport_cloth/test_original.txt not found"):
        DisenCDRLoader("d", "sport_cloth", "sport", data_dir=tmp_path).fingerprint()


def test_wrong_column_name(tmp_path):
    tabular_fixture(tmp_path)
    with pytest.raises(DataError, match=r"column 'client' \(columns.user\) not found in .*events.csv.*customer"):
        TabularLoader("shop", "events.csv", data_dir=tmp_path, folder="shop",
                      columns={"user": "client", "item": "sku"}).load()
    ml_fixture(tmp_path)
    with pytest.raises(DataError, match=r"column 'movie' \(text_fields\[movie\]\) not found in .*ml-100k.item"):
        RecBoleLoader("ml", "ml-100k", data_dir=tmp_path, folder="movielens-100k", text_fields=["movie"]).load()


@pytest.mark.parametrize("case", ["csv_fields", "timestamp", "recbole_type", "arts_token", "food_line", "disencdr_row"])
def test_malformed_rows(tmp_path, case):
    if case == "csv_fields":
        write(tmp_path / "e.csv", "user,item\nu1,i1\nu2,i2,extra,more\n")
        loader, pat = TabularLoader("e", "e.csv", data_dir=tmp_path), r"malformed row in .*e.csv: .*line 3"
    elif case == "timestamp":
        write(tmp_path / "e.csv", "user,item,timestamp\nu1,i1,100\nu2,i2,soon\n")
        loader, pat = TabularLoader("e", "e.csv", data_dir=tmp_path), r"e.csv, column 'timestamp', data row 2: 'soon'"
    elif case == "recbole_type":
        write(tmp_path / "r.inter", "user_id:token\titem_id:tokn\nu\ti\n")
        loader = RecBoleLoader("r", "r", data_dir=tmp_path)
        pat = r"r.inter: header field 'item_id:tokn' has unknown type"
    elif case == "arts_token":
        arts_office_fixture(tmp_path)
        p = tmp_path / "amazon-arts-office" / "valid_F2.txt"
        p.write_text(p.read_text().replace("5|1|1", "five|1|1", 1))
        loader, pat = ArtsOfficeLoader("a", "arts", data_dir=tmp_path), r"valid_F2.txt line 1: .*'five\|1\|1'"
    elif case == "food_line":
        food_kitchen_fixture(tmp_path)
        write(tmp_path / "amazon-food-kitchen" / "test.txt", "1\t0,3,x\n")
        loader, pat = FoodKitchenLoader("f", "food", data_dir=tmp_path), r"test.txt line 1: expected 'uid <TAB> id,id"
    else:
        disencdr_fixture(tmp_path)
        write(tmp_path / "amazon-disencdr" / "cloth_sport" / "train.txt", "0\t1\t1\n1\t2\n")
        loader = DisenCDRLoader("c", "sport_cloth", "cloth", data_dir=tmp_path)
        pat = r"train.txt, data row 2: expected 3"
    with pytest.raises(DataError, match=pat) as info:
        loader.load()
    assert "\n" not in str(info.value)


def test_empty_domain_after_filtering(tmp_path):
    douban_fixture(tmp_path)
    loader = TabularLoader("b", "douban_book_ratings.dat", data_dir=tmp_path, folder="douban-book-music",
                           header=False, names=["user", "item", "rating"], cleaning={"min_rating": 6})
    with pytest.raises(DataError, match=r"domain 'b' \(douban_book_ratings.dat\): no interactions left after "
                                        r"cleaning step 'below_min_rating'; lower cleaning.min_rating"):
        loader.load()
    no_rating = TabularLoader("b", "douban_book_ratings.dat", data_dir=tmp_path, folder="douban-book-music",
                              header=False, names=["user", "item", "rating"], columns={"rating": None},
                              cleaning={"min_rating": 4})
    with pytest.raises(DataError, match="needs a rating column"):
        no_rating.load()


# -- cache: a changed file invalidates, a failure leaves nothing ------------------------------------------
def test_cache_key_follows_the_files_and_failures_leave_no_entry(tmp_path):
    douban_fixture(tmp_path)
    cache = tmp_path / "cache"

    def loaders():
        kw = dict(data_dir=tmp_path, folder="douban-book-music", header=False, names=["user", "item", "rating"])
        return (TabularLoader("book", "douban_book_ratings.dat", **kw),
                TabularLoader("music", "douban_music_ratings.dat", **kw))

    first = build_scenario(*loaders(), SPLIT, cache)
    again = build_scenario(*loaders(), SPLIT, cache)
    assert again.cache_hit and again.key == first.key
    music = tmp_path / "douban-book-music" / "douban_music_ratings.dat"
    st = music.stat()
    os.utime(music, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: same bytes, new mtime
    touched = build_scenario(*loaders(), SPLIT, cache)
    assert touched.key != first.key and not touched.cache_hit
    music.write_text(music.read_text() + "99\t1\t5\n99\t2\t4\n99\t3\t3\n")  # changed content
    changed = build_scenario(*loaders(), SPLIT, cache)
    assert changed.key not in (first.key, touched.key) and "99" in changed.target.users
    entries = set(os.listdir(cache / "scenarios"))
    music.write_text(music.read_text() + "100\t7\n")  # malformed: the build fails half-way
    with pytest.raises(DataError, match=r"douban_music_ratings.dat, column 'rating', data row \d+ is empty"):
        build_scenario(*loaders(), SPLIT, cache)
    assert set(os.listdir(cache / "scenarios")) == entries  # no half-written (or temporary) entry
    assert all((cache / "scenarios" / e / ".complete").exists() for e in entries)
