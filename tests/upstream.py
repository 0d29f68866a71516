"""Tiny files in each source's upstream format (field names and types as the upstream files have them; the
converters' modules say where the formats were read), written from one small world of users, items and
interactions, and the split that the converters should make of it, computed here the plain way."""
import datetime
import hashlib
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

EPOCH = datetime.date(1970, 1, 1)
HM_INDEX_GROUPS = ("Ladieswear", "Menswear", "Divided")
HM_PRODUCT_GROUPS = ("Garment Upper body", "Garment Lower body", "Shoes")
AMAZON_PATHS = (["Clothing, Shoes & Jewelry", "Women", "Clothing", "Dresses"],
                ["Clothing, Shoes & Jewelry", "Men", "Shoes", "Boots"],
                ["Clothing, Shoes & Jewelry", "Women", "Shoes", "Sandals"])


def jpeg(seed: int, width=20, height=28) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG")
    return out.getvalue()


@dataclass
class World:
    """Interactions (user, item, day) in file order, 3 to 7 distinct items a user, and items 0-2 for every other
    user: item 0 has no image file, item 1 an unreadable one, item 2 is not in the metadata. Item k's category
    is k % 3."""
    users: int = 12
    items: int = 16
    seed: int = 0

    def __post_init__(self):
        rng = random.Random(self.seed)
        self.no_image, self.unreadable, self.unknown = 0, 1, 2
        self.records = []
        for user in range(self.users):
            chosen = rng.sample(range(3, self.items), 3 + user % 5) + ([0, 1, 2] if user % 2 == 0 else [])
            self.records += [(user, item, rng.randrange(17000, 17030)) for item in chosen]
        self.records.append(self.records[3][:2] + (17100,))   # a repeat purchase, later: the first one counts
        rng.shuffle(self.records)

    def category(self, item: int) -> int:
        return item % 3

    def expected(self, without_image=(), min_interactions=5):
        """{user: (train items in time order, validation item, test item)} after the converters' rules: each
        (user, item)'s earliest interaction (file order breaking ties), items without image or metadata left out,
        then users with fewer than `min_interactions`; the last by time is the test item, the one before it the
        validation item. Items without image: the one without a file, the one not in the metadata and those in
        `without_image`."""
        left_out = {self.no_image, self.unknown, *without_image}
        first = {}
        for row, (user, item, day) in enumerate(self.records):
            if (user, item) not in first or (day, row) < first[user, item]:
                first[user, item] = (day, row)
        by_user = {}
        for (user, item), when in sorted(first.items(), key=lambda pair: pair[1]):
            if item not in left_out:
                by_user.setdefault(user, []).append(item)
        return {user: (items[:-2], items[-2], items[-1]) for user, items in by_user.items()
                if len(items) >= min_interactions}


def write_image(path: Path, world: World, item: int):
    if item == world.no_image:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not an image at all" if item == world.unreadable else jpeg(item))


def image_bytes(world: World, item: int) -> bytes:
    return b"not an image at all" if item == world.unreadable else jpeg(item)


# ----------------------------------------------------------------------------------------------------------
# A lab's own CSVs

def write_generic(folder: Path, world: World) -> dict:
    (folder / "photos").mkdir(parents=True)
    lines = ["user,item,timestamp"] + [f"u{user},it{item},{day * 86400}" for user, item, day in world.records]
    (folder / "interactions.csv").write_text("\n".join(lines) + "\n")
    items = ["item,category,image"]
    for item in range(world.items):
        if item != world.unknown:
            items.append(f"it{item},{['tops', 'bottoms', 'shoes'][world.category(item)]},img/{item}.jpg")
        write_image(folder / "photos" / "img" / f"{item}.jpg", world, item)
    (folder / "items.csv").write_text("\n".join(items) + "\n")
    return {"user_id": lambda u: f"u{u}", "item_id": lambda i: f"it{i}",
            "categories": ["bottoms", "shoes", "tops"], "category_of": lambda i: ["tops", "bottoms", "shoes"][i % 3],
            "args": ["generic", "--interactions", str(folder / "interactions.csv"), "--items",
                     str(folder / "items.csv"), "--images", str(folder / "photos")]}


