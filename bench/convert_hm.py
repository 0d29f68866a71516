"""Conversion and loading at the size of H&M Personalized Fashion Recommendations, on generated files in its format.

The files are shaped like the competition's (transactions_train.csv: 31,788,324 rows over 1,371,980 customers and
104,547 of the 105,542 articles in articles.csv, two years in date order; images/0XX/0XXXXXXXXX.jpg for all but
442 articles) scaled by --scale, with activity and popularity long-tailed and small JPEGs standing in for the
photos (a few KB each, where H&M's are some 300 KB: packing the real images is bound by the disk, not measured
here). Conversion (convert/main.py hm) and loading (open_dataset, as every stage does) each run in a fresh
interpreter, so that the peak resident memory each reports is its own.

    python bench/convert_hm.py --scale 0.05          # a twentieth: a minute or two
    python bench/convert_hm.py                       # the real size
"""
import argparse
import csv
import io
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
from PIL import Image

from common.machine import machine_line
from convert.pipeline import available_memory, memory_verdict

ROWS, CUSTOMERS, ARTICLES, WITHOUT_IMAGE, DAYS = 31_788_324, 1_371_980, 105_542, 442, 734
FIRST_DAY = np.datetime64("2018-09-20")
INDEX_GROUPS = ("Ladieswear", "Baby/Children", "Menswear", "Sport", "Divided")
PRODUCT_GROUPS = ("Garment Upper body", "Underwear", "Socks & Tights", "Garment Lower body", "Accessories",
                  "Items", "Nightwear", "Unknown", "Underwear/nightwear", "Shoes", "Swimwear", "Garment Full body",
                  "Cosmetic", "Interior textile", "Bags", "Furniture", "Garment and Shoe care", "Fun", "Stationery")
ARTICLE_COLUMNS = ("article_id", "product_code", "prod_name", "product_type_no", "product_type_name",
                   "product_group_name", "graphical_appearance_no", "graphical_appearance_name", "colour_group_code",
                   "colour_group_name", "perceived_colour_value_id", "perceived_colour_value_name",
                   "perceived_colour_master_id", "perceived_colour_master_name", "department_no", "department_name",
                   "index_code", "index_name", "index_group_no", "index_group_name", "section_no", "section_name",
                   "garment_group_no", "garment_group_name", "detail_desc")
CHUNK_ROWS = 1 << 20


def sizes(scale: float) -> tuple[int, int, int]:
    return max(10, round(ROWS * scale)), max(3, round(CUSTOMERS * scale)), max(5, round(ARTICLES * scale))


def hex_ids(rng, count: int) -> pa.Array:
    """`count` customer ids as H&M writes them: 64 lowercase hex digits."""
    digits = np.frombuffer(b"0123456789abcdef", dtype="S1")
    nibbles = rng.integers(0, 16, (count, 64), dtype=np.uint8)
    return pa.array(digits[nibbles].view("S64").ravel()).cast(pa.string())


def write_transactions(path: Path, rng, rows: int, customers: int, articles: int):
    """transactions_train.csv: customers by a long-tailed activity, articles by a long-tailed popularity (leaving
    some articles unsold, as H&M's are), days uniform over two years, the file in date order."""
    ids = hex_ids(rng, customers)
    activity = rng.lognormal(0, 1.2, customers)
    popularity = rng.lognormal(0, 2.0, articles) * (rng.random(articles) > 0.01)
    who = rng.choice(customers, rows, p=activity / activity.sum()).astype(np.int32)
    what = rng.choice(articles, rows, p=popularity / popularity.sum()).astype(np.int32)
    when = np.sort(rng.integers(0, DAYS, rows).astype(np.int16))
    schema = pa.schema([("t_dat", pa.string()), ("customer_id", pa.string()), ("article_id", pa.int64()),
                        ("price", pa.float64()), ("sales_channel_id", pa.int8())])
    with open(path, "wb") as f, pcsv.CSVWriter(f, schema, write_options=pcsv.WriteOptions(
            include_header=False, quoting_style="none")) as writer:
        f.write((",".join(schema.names) + "\n").encode())
        f.flush()
        for start in range(0, rows, CHUNK_ROWS):
            part = slice(start, start + CHUNK_ROWS)
            days = (FIRST_DAY + when[part].astype("timedelta64[D]")).astype(str)
            writer.write_table(pa.table({
                "t_dat": pa.array(days), "customer_id": ids.take(pa.array(who[part])),
                "article_id": pa.array(article_number(what[part])), "price": pa.array(
                    np.round(rng.lognormal(-3.5, 0.6, len(days)), 6)),
                "sales_channel_id": pa.array(rng.integers(1, 3, len(days)).astype(np.int8))}))


def article_number(index: np.ndarray) -> np.ndarray:
    """The article id of article `index`: nine or ten digits in H&M's range (108775015 to 959461001)."""
    return 108_775_015 + index.astype(np.int64) * 8_000 + index % 997


