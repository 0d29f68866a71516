"""Convert today's fashion data into a dataset folder that every stage reads with --dataset FOLDER.

    python convert/main.py hm --input h-and-m-personalized-fashion-recommendations --out data/hm --image-side 256
    python convert/main.py amazon2023 --reviews Clothing_Shoes_and_Jewelry.jsonl \\
        --meta meta_Clothing_Shoes_and_Jewelry.jsonl --images data/amazon2023-images --out data/amazon2023
    python convert/main.py amazon2018 --reviews Clothing_Shoes_and_Jewelry.json.gz \\
        --meta meta_Clothing_Shoes_and_Jewelry.json.gz --images data/amazon2018-images --out data/amazon2018
    python convert/main.py generic --interactions interactions.csv --items items.csv --images photos/ --out data/mine

Each source's format is in its module (convert/hm.py, amazon2018.py, amazon2023.py, generic.py), the steps in
convert/pipeline.py, the folder's layout in common/dataset_folder.py. A rerun skips the steps already done (and
the downloads already made); with the same settings on a finished folder it does nothing.
"""
from common.cli import parse_config, stage_errors
from convert.config import ConvertConfig, check_config
from convert.pipeline import convert


def main(argv=None):
    with stage_errors("convert"):
        cfg, _ = parse_config(ConvertConfig, argv, description=__doc__.split("\n")[0])
        check_config(cfg)
        return convert(cfg)


if __name__ == "__main__":
    main()