# ----------------------------------------------------------------------------------------------------------
# H&M Personalized Fashion Recommendations

HM_ARTICLE_COLUMNS = (
    "article_id,product_code,prod_name,product_type_no,product_type_name,product_group_name,graphical_appearance_no,"
    "graphical_appearance_name,colour_group_code,colour_group_name,perceived_colour_value_id,"
    "perceived_colour_value_name,perceived_colour_master_id,perceived_colour_master_name,department_no,"
    "department_name,index_code,index_name,index_group_no,index_group_name,section_no,section_name,garment_group_no,"
    "garment_group_name,detail_desc")


def hm_article(item: int) -> int:
    return 108775015 + 1000 * item


def hm_customer(user: int) -> str:
    return hashlib.sha256(f"customer {user}".encode()).hexdigest()


def hm_category(world: World, item: int) -> str:
    return f"{HM_INDEX_GROUPS[world.category(item)]} / {HM_PRODUCT_GROUPS[world.category(item)]}"


def write_hm(folder: Path, world: World) -> dict:
    folder.mkdir(parents=True)
    lines = ["t_dat,customer_id,article_id,price,sales_channel_id"]
    for user, item, day in sorted(world.records, key=lambda record: record[2]):   # the file is in date order
        when = EPOCH + datetime.timedelta(days=day)
        lines.append(f"{when.isoformat()},{hm_customer(user)},{hm_article(item)},0.0508474576271186,2")
    (folder / "transactions_train.csv").write_text("\n".join(lines) + "\n")
    rows = [HM_ARTICLE_COLUMNS]
    for item in range(world.items):
        article, group = f"{hm_article(item):010d}", world.category(item)
        if item != world.unknown:
            rows.append(f"{article},{article[:7]},Strap top,253,Vest top,{HM_PRODUCT_GROUPS[group]},1010016,Solid,09,"
                        f"Black,4,Dark,5,Black,1676,Jersey Basic,A,Ladieswear,{group + 1},{HM_INDEX_GROUPS[group]},16,"
                        f"Womens Everyday Basics,1002,Jersey Basic,\"Jersey top, narrow shoulder straps.\"")
        write_image(folder / "images" / article[:3] / f"{article}.jpg", world, item)
    (folder / "articles.csv").write_text("\n".join(rows) + "\n")
    return {"user_id": hm_customer, "item_id": lambda i: f"{hm_article(i):010d}",
            "categories": sorted({hm_category(world, i) for i in range(world.items)}),
            "category_of": lambda i: hm_category(world, i),
            "args": ["hm", "--input", str(folder)]}


# ----------------------------------------------------------------------------------------------------------
# Amazon Reviews 2018 and 2023 (images served over HTTP at `base_url`)

def amazon_id(item: int) -> str:
    return f"B00{item:07d}"


def amazon_user(user: int) -> str:
    return f"A{user:03d}XK2Q7TRZB"


