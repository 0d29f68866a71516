"""Streaming the sources' CSV and JSON lines with pyarrow, and numbering their string ids as they pass.

A source file is read in blocks of BLOCK_BYTES (a JSON line longer than that is refused, pyarrow's own bound), only
the columns a converter names are parsed, and an id longer than MAX_ID_CHARS is refused: what a file holds cannot
make the converter's memory grow faster than the file itself.
"""
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson

from common.errors import ConfigError, DatasetError

BLOCK_BYTES = 16 << 20
MAX_ID_CHARS = 256


@dataclass
class Interactions:
    """Who interacted with what, when: one row per interaction, users and items as codes into the id lists."""
    users: np.ndarray                 # int64 [rows]
    items: np.ndarray                 # int64 [rows]
    times: np.ndarray | None          # int64 [rows] in `time_unit`; None: the file's order is the time order
    user_ids: list[str]
    item_ids: list[str]
    time_unit: str = "row order"
    skipped: dict = field(default_factory=dict)   # reason -> rows left out


class IdTable:
    """Numbers ids in order of first appearance: codes(batch column) -> int64 codes, `ids` the ids by code.
    With a `keep` fraction below 1 an id is kept when a hash of it falls below the fraction (the same ids on every
    run and machine); a dropped id's code is -1."""

    def __init__(self, what: str, path: Path, keep: float = 1.0):
        self.what, self.path, self.keep = what, path, keep
        self.codes_of: dict = {}
        self.ids: list = []

    def _code(self, value) -> int:
        code = self.codes_of.get(value)
        if code is None:
            text = str(value)
            if len(text) > MAX_ID_CHARS:
                raise DatasetError(f"{self.path}: a {self.what} id of {len(text)} characters (at most "
                                   f"{MAX_ID_CHARS}): {text[:40]}...")
            kept = self.keep >= 1 or zlib.crc32(text.encode()) < self.keep * 2**32
            code = len(self.ids) if kept else -1
            if kept:
                self.ids.append(value)
            self.codes_of[value] = code
        return code

    def codes(self, column: pa.ChunkedArray | pa.Array) -> np.ndarray:
        encoded = pc.dictionary_encode(column)
        chunks = encoded.chunks if isinstance(encoded, pa.ChunkedArray) else [encoded]
        out = [np.array([self._code(v) for v in chunk.dictionary.to_pylist()], dtype=np.int64)[
                   chunk.indices.to_numpy(zero_copy_only=False)] for chunk in chunks]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _refuse(path: Path, error: Exception) -> DatasetError:
    return DatasetError(f"{path}: {str(error).splitlines()[0][:300]}")


def stream_csv(path: Path, columns: dict[str, pa.DataType | None]):
    """Record batches of the named columns of a CSV with a header (None: the type pyarrow infers)."""
    header = csv_header(path)
    missing = [name for name in columns if name not in header]
    if missing:
        raise DatasetError(f"{path} has no column {', '.join(missing)} (its header: {', '.join(header)[:200]})")
    options = pcsv.ConvertOptions(include_columns=list(columns),
                                  column_types={name: kind for name, kind in columns.items() if kind is not None})
    try:
        with pcsv.open_csv(pa.input_stream(str(path)), read_options=pcsv.ReadOptions(block_size=BLOCK_BYTES),
                           convert_options=options) as reader:
            yield from reader
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise _refuse(path, e) from None


def csv_header(path: Path) -> list[str]:
    try:
        with pa.input_stream(str(path)) as stream:
            first = stream.read(1 << 16).split(b"\n", 1)[0].rstrip(b"\r")
    except (OSError, pa.ArrowInvalid) as e:
        raise _refuse(path, e) from None
    return [name.strip('"') for name in first.decode("utf-8", "replace").split(",")]


def stream_json(path: Path, schema: pa.Schema):
    """Record batches of a JSON-lines file, parsing only the fields of `schema` (absent ones are null)."""
    options = pjson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    try:
        with pjson.open_json(pa.input_stream(str(path)), read_options=pjson.ReadOptions(block_size=BLOCK_BYTES),
                             parse_options=options) as reader:
            yield from reader
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise _refuse(path, e) from None


