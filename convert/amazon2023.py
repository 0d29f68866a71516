"""Amazon Reviews 2023, e.g. Clothing_Shoes_and_Jewelry, from the McAuley lab's JSON-lines files
(huggingface.co/datasets/McAuley-Lab/Amazon-Reviews-2023 and amazon-reviews-2023.github.io, plain or gzipped):

    reviews   one review a line: "rating", "title", "text", "images", "asin", "parent_asin", "user_id",
              "timestamp" (milliseconds), "helpful_vote", "verified_purchase"
    metadata  one item a line: "main_category", "title", "average_rating", "rating_number", "features",
              "description", "price", "images" (a list of {"thumb", "large", "variant", "hi_res"}, hi_res may be
              null), "videos", "store", "categories" (a list, the category path), "details", "parent_asin",
              "bought_together"

(field names as the dataset card lists them). Items are parent_asin, as the card's reviews and metadata join on it.
An item's category is the first --category-depth entries of "categories" joined by " > ", else its main_category;
its image is the --image-field URL of its MAIN image (else its first), fetched into --images.
"""
from pathlib import Path

import pyarrow as pa

from convert.fetch import fetched_image_folder
from convert.readers import first_rows, items_from_rows, read_interactions, review_inputs, stream_json

FETCHES = True
IMAGE_FIELDS = ("large", "hi_res", "thumb")
REVIEWS = pa.schema([("user_id", pa.string()), ("parent_asin", pa.string()), ("timestamp", pa.int64())])
METADATA = pa.schema([("parent_asin", pa.string()), ("main_category", pa.string()),
                      ("categories", pa.list_(pa.string())),
                      ("images", pa.list_(pa.struct([(name, pa.string()) for name in IMAGE_FIELDS + ("variant",)])))])


def inputs(cfg) -> dict[str, Path]:
    return review_inputs(cfg, "amazon2023")


image_folder = fetched_image_folder


def read(cfg):
    path = Path(cfg.reviews)
    return read_interactions(path, stream_json(path, REVIEWS), "user_id", "parent_asin", "timestamp",
                             "milliseconds since 1970-01-01", cfg.user_fraction)


def image_url(images: list, field: str) -> str:
    main = next((image for image in images if image.get("variant") == "MAIN"), images[0] if images else None)
    if main is None:
        return ""
    return next((main[name] for name in (field, *IMAGE_FIELDS) if main.get(name)), "")


def describe_items(cfg, item_ids: list[str]):
    rows = first_rows(stream_json(Path(cfg.meta), METADATA), "parent_asin", item_ids, pa.string())

    def describe(row):
        path = row["categories"] or []
        category = " > ".join(path[:cfg.category_depth]) if path else (row["main_category"] or "")
        return category, image_url(row["images"] or [], cfg.image_field)
    return items_from_rows(item_ids, rows, describe)
