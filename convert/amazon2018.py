"""Amazon Review Data (2018), e.g. Clothing, Shoes and Jewelry, from the McAuley lab's JSON-lines files
(nijianmo.github.io/amazon, plain or gzipped):

    reviews   one review a line: "reviewerID", "asin", "unixReviewTime" (seconds), "overall", "verified",
              "reviewText", "summary", "vote", "style", "image", ...
    metadata  one item a line: "asin", "category" (a list, the category path from the root), "imageURL" and
              "imageURLHighRes" (lists of URLs), "title", "brand", "main_cat", ...

(field names as the dataset's page lists them, and as its sample lines show). An item's category is the first
--category-depth entries of its "category" path joined by " > "; its image is the first "imageURLHighRes", else the
first "imageURL", fetched into --images.
"""
from pathlib import Path

import pyarrow as pa

from convert.fetch import fetched_image_folder
from convert.readers import first_rows, items_from_rows, read_interactions, review_inputs, stream_json

FETCHES = True
REVIEWS = pa.schema([("reviewerID", pa.string()), ("asin", pa.string()), ("unixReviewTime", pa.int64())])
METADATA = pa.schema([("asin", pa.string()), ("category", pa.list_(pa.string())),
                      ("imageURLHighRes", pa.list_(pa.string())), ("imageURL", pa.list_(pa.string()))])


def inputs(cfg) -> dict[str, Path]:
    return review_inputs(cfg, "amazon2018")


image_folder = fetched_image_folder


def read(cfg):
    path = Path(cfg.reviews)
    return read_interactions(path, stream_json(path, REVIEWS), "reviewerID", "asin", "unixReviewTime",
                             "seconds since 1970-01-01", cfg.user_fraction)


def describe_items(cfg, item_ids: list[str]):
    rows = first_rows(stream_json(Path(cfg.meta), METADATA), "asin", item_ids, pa.string())

    def describe(row):
        urls = (row["imageURLHighRes"] or []) + (row["imageURL"] or [])
        return " > ".join((row["category"] or [])[:cfg.category_depth]), urls[0] if urls else ""
    return items_from_rows(item_ids, rows, describe)
