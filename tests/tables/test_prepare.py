"""prepare for tables on real slices and crafted messy files: roles inferred as a person
would, every quarantine reason, a ledger that ignores row order, column order and CSV
formatting, rows that come back with their split, a given split column."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from reprotrain.config_kinds import ColumnsConfig
from reprotrain.errors import ConfigError, DataError
from reprotrain.tables import records
from reprotrain.tables.prepare import Options, prepare_table
from reprotrain.tables.schema import Schema
from tests.tables.conftest import write_csv


def options(**columns: Any) -> Options:
    return Options(
        ColumnsConfig(**columns),
        val_fraction=0.15,
        test_fraction=0.15,
        test_from_val=0.5,
        shard_size=64,
        max_categories=50,
        sequence_length=20,
        seed=42,
    )


def run(source: Path, work: Path, opts: Options | None = None) -> tuple[dict, Path]:
    """prepare ``source`` as fetch would have left it; the stats and the prepared dir.
    ``work`` keeps the ledger and the last schema between runs."""
    raw = work / "raw"
    shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir(parents=True)
    shutil.copy(source, raw / source.name)
    out = work / "prepared"
    stats = prepare_table(raw, out, opts or options(), work / "splits.csv", work / "schema.json")
    return stats, out


def ledger(work: Path) -> list[list[str]]:
    return list(csv.reader((work / "splits.csv").open()))


def quarantine(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "quarantine.csv").open(encoding="utf-8")))


# ------------------------------------------------------------------ real slices


def test_churn_is_numbers_and_categories(churn_csv: Path, tmp_path: Path) -> None:
    stats, out = run(churn_csv, tmp_path)
    schema = Schema.load(out)
    assert set(schema.categorical) == {
        "state",
        "area_code",
        "international_plan",
        "voice_mail_plan",
    }
    assert len(schema.numeric) == 15 and not schema.text
    assert schema.labels == ("0", "1") and schema.label == "label"
    assert stats["rows_read"] == 300 and stats["quarantined"] == 0
    assert {s: v["total"] for s, v in stats["splits"].items()} == {
        "train": 210,
        "val": 45,
        "test": 45,
    }
    for split in ("val", "test"):  # exactly stratified: each class's share per split
        per = stats["splits"][split]["per_class"]
        total = {c: sum(stats["splits"][s]["per_class"][c] for s in stats["splits"]) for c in per}
        assert all(abs(per[c] - 0.15 * total[c]) <= 0.5 for c in per)
    assert json.loads((out / "labels.json").read_text()) == ["0", "1"]
    frame = records.read_frame(out, "test")
    assert len(frame) == 45 and set(frame["label"]) <= {"0", "1"}
    raw = {int(r["account_length"]) for r in csv.DictReader(churn_csv.open())}
    assert set(frame["account_length"].astype(int)) <= raw


def test_topics8_is_text(topics8_csv: Path, tmp_path: Path) -> None:
    stats, out = run(topics8_csv, tmp_path)
    schema = Schema.load(out)
    assert schema.text == ("text",) and not schema.numeric and not schema.categorical
    assert len(schema.labels) >= 5
    assert stats["truncated_texts"] > 0  # fortunes longer than 20 tokens
    assert stats["inferred"] == ["label", "text", "numeric", "categorical"]


def test_trump_is_text_and_numbers(trump_csv: Path, tmp_path: Path) -> None:
    _, out = run(trump_csv, tmp_path)
    schema = Schema.load(out)
    assert schema.text == ("text",)
    assert schema.numeric == ("retweet_count", "favorite_count", "hour")
    assert schema.inputs == ("text", "retweet_count", "favorite_count", "hour")


# ------------------------------------------------------------------ quarantine


def messy(path: Path) -> Path:
    rows = [
        b"review,price,country,label",
        *(
            f"text number {i},{i}.5,{'fr' if i % 2 else 'de'},{'good' if i % 3 else 'bad'}".encode()
            for i in range(30)
        ),
        b"no label here,1.0,fr,",  # missing label
        b"a price that is not one,abc,fr,good",  # not a number
        b"too,many,fields,here,good",  # field count
        b"caf\xe9 latin-1,2.0,fr,bad",  # not UTF-8
        b'"a huge text ' + b"word " * 500 + b'",3.0,de,good',  # kept, truncated
        b"",  # a blank line is no row
    ]
    path.write_bytes(b"\r\n".join(rows))
    return path


def test_every_bad_row_is_quarantined_with_its_line_and_reason(tmp_path: Path) -> None:
    source = messy(tmp_path / "messy.csv")
    stats, out = run(source, tmp_path / "w", options(numeric=("price",), text=("review",)))
    q = {int(r["line"]): r for r in quarantine(out)}
    assert q[32]["reason"] == "missing label"
    assert q[33]["reason"].startswith("not a number in numeric column 'price': abc")
    assert q[34]["reason"].startswith("5 fields, expected 4")
    assert q[35]["reason"] == "undecodable bytes (not UTF-8)" and "\\xe9" in q[35]["excerpt"]
    assert set(q) == {32, 33, 34, 35}
    assert stats["rows"] == 31 and stats["rows_read"] == 35
    assert stats["truncated_texts"] == 1
    assert stats["quarantined_by_reason"] == {
        "5 fields, expected 4": 1,
        "missing label": 1,
        "not a number in numeric column 'price'": 1,
        "undecodable bytes": 1,
    }


def test_a_file_mostly_quarantined_is_called_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [f"caf\xe9 {i},{'a' if i % 2 else 'b'}".encode("latin-1") for i in range(20)]
    rows += [f"plain {i},{'a' if i % 2 else 'b'}".encode() for i in range(10)]
    (tmp_path / "latin1.csv").write_bytes(b"\n".join([b"text,label", *rows]))
    stats, _ = run(tmp_path / "latin1.csv", tmp_path / "w")
    assert stats["quarantined_by_reason"] == {"undecodable bytes": 20} and stats["rows"] == 10
    assert "20 of 30 rows were quarantined, most for 'undecodable bytes'" in caplog.text


def test_an_empty_text_is_quarantined_when_text_is_the_only_input(tmp_path: Path) -> None:
    rows = [[f"words {i}", "a" if i % 2 else "b"] for i in range(12)] + [["", "a"], ["NA", "b"]]
    source = write_csv(tmp_path / "t.csv", ["text", "label"], rows)
    stats, out = run(source, tmp_path / "w")
    assert [r["reason"] for r in quarantine(out)] == ["empty text (the only input)"] * 2
    assert stats["rows"] == 12


def test_duplicates_are_one_row_and_conflicting_ones_are_all_quarantined(tmp_path: Path) -> None:
    rows = [[f"t{i}", i, "a" if i % 2 else "b"] for i in range(20)]
    rows += [["t3", "3.0", "a"], [" t3 ", "3", "a"]]  # the same row as t3, written otherwise
    rows += [["t4", 4, "a"], ["t4", 4, "a"]]  # t4 is "b": three rows disagree
    source = write_csv(tmp_path / "d.csv", ["text", "n", "label"], rows)
    stats, out = run(source, tmp_path / "w")
    assert stats["duplicates"] == 2 and stats["conflicting_duplicates"] == 3
    q = quarantine(out)
    assert sorted(int(r["line"]) for r in q) == [6, 24, 25]
    assert all(r["reason"].startswith("conflicting duplicate") for r in q)
    frames = [records.read_frame(out, s) for s in ("train", "val", "test")]
    texts = [t for f in frames for t in f["text"]]
    assert texts.count("t3") == 1 and "t4" not in texts and len(texts) == 19


def test_a_missing_column_is_one_line_naming_the_columns(churn_csv: Path, tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"data.columns.text names 'review'.*state, account_length"
    ):
        run(churn_csv, tmp_path, options(text=("review",)))
    with pytest.raises(ConfigError, match="no label column"):
        source = write_csv(tmp_path / "x.csv", ["a", "b"], [[1, 2]])
        run(source, tmp_path / "w")


def test_a_class_too_small_to_split_is_quarantined(tmp_path: Path) -> None:
    rows = [[f"t{i}", "a" if i % 2 else "b"] for i in range(12)] + [["rare", "c"]]
    _, out = run(write_csv(tmp_path / "c.csv", ["text", "label"], rows), tmp_path / "w")
    assert next(r["reason"] for r in quarantine(out)).startswith("class too small: 'c'")
    assert Schema.load(out).labels == ("a", "b")


# ------------------------------------------------------------------ the ledger


def test_reordered_re_exported_csv_gives_the_same_ledger(churn_csv: Path, tmp_path: Path) -> None:
    import pandas as pd

    run(churn_csv, tmp_path / "a")
    frame = pd.read_csv(churn_csv)
    frame = frame.sample(frac=1.0, random_state=1)[list(reversed(frame.columns))]
    frame["total_day_minutes"] = frame["total_day_minutes"].map(lambda x: f"{x:.3f}")
    other = tmp_path / "re-exported.csv"
    frame.to_csv(other, index=False, quoting=csv.QUOTE_ALL)
    run(other, tmp_path / "b")
    assert ledger(tmp_path / "a") == ledger(tmp_path / "b")
    parquet = tmp_path / "churn.parquet"
    pd.read_csv(churn_csv).to_parquet(parquet)
    stats, _ = run(parquet, tmp_path / "c")
    assert ledger(tmp_path / "c") == ledger(tmp_path / "a") and stats["rows"] == 300


def test_removed_rows_come_back_with_their_split(churn_csv: Path, tmp_path: Path) -> None:
    rows = list(csv.reader(churn_csv.open(newline="")))
    header, body = rows[0], rows[1:]
    run(churn_csv, tmp_path)
    before = {r[0]: r[2] for r in ledger(tmp_path)[1:]}
    kept, gone = (
        [r for i, r in enumerate(body) if i % 5],
        [r for i, r in enumerate(body) if not i % 5],
    )
    stats, _ = run(write_csv(tmp_path / "less" / "churn.csv", header, kept), tmp_path)
    assert stats["ledger"]["removed"] == 60
    assert sum(r[3] == "no" for r in ledger(tmp_path)[1:]) == 60
    new = [[*r[:-2], str(float(r[-2]) + 100), r[-1]] for r in body[:40]]  # 40 new rows
    stats, _ = run(write_csv(tmp_path / "more" / "churn.csv", header, kept + new + gone), tmp_path)
    after = {r[0]: r[2] for r in ledger(tmp_path)[1:]}
    assert stats["ledger"]["returned"] == 60 and stats["rows"] == 340
    assert all(after[k] == v for k, v in before.items())
    assert all(r[3] == "yes" for r in ledger(tmp_path)[1:])


def test_decimal_commas_give_the_dot_file_s_ledger(churn_csv: Path, tmp_path: Path) -> None:
    """churn as a spreadsheet saves it in a decimal-comma locale: ``;``-separated, ``1,5``."""
    run(churn_csv, tmp_path / "dot")
    rows = list(csv.reader(churn_csv.open(newline="")))
    comma = [[c.replace(".", ",") for c in r] for r in rows]
    assert any("," in c for c in comma[1])
    semi = tmp_path / "excel.csv"
    with semi.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter=";", lineterminator="\r\n").writerows(comma)
    stats, out = run(semi, tmp_path / "comma")
    assert ledger(tmp_path / "comma") == ledger(tmp_path / "dot")
    assert Schema.load(out).numeric == Schema.load(tmp_path / "dot" / "prepared").numeric
    assert "total_day_minutes" in stats["decimal_comma"] and stats["quarantined"] == 0
    dot = records.read_frame(tmp_path / "dot" / "prepared", "test")
    assert list(records.read_frame(out, "test")["total_day_minutes"]) == list(
        dot["total_day_minutes"]
    )
    # A dot beside the commas is ambiguous: the column is left as written (text).
    comma[1][comma[0].index("total_day_minutes")] = "1.234,5"
    with semi.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter=";").writerows(comma)
    stats, out = run(semi, tmp_path / "ambiguous")
    assert "total_day_minutes" not in stats["decimal_comma"]
    assert "total_day_minutes" not in Schema.load(out).numeric


def test_a_split_column_is_respected(tmp_path: Path) -> None:
    splits = ["train"] * 14 + ["val"] * 3 + ["test"] * 3
    rows = [[f"t{i}", i % 2, s] for i, s in enumerate(splits)]
    source = write_csv(tmp_path / "s.csv", ["text", "label", "fold"], rows)
    stats, out = run(source, tmp_path / "w", options(split="fold"))
    assert {s: v["total"] for s, v in stats["splits"].items()} == {"train": 14, "val": 3, "test": 3}
    assert list(records.read_frame(out, "val")["text"]) == ["t14", "t15", "t16"]
    assert Schema.load(out).role("fold") == "split"
    rows.append(["t99", 1, "holdout"])
    source = write_csv(tmp_path / "s.csv", ["text", "label", "fold"], rows)
    _, out = run(source, tmp_path / "w", options(split="fold"))
    assert quarantine(out)[0]["reason"].startswith("bad split value: 'holdout'")


def test_a_changed_schema_is_reported(
    trump_csv: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run(trump_csv, tmp_path)
    stats, _ = run(trump_csv, tmp_path, options(ignore=("hour",)))
    assert stats["schema_changes"] == ["column 'hour': numeric → ignore"]
    assert "schema changed since the last prepare: column 'hour'" in caplog.text


def test_dataset_round_trips_the_prepared_values(trump_csv: Path, tmp_path: Path) -> None:
    _, out = run(trump_csv, tmp_path)
    schema = Schema.load(out)
    frame = records.read_frame(out, "train")
    reader = csv.DictReader(trump_csv.open(newline="", encoding="utf-8"))
    source, start = {}, 2  # line → row (a tweet may span lines)
    for r in reader:
        source[start] = r
        start = reader.line_num + 1
    for line, row in frame.iloc[:50].iterrows():
        assert row["text"] == source[line]["text"].strip().replace("\r\n", "\n")
        assert row["hour"] == float(source[line]["hour"]) and row["label"] == source[line]["label"]
    ds = records.dataset(out, "train", schema, batch_size=64)
    got = {c: [] for c in schema.inputs}
    ids = []
    for x, y in ds.as_numpy_iterator():
        for c in schema.inputs:
            got[c].extend(x[c].tolist())
        ids.extend(y.tolist())
    assert [t.decode() for t in got["text"]] == list(frame["text"])
    np.testing.assert_array_equal(
        np.asarray(got["retweet_count"], np.float64), frame["retweet_count"]
    )
    assert [schema.labels[i] for i in ids] == list(frame["label"])


def test_no_usable_row_is_one_line(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "e.csv", ["text", "label"], [["x", ""], ["y", ""]])
    with pytest.raises(DataError, match="no usable row"):
        run(source, tmp_path / "w")


# The stages in a project (`dvc repro`: prepare and baseline tracked, a bad column reported
# in one line) are checked in tests/tables/test_e2e.py, on its project's trump run.
