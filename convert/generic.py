"""A lab's own data: an interactions CSV, an items CSV and a folder of images.

    interactions.csv   header user,item[,timestamp]: one row per interaction; the timestamp (a number, a date or
                       a date and time) orders each user's interactions, else the file's order does
    items.csv          header item,category,image: the image's path relative to --images; an empty category is
                       no category
"""
from pathlib import Path

import pyarrow as pa

from common.errors import ConfigError
from convert.readers import csv_header, first_rows, items_from_rows, read_interactions, stream_csv

FETCHES = False


def inputs(cfg) -> dict[str, Path]:
    if not (cfg.interactions and cfg.items and cfg.images):
        raise ConfigError("generic needs --interactions CSV, --items CSV and --images FOLDER")
    return {"interactions": Path(cfg.interactions), "items": Path(cfg.items)}


def image_folder(cfg) -> Path:
    return Path(cfg.images)


def read(cfg):
    path = Path(cfg.interactions)
    time = "timestamp" if "timestamp" in csv_header(path) else None
    columns = {"user": pa.string(), "item": pa.string(), **({time: None} if time else {})}
    return read_interactions(path, stream_csv(path, columns), "user", "item", time, "as in the file",
                             cfg.user_fraction)


def describe_items(cfg, item_ids: list[str]):
    path = Path(cfg.items)
    rows = first_rows(stream_csv(path, {"item": pa.string(), "category": pa.string(), "image": pa.string()}),
                      "item", item_ids, pa.string())
    return items_from_rows(item_ids, rows, lambda row: (row["category"], str(Path(cfg.images) / row["image"])
                                                        if row["image"] else ""))
