"""The converters, one module per source: each gives inputs(cfg), image_folder(cfg), read(cfg) -> Interactions,
describe_items(cfg, item ids) -> Items and FETCHES (whether its images are URLs to fetch). Adding a source is
one file and one line."""
from convert import amazon2018, amazon2023, generic, hm

SOURCES = {"generic": generic, "hm": hm, "amazon2018": amazon2018, "amazon2023": amazon2023}
