"""H&M Personalized Fashion Recommendations (Kaggle, 2022), from the competition's folder:

    transactions_train.csv   t_dat (YYYY-MM-DD), customer_id (64 hex digits), article_id (an integer, written
                             without its leading zero), price, sales_channel_id; duplicate rows are repeat purchases
    articles.csv             article_id (10 digits, with its leading zero), product_code, prod_name, ...,
                             product_group_name, ..., index_group_name, ..., detail_desc
    images/0XX/0XXXXXXXXX.jpg  the article's image: the 10-digit id, in a folder named by its first three digits;
                             not every article has one

The format is the competition's data page (kaggle.com/competitions/h-and-m-personalized-fashion-recommendations/
data: "images are placed in subfolders starting with the first three digits of the article_id; note, not all
article_id values have a corresponding image") and the files' first lines as public listings show them. An
item's category is its --category-columns joined by " / ", by default index group and product group (e.g.
"Ladieswear / Garment Upper body").
"""
from pathlib import Path

import pyarrow as pa

from common.errors import ConfigError
from convert.readers import csv_header, first_rows, items_from_rows, read_interactions, stream_csv

FETCHES = False


def inputs(cfg) -> dict[str, Path]:
    if not cfg.input:
        raise ConfigError("hm needs --input FOLDER, the competition's folder (transactions_train.csv, articles.csv, "
                          "images/)")
    folder = Path(cfg.input)
    return {"transactions": folder / "transactions_train.csv", "articles": folder / "articles.csv"}


def image_folder(cfg) -> Path:
    return Path(cfg.input) / "images"


def article_id(number: int) -> str:
    return f"{number:010d}"


def read(cfg):
    path = inputs(cfg)["transactions"]
    columns = {"t_dat": pa.date32(), "customer_id": pa.string(), "article_id": pa.int64()}
    interactions = read_interactions(path, stream_csv(path, columns), "customer_id", "article_id", "t_dat",
                                     user_fraction=cfg.user_fraction)
    interactions.item_ids = [article_id(int(i)) for i in interactions.item_ids]
    return interactions


def describe_items(cfg, item_ids: list[str]):
    path = inputs(cfg)["articles"]
    missing = [name for name in cfg.category_columns if name not in csv_header(path)]
    if missing:
        raise ConfigError(f"--category-columns {' '.join(missing)}: no such column in {path}")
    columns = {"article_id": pa.int64(), **{name: pa.string() for name in cfg.category_columns}}
    numbers = [int(i) for i in item_ids]
    rows = first_rows(stream_csv(path, columns), "article_id", numbers, pa.int64())
    images = image_folder(cfg)

    def describe(row):
        name = article_id(row["article_id"])
        category = " / ".join(row[column] or "" for column in cfg.category_columns).strip(" /")
        return category, str(images / name[:3] / f"{name}.jpg")
    return items_from_rows(numbers, rows, describe)