def read_interactions(path: Path, batches, user: str, item: str, time: str | None, number_unit: str = "as in the file",
                      user_fraction: float = 1.0) -> Interactions:
    """Interactions from record batches with `user`, `item` and (if not None) `time` columns; rows missing any
    of them are counted in `skipped` and left out, as are the users `user_fraction` leaves out. Numeric times are
    in `number_unit`."""
    users, items = IdTable("user", path, user_fraction), IdTable("item", path)
    parts, skipped, unit = [], {}, "row order"
    for batch in batches:
        complete = batch[user].is_valid()
        for name in [item] + ([time] if time else []):
            complete = pc.and_(complete, batch[name].is_valid())
        _count(skipped, "a user, item or time missing", len(batch) - pc.sum(complete).as_py() if len(batch) else 0)
        batch = batch.filter(complete)
        user_codes = users.codes(batch[user])
        kept = user_codes >= 0
        _count(skipped, "of users left out by --user-fraction", int((~kept).sum()))
        times = None
        if time:
            times, unit = as_int64(batch[time], path, time, number_unit)
            times = times[kept]
        parts.append((user_codes[kept], items.codes(batch[item].filter(pa.array(kept))), times))
    if sum(len(part[0]) for part in parts) == 0:
        raise DatasetError(f"{path} holds no interactions")
    users_column, items_column = (np.concatenate([part[k] for part in parts]) for k in range(2))
    times = np.concatenate([part[2] for part in parts]) if time else None
    return Interactions(users_column, items_column, times, [str(u) for u in users.ids], [str(i) for i in items.ids],
                        unit, skipped)


def _count(counts: dict, reason: str, rows: int):
    if rows:
        counts[reason] = counts.get(reason, 0) + rows


def as_int64(column: pa.Array, path: Path, name: str, number_unit: str) -> tuple[np.ndarray, str]:
    """A time column as int64 and its unit: timestamps in seconds, dates in days, numbers (floats truncated) in
    `number_unit`."""
    kind = column.type
    if pa.types.is_timestamp(kind):
        return column.cast(pa.timestamp("s"), safe=False).cast(pa.int64()).to_numpy(), "seconds since 1970-01-01"
    if pa.types.is_date(kind):
        return column.cast(pa.date32()).cast(pa.int32()).to_numpy().astype(np.int64), "days since 1970-01-01"
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return pc.cast(column, pa.int64(), safe=False).to_numpy(), number_unit
    raise DatasetError(f"{path}: column {name} holds {kind}, not times (numbers, dates or timestamps)")


@dataclass
class Items:
    """What the metadata says of each wanted item: its category name ("" if none) and its image, a path or a URL
    ("" if none); `known` is False for an item the metadata lacks."""
    known: list[bool]
    categories: list[str]
    images: list[str]


def first_rows(batches, key: str, wanted: list, kind: pa.DataType) -> dict:
    """{key value: the first row (a dict) with it} over the record batches, for the wanted values only."""
    value_set, found = pa.array(wanted, kind), {}
    for batch in batches:
        for row in batch.filter(pc.is_in(batch[key], value_set=value_set)).to_pylist():
            found.setdefault(row[key], row)
    return found


def items_from_rows(wanted: list, rows: dict, describe) -> Items:
    """Items for the wanted keys; describe(row) -> (category name, image path or URL)."""
    described = [describe(rows[key]) if key in rows else ("", "") for key in wanted]
    return Items([key in rows for key in wanted], [c or "" for c, _ in described], [i or "" for _, i in described])


def review_inputs(cfg, source) -> dict[str, Path]:
    """The input files of a source of reviews and item metadata whose images are fetched (Amazon's)."""
    if not (cfg.reviews and cfg.meta and cfg.images):
        raise ConfigError(f"{source} needs --reviews JSONL, --meta JSONL and --images FOLDER (where the images are "
                          "fetched to)")
    return {"reviews": Path(cfg.reviews), "meta": Path(cfg.meta)}