def write_articles(path: Path, rng, articles: int) -> list[str]:
    """articles.csv with H&M's columns, quoted only where a value holds a comma (as H&M's file is)."""
    ids = [f"{number:010d}" for number in article_number(np.arange(articles)).tolist()]
    group = rng.integers(0, len(PRODUCT_GROUPS), articles).tolist()
    index_group = rng.integers(0, len(INDEX_GROUPS), articles).tolist()
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(ARTICLE_COLUMNS)
        for k, article in enumerate(ids):
            writer.writerow([article, article[:7], "Strap top", 253, "Vest top", PRODUCT_GROUPS[group[k]], 1010016,
                             "Solid", "09", "Black", 4, "Dark", 5, "Black", 1676, "Jersey Basic", "A", "Ladieswear",
                             index_group[k] + 1, INDEX_GROUPS[index_group[k]], 16, "Womens Everyday Basics", 1002,
                             "Jersey Basic", "Jersey top with narrow shoulder straps, in soft cotton."])
    return ids


def write_images(folder: Path, rng, article_ids: np.ndarray, without: int):
    """images/0XX/0XXXXXXXXX.jpg for all but `without` articles, from a pool of small JPEGs."""
    pool = []
    for seed in range(64):
        out = io.BytesIO()
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (72, 48, 3), dtype=np.uint8)).save(out, "JPEG")
        pool.append(out.getvalue())
    missing = set(rng.choice(len(article_ids), without, replace=False).tolist())
    for k, name in enumerate(article_ids):
        if k not in missing:
            (folder / name[:3]).mkdir(parents=True, exist_ok=True)
            (folder / name[:3] / f"{name}.jpg").write_bytes(pool[k % len(pool)])


def generate(folder: Path, scale: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows, customers, articles = sizes(scale)
    folder.mkdir(parents=True, exist_ok=True)
    article_ids = write_articles(folder / "articles.csv", rng, articles)
    write_images(folder / "images", rng, article_ids, max(0, round(WITHOUT_IMAGE * scale)))
    write_transactions(folder / "transactions_train.csv", rng, rows, customers, articles)


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_conversion(folder: Path, out: Path, user_fraction: float) -> dict:
    from convert.main import main
    before = peak_rss()
    started = time.perf_counter()
    main(["hm", "--input", str(folder), "--out", str(out), "--user-fraction", str(user_fraction)])
    return {"seconds": time.perf_counter() - started, "peak_rss": peak_rss(), "rss_before": before}


def measure_load(out: Path) -> dict:
    from common.datasets import open_dataset
    before = peak_rss()
    started = time.perf_counter()
    dataset, _ = open_dataset(out)
    return {"seconds": time.perf_counter() - started, "peak_rss": peak_rss(), "rss_before": before,
            "users": dataset.usernum, "items": dataset.itemnum, "interactions": dataset.num_train_interactions}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of H&M's size (1: 31.8M transactions)")
    parser.add_argument("--user-fraction", type=float, default=1.0, help="the converter's --user-fraction")
    parser.add_argument("--path", type=Path, default=None, help="folder of the generated files (default: the system "
                                                                "temp folder); reused if it holds them")
    parser.add_argument("--keep", action="store_true", help="keep the generated files and the dataset folder")
    parser.add_argument("--role", choices=["generate", "convert", "load"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = args.path or Path(tempfile.gettempdir()) / f"hm-bench-{args.scale:g}"
    out = folder.with_name(folder.name + "-dataset")
    if args.role == "generate":
        return generate(folder, args.scale)
    if args.role in ("convert", "load"):
        measured = measure_conversion(folder, out, args.user_fraction) if args.role == "convert" else \
            measure_load(out)
        return print("RESULT " + json.dumps(measured))

    rows, customers, articles = sizes(args.scale)
    verdict = memory_verdict(rows, args.user_fraction, available_memory(), "transactions_train.csv")
    if verdict:
        raise SystemExit(f"convert_hm: {verdict} (or a smaller --scale)")

    def run(role: str) -> dict:
        command = [sys.executable, __file__, "--role", role, "--scale", str(args.scale), "--path", str(folder),
                   "--user-fraction", str(args.user_fraction)]
        output = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True).stdout
        print("\n".join(f"  | {line}" for line in output.splitlines() if not line.startswith("RESULT ")))
        return next((json.loads(line[7:]) for line in output.splitlines() if line.startswith("RESULT ")), {})

    generated = not (folder / "transactions_train.csv").is_file()
    if generated:
        started = time.perf_counter()
        run("generate")
        print(f"generated {folder} in {time.perf_counter() - started:.0f} s")
    shutil.rmtree(out, ignore_errors=True)
    conversion, load = run("convert"), run("load")
    csv_bytes = (folder / "transactions_train.csv").stat().st_size
    print(machine_line())
    print(f"files     scale {args.scale:g}: {rows:,} transactions ({csv_bytes / 2**30:.2f} GiB), {customers:,} "
          f"customers, {articles:,} articles")
    print(f"dataset   {load['users']:,} users, {load['items']:,} items, {load['interactions']:,} training "
          f"interactions (--min-interactions 5, --user-fraction {args.user_fraction:g})")
    for name, measured in (("convert", conversion), ("load", load)):
        growth = measured["peak_rss"] - measured["rss_before"]
        print(f"{name:9} {measured['seconds']:.1f} s; peak RSS {measured['peak_rss'] / 2**30:.2f} GiB, "
              f"{growth / 2**30:.2f} GiB over the {measured['rss_before'] / 2**20:.0f} MiB before it started "
              f"({growth / rows:.0f} bytes per transaction)")
    if generated and not args.keep:
        shutil.rmtree(folder)
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
