"""``import movielens`` on damaged files: exit 2 and one line naming the file, the column and the line;
nothing written (an empty timestamp cell became -2**63, a date in 1677, before)."""
from __future__ import annotations

import numpy as np
import pytest

from trainer.cli import main
from trainer.datawrite import write_dataset
from trainer.io import DataError, load_dataset
from trainer.movielens import ML100K_GENRES

RATINGS = ["userId,movieId,rating,timestamp", "1,10,4.0,1260759144", "1,20,3.5,1260759179",
           "2,10,5.0,1260759182", "2,30,2.0,1260759185"]
MOVIES = ["movieId,title,genres", "10,Heat (1995),Action|Crime", "20,Babe (1995),Children|Drama",
          "30,Up (2009),(no genres listed)"]
U_DATA = ["1\t10\t4\t881250949", "1\t20\t3\t881250950", "2\t10\t5\t881250951", "2\t30\t2\t881250952"]
U_ITEM = [f"{k}|Movie {k} (1995)|01-Jan-1995||http://x|" + "|".join("1" if g == k % 19 else "0" for g in range(19))
          for k in (10, 20, 30)]


def _dir(tmp_path, files: dict[str, list[str]]):
    d = tmp_path / "ml"
    d.mkdir(parents=True, exist_ok=True)
    for name, lines in files.items():
        (d / name).write_text("\n".join(lines) + "\n")
    return d


def _edit(lines, row, col, value, sep=","):
    lines = list(lines)
    f = lines[row].split(sep)
    f[col] = value
    lines[row] = sep.join(f)
    return lines


