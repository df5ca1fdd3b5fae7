"""`tlexp data list` / `tlexp data describe` on fixture data written here (no ../shared needed)."""

from __future__ import annotations

import json

import pytest

from tlexp.cli.data import listing, main


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture()
def data(tmp_path):
    """Tiny movielens-100k (RecBole atomic) and douban-book-music (headerless TSV) folders."""
    ml = tmp_path / "data" / "movielens-100k"
    write(ml / "ml-100k.item", "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
          "1\tToy Story\t1995\tAnimation Children's Comedy\n2\tGoldenEye\t1995\tAction Adventure\n"
          "3\tHeat\t1995\tAction Crime\n4\tClueless\t1995\tComedy Romance\n5\tSabrina\t1995\tComedy\n")
    write(ml / "ml-100k.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
        f"{u}\t{i}\t{1 + (u + i) % 5}\t{880000000 + 100 * u + i}\n" for u in range(1, 9) for i in range(1, 6)))
    db = tmp_path / "data" / "douban-book-music"
    write(db / "douban_book_ratings.dat",
          "".join(f"{u}\t{i}\t{1 + (u + i) % 5}\n" for u in range(1, 9) for i in range(1, 6)))
    write(db / "douban_music_ratings.dat",
          "".join(f"{u}\t{i}\t{1 + u % 5}\n" for u in range(4, 12) for i in range(1, 5)))
    return tmp_path


def args(tmp_path, *extra, data_dir=None):
    return [f"paths.data_dir={data_dir or tmp_path / 'data'}", f"paths.cache_dir={tmp_path / 'cache'}", *extra]


def test_list_names_every_preset_and_domain(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    info = listing()
    for preset in ("arts_office", "food_kitchen", "books_movies", "douban_book_music", "sport_cloth",
                   "electronic_phone", "ml100k_genres", "scientific"):
        assert info["presets"][preset]["description"], preset
        assert preset in out
    assert info["presets"]["scientific"]["direction"] == "amazon_arts -> amazon_scientific"
    for name, d in info["domains"].items():
        assert d["description"] and not d["description"].startswith("@package"), name


def test_describe_table_and_json(data, capsys):
    assert main(["describe", "data=ml100k_genres", *args(data)]) == 0
    out = capsys.readouterr().out
    for label in ("users", "interactions", "density", "items with text", "overlap users", "cold-start users in test",
                  "interactions/user median", "interactions/user p90", "train", "valid", "test", "duplicates"):
        assert label in out, label
    assert main(["describe", "--json", "data=douban_book_music", "split=ratio", *args(data)]) == 0
    d = json.loads(capsys.readouterr().out)
    src, tgt = d["source"], d["target"]
    assert (src["domain"], tgt["domain"]) == ("douban_book", "douban_music")
    assert src["overlap_users"] == tgt["overlap_users"] == 5  # douban users 4..8 rate in both fixture files
    assert tgt["cold_start_users_in_test"] == 1 and src["cold_start_users_in_test"] == 0
    assert src["interactions"] == src["train"] + src["valid"] + src["test"] == src["cleaning"]["kept"]
    assert d["split"]["protocol"] == "ratio" and not d["cache_hit"]
    assert main(["describe", "--json", "data=douban_book_music", "split=ratio", *args(data)]) == 0
    assert json.loads(capsys.readouterr().out)["cache_hit"]


@pytest.mark.parametrize("extra,pattern", [
    (["data=ml100k_genres", "DATA=/nonexistent/x"], "data folder /nonexistent/x/movielens-100k not found"),
    (["data=no_such_preset"], "Could not find 'data/no_such_preset'"),
    (["data=ml100k_genres", "split=given"], "split=given needs the loader to provide a 'split' column"),
    (["data=douban_book_music", "+source.cleaning.kcore=5"], "unknown key(s) ['kcore']"),
    (["data=douban_book_music", "target.cleaning.min_rating=9"], "no interactions left after cleaning step"),
    (["data=douban_book_music", "source.columns.rating=stars"], "column 'stars' (columns.rating) not found"),
])
def test_describe_errors_are_one_red_line(data, capsys, extra, pattern):
    data_dir = next((e.split("=", 1)[1] for e in extra if e.startswith("DATA=")), None)
    extra = [e for e in extra if not e.startswith("DATA=")]
    assert main(["describe", *args(data, *extra, data_dir=data_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert pattern in err and err.startswith("error:") and len(err.splitlines()) == 1, err


def test_usage(capsys):
    assert main([]) == 2
    assert main(["--help"]) == 0
    assert main(["frobnicate"]) == 2
    assert "tlexp data describe" in capsys.readouterr().out