def write_amazon2018(folder: Path, world: World, base_url: str) -> dict:
    folder.mkdir(parents=True)
    reviews = [json.dumps({"overall": 5.0, "vote": "2", "verified": True,
                           "reviewTime": (EPOCH + datetime.timedelta(days=day)).strftime("%m %d, %Y"),
                           "reviewerID": amazon_user(user), "asin": amazon_id(item),
                           "style": {"Size:": " Large", "Color:": " Charcoal"}, "reviewerName": "Abbey",
                           "reviewText": "Comfy, flattering.", "summary": "Recommended", "unixReviewTime": day * 86400})
               for user, item, day in world.records]
    (folder / "Clothing_Shoes_and_Jewelry.json").write_text("\n".join(reviews) + "\n")
    meta = [json.dumps({"category": AMAZON_PATHS[world.category(item)], "tech1": "", "description": ["A dress."],
                        "fit": "", "title": f"Item {item}", "also_buy": [], "tech2": "", "brand": "Brand",
                        "feature": [], "rank": "1 in Clothing", "also_view": [], "main_cat": "AMAZON FASHION",
                        "similar_item": "", "date": "", "price": "$9.99", "asin": amazon_id(item),
                        "imageURL": [f"{base_url}/small/{item}.jpg"],
                        "imageURLHighRes": [f"{base_url}/images/I/{item}.jpg"]})
            for item in range(world.items) if item != world.unknown]
    (folder / "meta_Clothing_Shoes_and_Jewelry.json").write_text("\n".join(meta) + "\n")
    return {"user_id": amazon_user, "item_id": amazon_id,
            "categories": sorted({" > ".join(path[:3]) for path in AMAZON_PATHS}),
            "category_of": lambda i: " > ".join(AMAZON_PATHS[world.category(i)][:3]),
            "args": ["amazon2018", "--reviews", str(folder / "Clothing_Shoes_and_Jewelry.json"), "--meta",
                     str(folder / "meta_Clothing_Shoes_and_Jewelry.json"), "--images", str(folder / "images")]}


def write_amazon2023(folder: Path, world: World, base_url: str) -> dict:
    folder.mkdir(parents=True)
    reviews = [json.dumps({"rating": 5.0, "title": "Great", "text": "Fits well.", "images": [],
                           "asin": amazon_id(item) + "X", "parent_asin": amazon_id(item), "user_id": amazon_user(user),
                           "timestamp": day * 86400 * 1000 + 123, "helpful_vote": 0, "verified_purchase": True})
               for user, item, day in world.records]
    (folder / "Clothing_Shoes_and_Jewelry.jsonl").write_text("\n".join(reviews) + "\n")
    meta = []
    for item in range(world.items):
        if item == world.unknown:
            continue
        images = [{"thumb": f"{base_url}/thumb/{item}.jpg", "large": f"{base_url}/alt/{item}.jpg", "variant": "PT01",
                   "hi_res": None},
                  {"thumb": f"{base_url}/thumb/{item}.jpg", "large": f"{base_url}/images/I/{item}.jpg",
                   "variant": "MAIN", "hi_res": f"{base_url}/hires/{item}.jpg"}]
        meta.append(json.dumps({"main_category": "AMAZON FASHION", "title": f"Item {item}", "average_rating": 4.5,
                                "rating_number": 10, "features": ["Machine Wash"], "description": [], "price": None,
                                "images": images, "videos": [], "store": "Store",
                                "categories": AMAZON_PATHS[world.category(item)] if item % 2 else [],
                                "details": {"Brand": "Store"}, "parent_asin": amazon_id(item),
                                "bought_together": None}))
    (folder / "meta_Clothing_Shoes_and_Jewelry.jsonl").write_text("\n".join(meta) + "\n")

    def category_of(item):
        return " > ".join(AMAZON_PATHS[world.category(item)][:3]) if item % 2 else "AMAZON FASHION"
    return {"user_id": amazon_user, "item_id": amazon_id,
            "categories": sorted({category_of(i) for i in range(world.items) if i != world.unknown}),
            "category_of": category_of,
            "args": ["amazon2023", "--reviews", str(folder / "Clothing_Shoes_and_Jewelry.jsonl"), "--meta",
                     str(folder / "meta_Clothing_Shoes_and_Jewelry.jsonl"), "--images", str(folder / "images")]}


def served_images(world: World) -> dict[str, bytes]:
    """What the local server answers: /images/I/<item>.jpg, the MAIN large (2023) and first imageURLHighRes
    (2018) image; nothing for the item without an image (a 404)."""
    return {f"/images/I/{item}.jpg": image_bytes(world, item) for item in range(world.items)
            if item not in (world.no_image, world.unknown)}