def _refused(d, tmp_path, capsys) -> str:
    out = tmp_path / "out"
    assert main(["import", "movielens", str(d), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("recserve-train: error: "), err
    assert not out.exists()
    return err.strip()[len("recserve-train: error: "):]


def test_the_good_files_import(tmp_path, capsys):
    for files in ({"ratings.csv": RATINGS, "movies.csv": MOVIES}, {"u.data": U_DATA, "u.item": U_ITEM}):
        d = _dir(tmp_path / next(iter(files)), files)
        assert main(["import", "movielens", str(d), str(tmp_path / "out" / d.parent.name)]) == 0
        ds = load_dataset(tmp_path / "out" / d.parent.name)
        assert len(ds) == 4 and ds.n_users == 2 and ds.n_items == 3
        assert ds.ts.min() > 8e8 and ds.item_ids.tolist() == ["10", "20", "30"]


@pytest.mark.parametrize("row, col, value, says", [
    (3, 3, "", "ratings.csv: column timestamp has 1 empty value(s), the first on line 4"),
    (2, 3, "soon", "ratings.csv: column timestamp has 1 value(s) that are not finite numbers, the first 'soon' "
                   "on line 3"),
    (1, 3, "1e300", "ratings.csv: column timestamp has 1 time(s) before the year 1 or after 9999, the first "
                    "1e+300 on line 2"),
    (4, 2, "", "ratings.csv: column rating has 1 empty value(s), the first on line 5"),
    (2, 2, "good", "ratings.csv: column rating has 1 value(s) that are not finite numbers, the first 'good' "
                   "on line 3"),
    (2, 2, "inf", "ratings.csv: column rating has 1 value(s) that are not finite numbers, the first inf on line 3"),
    (2, 2, "0", "ratings.csv: column rating has 1 rating(s) outside MovieLens' 0.5 to 5 stars, the first 0.0 "
                "on line 3"),
    (4, 2, "50", "ratings.csv: column rating has 1 rating(s) outside MovieLens' 0.5 to 5 stars, the first 50.0 "
                 "on line 5"),
    (3, 0, "", "ratings.csv: column userId has 1 empty id(s), the first on line 4"),
    (1, 1, " ", "ratings.csv: column movieId has 1 empty id(s), the first on line 2"),
])
def test_bad_ratings_cells_name_file_column_and_line(tmp_path, capsys, row, col, value, says):
    d = _dir(tmp_path, {"ratings.csv": _edit(RATINGS, row, col, value), "movies.csv": MOVIES})
    assert _refused(d, tmp_path, capsys) == says


def test_lines_count_the_empty_lines_pyarrow_skips(tmp_path, capsys):
    lines = _edit(RATINGS, 4, 3, "")
    d = _dir(tmp_path, {"ratings.csv": lines[:2] + ["", ""] + lines[2:], "movies.csv": MOVIES})
    assert _refused(d, tmp_path, capsys) == "ratings.csv: column timestamp has 1 empty value(s), the first on line 7"


def test_times_in_milliseconds_read_as_the_build_reads_them_and_two_data_sets_in_one_directory_are_refused(
        tmp_path, capsys):
    """Milliseconds since 1970 were refused as "before the year 1 or after 9999", though the build reads
    them; a directory with both u.data and ratings.csv was imported as ml-100k without a word."""
    ms = [RATINGS[0]] + [",".join(r.split(",")[:3] + [r.split(",")[3] + "000"]) for r in RATINGS[1:]]
    d = _dir(tmp_path / "ms", {"ratings.csv": ms, "movies.csv": MOVIES})
    assert main(["import", "movielens", str(d), str(tmp_path / "ms_out")]) == 0
    assert load_dataset(tmp_path / "ms_out").ts.tolist() == [1260759144.0, 1260759179.0, 1260759182.0, 1260759185.0]
    both = _dir(tmp_path / "both", {"ratings.csv": RATINGS, "movies.csv": MOVIES, "u.data": U_DATA, "u.item": U_ITEM})
    assert _refused(both, tmp_path, capsys) == (f"{both}: holds both ml-100k (u.data) and ml-latest (ratings.csv): "
                                                "import one at a time, each from a directory of its own")


@pytest.mark.parametrize("row, col, value, says", [
    (3, 3, "", "u.data: column timestamp has 1 empty value(s), the first on line 4"),
    (0, 2, "x", "u.data: column rating has 1 value(s) that are not finite numbers, the first 'x' on line 1"),
    (1, 0, "", "u.data: column user id has 1 empty id(s), the first on line 2"),
    (1, 2, "-5", "u.data: column rating has 1 rating(s) outside MovieLens' 0.5 to 5 stars, the first -5 on line 2"),
    (2, 3, "4102444800", "u.data: column timestamp has 1 time(s) more than a day after this machine's clock, "
                         "the first 4102444800 on line 3"),       # 2100: build would refuse it
])
def test_bad_u_data_cells_name_file_column_and_line(tmp_path, capsys, row, col, value, says):
    d = _dir(tmp_path, {"u.data": _edit(U_DATA, row, col, value, "\t"), "u.item": U_ITEM})
    assert _refused(d, tmp_path, capsys) == says


@pytest.mark.parametrize("files, says", [
    ({"ratings.csv": [RATINGS[0].replace("userId", "user")] + RATINGS[1:], "movies.csv": MOVIES},
     "ratings.csv: missing column(s) 'userId' (has 'user', 'movieId', 'rating', 'timestamp')"),
    ({"ratings.csv": [",".join(x.split(",")[:3]) for x in RATINGS], "movies.csv": MOVIES},
     "ratings.csv: missing column(s) 'timestamp' (has 'userId', 'movieId', 'rating')"),
    ({"ratings.csv": RATINGS, "movies.csv": [",".join(x.split(",")[::2]) for x in MOVIES]},
     "movies.csv: missing column(s) 'title' (has 'movieId', 'genres')"),
    ({"ratings.csv": RATINGS, "movies.csv": MOVIES + [MOVIES[2]]},
     "movies.csv: column movieId has 1 duplicate id(s), the first '20' on line 5"),
    ({"ratings.csv": [RATINGS[0] + ",userId"] + [x + ",9" for x in RATINGS[1:]], "movies.csv": MOVIES},
     "ratings.csv: duplicate column(s) 'userId'"),
    ({"ratings.csv": RATINGS[:1], "movies.csv": MOVIES}, "no ratings"),
    ({"u.data": U_DATA[:2] + ["1\t30\t4"], "u.item": U_ITEM}, "u.data: cannot parse: CSV parse error: Row #3: "
                                                             "Expected 4 columns, got 3: 1\t30\t4"),
    ({"u.data": U_DATA, "u.item": U_ITEM[:2] + ["30|Short"]},
     "u.item: line 3 has 2 field(s), not 24 (id|title|release date|video release date|IMDb URL|19 genre flags)"),
    ({"u.data": U_DATA, "u.item": U_ITEM + [U_ITEM[0]]}, "u.item: movie id '10' on line 4 is on line 1 already"),
])
def test_missing_columns_and_malformed_files_are_one_line(tmp_path, capsys, files, says):
    assert _refused(_dir(tmp_path, files), tmp_path, capsys) == says


def test_a_data_set_without_times_is_not_written(tmp_path):
    from trainer.synth import synth

    ds, _ = synth(20, 10, seed=0)
    ds.ts = ds.ts.copy()
    ds.ts[3] = np.nan
    with pytest.raises(DataError, match=r"^1 interaction\(s\) without a time"):
        write_dataset(ds, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _write_bytes(tmp_path, files: dict[str, bytes]):
    d = tmp_path / "ml"
    d.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (d / name).write_bytes(data)
    return d


def _csv(lines, end="\n") -> bytes:
    return (end.join(lines) + end).encode()


@pytest.mark.parametrize("end", ["\r", "\r\n"])
def test_lines_are_counted_with_any_line_ending(tmp_path, capsys, end):
    lines = _edit(RATINGS, 4, 3, "")
    d = _write_bytes(tmp_path, {"ratings.csv": _csv(lines[:2] + [""] + lines[2:], end), "movies.csv": _csv(MOVIES)})
    assert _refused(d, tmp_path, capsys) == "ratings.csv: column timestamp has 1 empty value(s), the first on line 6"


def test_lines_are_counted_past_titles_that_span_lines_or_hold_quotes(tmp_path, capsys):
    movies = [MOVIES[0], '10,"Heat\nthe long\r\ncut (1995)",Action', '20,Say "Hi" (1995),Drama',
              '30,"A ""B"", C (2009)",Drama', MOVIES[2]]
    d = _write_bytes(tmp_path, {"ratings.csv": _csv(RATINGS), "movies.csv": _csv(movies)})
    assert _refused(d, tmp_path, capsys) == "movies.csv: column movieId has 1 duplicate id(s), the first '20' on line 7"


@pytest.mark.parametrize("file, good, bad, says", [
    ("movies.csv", b"Babe (1995)", b"B\xe9b\xe9 (1995)", "movies.csv: column title has 1 value(s) that are not "
                                                         "UTF-8 text, the first on line 3"),
    ("movies.csv", b"Children|Drama", b"Enfants|Dram\xe9", "movies.csv: column genres has 1 value(s) that are "
                                                           "not UTF-8 text, the first on line 3"),
    ("ratings.csv", b"2,30,", b"\xff2,30,", "ratings.csv: column userId has 1 value(s) that are not UTF-8 text, "
                                            "the first on line 5"),
])
def test_text_that_is_not_utf8_is_refused_with_its_line(tmp_path, capsys, file, good, bad, says):
    files = {"ratings.csv": _csv(RATINGS), "movies.csv": _csv(MOVIES)}
    assert good in files[file]
    files[file] = files[file].replace(good, bad)
    assert _refused(_write_bytes(tmp_path, files), tmp_path, capsys) == says


@pytest.mark.parametrize("value", ["true", "1_0", "\u0663", "NA", "nan", "0x10", "4 stars"])
def test_ratings_must_be_plain_decimal_numbers(tmp_path, capsys, value):
    d = _dir(tmp_path, {"ratings.csv": _edit(RATINGS, 3, 2, value), "movies.csv": MOVIES})
    shown = "nan" if value == "nan" else repr(value)      # a column of numbers shows the number pyarrow read
    assert _refused(d, tmp_path, capsys) == ("ratings.csv: column rating has 1 value(s) that are not finite "
                                             f"numbers, the first {shown} on line 4")


def test_a_column_of_true_and_false_is_not_ratings(tmp_path, capsys):
    ratings = [RATINGS[0]] + [",".join(x.split(",")[:2] + ["true", x.split(",")[3]]) for x in RATINGS[1:]]
    d = _dir(tmp_path, {"ratings.csv": ratings, "movies.csv": MOVIES})
    assert _refused(d, tmp_path, capsys) == ("ratings.csv: column rating has 4 value(s) that are not finite "
                                             "numbers, the first True on line 2")


@pytest.mark.parametrize("flags", [18, 20])
def test_u_item_needs_exactly_19_genre_flags(tmp_path, capsys, flags):
    item = list(U_ITEM)
    item[1] = "|".join(item[1].split("|")[:5] + ["0"] * (flags - 1) + ["1"])
    d = _dir(tmp_path, {"u.data": U_DATA, "u.item": item})
    assert _refused(d, tmp_path, capsys) == (f"u.item: line 2 has {5 + flags} field(s), not 24 (id|title|release "
                                             "date|video release date|IMDb URL|19 genre flags)")


def test_u_item_titles_may_hold_bytes_that_are_line_breaks_to_python(tmp_path):
    item = [x.replace("Movie", "Mo\x85vie\x0b\x0c\x1c\x1d\x1e") for x in U_ITEM]
    d = _write_bytes(tmp_path, {"u.data": _csv(U_DATA), "u.item": _csv(item, "\r\n").decode().encode("latin-1")})
    assert main(["import", "movielens", str(d), str(tmp_path / "out")]) == 0
    ds = load_dataset(tmp_path / "out")
    assert ds.item_ids.tolist() == ["10", "20", "30"] and len(ds) == 4
    assert ds.item_category.tolist() == [ML100K_GENRES[k % 19] for k in (10, 20, 30)]
    assert (ds.item_created > 7.8e8).all()        # the year 1995 was read from each title's line


@pytest.mark.parametrize("col, value", [(1, "NA"), (1, "x1"), (1, "1.5"), (1, "-3"), (1, "1e3"), (1, " 10"),
                                        (1, "\u0661\u0660"), (0, "x"), (0, "NA")])
def test_ratings_ids_must_be_plain_decimal_integers(tmp_path, capsys, col, value):
    d = _dir(tmp_path, {"ratings.csv": _edit(RATINGS, 3, col, value), "movies.csv": MOVIES})
    name = ["userId", "movieId"][col]
    assert _refused(d, tmp_path, capsys) == (f"ratings.csv: column {name} has 1 id(s) that are not plain decimal "
                                             f"integers, the first {value!r} on line 4")


@pytest.mark.parametrize("col, value", [(1, "NA"), (1, "1.5"), (0, "x")])
def test_u_data_ids_must_be_plain_decimal_integers(tmp_path, capsys, col, value):
    d = _dir(tmp_path, {"u.data": _edit(U_DATA, 2, col, value, "\t"), "u.item": U_ITEM})
    name = ["user id", "item id"][col]
    assert _refused(d, tmp_path, capsys) == (f"u.data: column {name} has 1 id(s) that are not plain decimal "
                                             f"integers, the first {value!r} on line 3")


def test_movie_list_ids_must_be_plain_decimal_integers(tmp_path, capsys):
    d = _dir(tmp_path, {"ratings.csv": RATINGS, "movies.csv": _edit(MOVIES, 2, 0, "m20")})
    assert _refused(d, tmp_path, capsys) == ("movies.csv: column movieId has 1 id(s) that are not plain decimal "
                                             "integers, the first 'm20' on line 3")
    d = _dir(tmp_path / "100k", {"u.data": U_DATA, "u.item": _edit(U_ITEM, 1, 0, "NA", "|")})
    assert _refused(d, tmp_path / "100k", capsys) == "u.item: movie id 'NA' on line 2 is not a plain decimal integer"


def test_ratings_of_movies_not_in_the_movie_list_name_the_line_and_the_id(tmp_path, capsys):
    ratings = _edit(_edit(RATINGS, 2, 1, "99999999"), 4, 1, "40")
    d = _dir(tmp_path, {"ratings.csv": ratings, "movies.csv": MOVIES})
    assert _refused(d, tmp_path, capsys) == ("ratings.csv: column movieId has 2 id(s) of movies missing from "
                                             "movies.csv, the first '99999999' on line 3")
    d = _dir(tmp_path / "100k", {"u.data": _edit(U_DATA, 3, 1, "99999", "\t"), "u.item": U_ITEM})
    assert _refused(d, tmp_path / "100k", capsys) == ("u.data: column item id has 1 id(s) of movies missing "
                                                      "from u.item, the first '99999' on line 4")


def test_a_stray_quote_in_a_large_ratings_file_is_refused_naming_its_line(tmp_path, capsys):
    """The threaded CSV reader had dropped 48,154 of u.data's 100,000 lines after one, with exit 0."""
    lines = [f"{1 + k % 900}\t{(10, 20, 30)[k % 3]}\t4\t{881250949 + k}" for k in range(100_000)]
    lines[4999] = '"' + lines[4999]
    d = _dir(tmp_path, {"u.data": lines, "u.item": U_ITEM})
    assert _refused(d, tmp_path, capsys).startswith(("u.data: cannot parse: line 5000 opens a quoted value",
                                                     "u.data: cannot parse: CSV parse error: Row #5000: "))
