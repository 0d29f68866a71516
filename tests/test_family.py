"""The catalogue family: the recipe search ranks by validation AUC and the grid reuses the demo recipe's runs."""
import functools
import json
import re
import shutil

import pytest

import common.catalogue.reader
import experiments.family as family
import gan.config
import gan.train
import pm.stage
from common.catalogue.config import CatalogueConfig
from common.cli import parse_config
from gan.run import open_gan_run


def test_the_demo_recipe_is_a_finalist_of_the_search():
    assert family.DEMO_RECIPE in family.FINALISTS
    assert family.RECIPES[family.DEMO_RECIPE] is family.DEMO
    assert set(family.FINALISTS) <= set(family.RECIPES)


def test_the_family_spans_taste_mixes_seeds_and_both_image_sources():
    configs = list(family.CATALOGUES.values())
    assert len(configs) == 8 and len({(c.seed, c.image_source) for c in configs}) == 2
    assert len({(c.category_weight, c.colour_weight, c.pattern_weight, c.popularity_sigma) for c in configs}) == 4


@pytest.fixture
def tiny_family(monkeypatch, tmp_path):
    tiny = dict(num_users=24, num_items=120, image_size=32, image_source="procedural")
    monkeypatch.setattr(family, "CATALOGUES", {"colour": CatalogueConfig(seed=1, **tiny),
                                               "pattern": CatalogueConfig(seed=2, pattern_weight=3, **tiny)})
    quick = dict(image_size=32, fc_width=32, conv_widths=[4, 8, 8, 8, 8], k=4, batch_size=16, eval_batch_size=64)
    recipes = {"slow": dict(quick, epochs=1, lr=1e-4), family.DEMO_RECIPE: dict(quick, epochs=2, lr=3e-3, dropout=0.0)}
    monkeypatch.setattr(family, "RECIPES", recipes)
    return ["--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "data"), "--catalogues", "colour",
            "pattern", "--device", "cpu"]


def test_search_ranks_by_validation_and_the_grid_reuses_the_demo_runs(tiny_family, tmp_path):
    ranked = family.main([*tiny_family, "--search", "--recipes", "slow", family.DEMO_RECIPE])
    found = json.loads((tmp_path / "out" / "search.json").read_text())
    summary = found["summary"]
    assert ranked == sorted(summary, key=lambda r: -(summary[r]["valid_auc"] + summary[r]["valid_auc_cold"]))
    assert set(found["runs"][family.DEMO_RECIPE]) == {"colour", "pattern"}
    assert "test_auc" not in (tmp_path / "out" / "search.md").read_text()
    assert 0 < found["runs"][family.DEMO_RECIPE]["colour"]["health"]["directions_99"] <= 4

    result = family.main([*tiny_family, "--models", "rand", "poprank", "dvbpr"])
    for name in ("colour", "pattern"):
        dvbpr = result["tables"][name]["rows"]["All Items"]["DVBPR"]
        assert dvbpr == found["runs"][family.DEMO_RECIPE][name]["test_auc"]        # read back, not trained again
    grid = (tmp_path / "out" / "grid.md").read_text()
    assert grid.count("| colour |") == 6 and "| colour | NDCG@20, Cold Items |" in grid and "PopRank" in grid


def tiny_gan_demo(monkeypatch):
    """The demo GANs at 16 px, one epoch, each generator keeping the rest of its own demo settings; the category
    classifier of each GAN run and the attribute reader of Table IV's hidden taste trained for a tenth of their
    steps (their accuracy is tested in test_judges.py, not here)."""
    monkeypatch.setattr(gan.config, "DEMO", dict(image_size=16, z_dim=8, g_width=8, d_width=8, batch_size=16, epochs=1,
                                                 consistency_samples=4))
    monkeypatch.setitem(gan.config.GENERATOR_DEMOS, "sngan", dict(diffaugment=False, beta1=0.0, beta2=0.9))
    monkeypatch.setitem(gan.config.GENERATOR_DEMOS, "vae", dict(gan.config.GENERATOR_DEMOS["vae"], epochs=1))
    monkeypatch.setattr(gan.train, "train_or_load_classifier",
                        functools.partial(gan.train.train_or_load_classifier, epochs=1, min_steps=30))
    monkeypatch.setattr(common.catalogue.reader, "train_reader",
                        functools.partial(common.catalogue.reader.train_reader, epochs=1, min_steps=40))


def test_design_trains_a_gan_and_writes_table_iv_and_the_pm_tuning_per_catalogue(tiny_family, tmp_path, monkeypatch):
    tiny_gan_demo(monkeypatch)
    for module in (pm.stage, family):   # the demo PM applies, and the one family checks finished runs against
        monkeypatch.setattr(module, "DEMO" if module is pm.stage else "PM_DEMO",
                            dict(trials=2, starts=2, steps=3, splits=2, realism_floor=-1.0, structure_weight=2.0))
    rows = family.main([*tiny_family, "--design", "--sweep-eta", "0", "10", "--latents", "tanh", "sphere"])
    assert set(rows) == {"colour", "pattern"}
    for name, by_latent in rows.items():
        assert set(by_latent) == {"tanh", "sphere"}
        assert by_latent["tanh"]["table"]["synthesis"] != by_latent["sphere"]["table"]["synthesis"]
        assert json.loads((tmp_path / "out" / "design" / name / "pm-sphere" / "table_config.json").read_text())[
            "latent"] == "sphere"
        row = by_latent["tanh"]
        assert 0 <= row["consistency"] <= 1
        assert set(row["table"]) == {"real", "generated", "retrieval", "synthesis"}
        trained = open_gan_run(tmp_path / "out" / "design" / name / "gan").config
        assert trained.generator == "sngan" and not trained.diffaugment and trained.image_size == 16
        assert set(row["eta_sweep"]["synthesis"]) == {"0", "10"}
        assert row["paired"]["judge"]["trials"] == 2 and "true_preference" in row["table"]["synthesis"]
        assert 0 <= row["table"]["synthesis"]["category_match"][0] <= 1
        assert row["against_samples"]["realistic"]["trials"] == 2
        assert (tmp_path / "out" / "judges" / name / "results.json").is_file()
    assert (tmp_path / "out" / "design.md").read_text().count("| colour |") == 2
    monkeypatch.setattr(family, "PM_DEMO", dict(trials=2, starts=2, steps=4, splits=2))   # as a later demo would
    with pytest.raises(SystemExit, match=r"^family: \S+colour/pm was run with other steps: move it away"):
        family.main([*tiny_family, "--design", "--catalogues", "colour"])
    monkeypatch.setattr(family, "PM_DEMO", dict(trials=2, starts=2, steps=3, splits=2, realism_floor=-1.0,
                                                structure_weight=2.0))   # the demo PM's settings again

    at_start = family.main([*tiny_family, "--design", "--pm-steps", "0", "--pm-trials", "3", "--pm-support-quantile",
                            "0.5", "--pm-support-weight", "0"])
    for name in ("colour", "pattern"):
        ran_with = json.loads((tmp_path / "out" / "design" / name / "pm-steps0-trials3-support_quantile0.5-"
                               "support_weight0" / "table_config.json").read_text())
        assert (ran_with["steps"], ran_with["support_quantile"], ran_with["support_weight"]) == (0, 0.5, 0)
        assert at_start[name]["tanh"]["paired"]["judge"]["trials"] == 3
        assert at_start[name]["tanh"]["table"]["synthesis"] != rows[name]["tanh"]["table"]["synthesis"]
    assert (tmp_path / "out" / "design-steps0-trials3-support_quantile0.5-support_weight0.md").read_text().count(
        "| colour |") == 1
    tailored = family.main([*tiny_family, "--design", "--pm-tailored", "--catalogues", "colour"])["colour"]["tanh"]
    assert tailored["tailored_paired"]["judge"]["trials"] == 2 and "tailored" in tailored["table"]
    assert tailored["table"]["synthesis"] == rows["colour"]["tanh"]["table"]["synthesis"]   # its own random stream
    assert (tmp_path / "out" / "design-tailored.md").read_text().count("| colour | tanh |") == 2   # and its own table
    sampled = family.main([*tiny_family, "--design", "--pm-sampled", "--catalogues", "colour"])["colour"]["tanh"]
    assert sampled["synthesis_vs_sampled"]["true_preference"]["trials"] == 2 and "sampled" in sampled["table"]
    assert sampled["table"]["synthesis"] == rows["colour"]["tanh"]["table"]["synthesis"]
    assert (tmp_path / "out" / "design-sampled.md").read_text().count("| colour | tanh |") == 3   # two tables more

    monkeypatch.setattr(family, "PM_TUNE", dict(trials=2, tune_starts=[2], tune_steps=[0, 5], tune_lrs=[0.1]))
    tuned = family.main([*tiny_family, "--design", "--tune"])
    for name in ("colour", "pattern"):
        rows = tuned[name]["tanh"]["rows"]
        assert [row["steps"] for row in rows] == [0, 5] and rows[1]["objective"] > rows[0]["objective"]
        assert set(tuned[name]["tanh"]["on_manifold"]) == {"random", "shifted"}
        assert tuned[name]["tanh"]["judge_run"] == str(tmp_path / "out" / "judges" / name)
        assert set(tuned[name]["tanh"]["judged_on_manifold"]) == {"judge_percentile", "true_preference"}
    assert (tmp_path / "out" / "design_tune.md").read_text().count("| colour | tanh |") == 1
    assert "Mean over the 2 catalogues (tanh):" in (tmp_path / "out" / "design_tune.md").read_text()
    tuning_file = tmp_path / "out" / "design" / "colour" / "tune-tanh" / "tune_config.json"
    tuned_with = json.loads(tuning_file.read_text())
    assert (tuned_with["realism_floor"], tuned_with["structure_weight"]) == (-1.0, 2.0)   # the demo's, as Table IV's
    tuning_file.write_text(json.dumps({**tuned_with, "structure_weight": 0.0}))   # tuned before the demo's term
    with pytest.raises(SystemExit, match=r"^family: \S+tune-tanh was run with other structure_weight: move it away"):
        family.main([*tiny_family, "--design", "--tune", "--catalogues", "colour"])
    tuning_file.write_text(json.dumps(tuned_with))
    # each catalogue's Table IV at the steps its own tuning picks within the random samples' KID
    on_manifold = family.main([*tiny_family, "--design", "--pm-steps-on-manifold", "--pm-trials", "3",
                               "--catalogues", "colour"])
    chosen = tuned["colour"]["tanh"]["on_manifold"]["random"]
    steps = chosen["steps"] if chosen else 0
    assert on_manifold["colour"]["tanh"]["steps"] == steps
    assert json.loads((tmp_path / "out" / "design" / "colour" / f"pm-steps{steps}-trials3" / "table_config.json"
                       ).read_text())["steps"] == steps
    assert f"| colour | tanh, {steps} steps |" in (tmp_path / "out" / "design-trials3-steps_on_manifold.md").read_text()
    without_realism = family.main([*tiny_family, "--design", "--tune", "--pm-eta", "0", "--catalogues", "colour"])
    assert json.loads((tmp_path / "out" / "design" / "colour" / "tune-tanh-eta0" / "tune_config.json").read_text(
    ))["eta"] == 0 and (tmp_path / "out" / "design_tune-eta0.md").is_file()
    assert without_realism["colour"]["tanh"]["rows"] != tuned["colour"]["tanh"]["rows"]
    family.main([*tiny_family, "--design", "--tune", "--pm-realism-floor", "-2", "--pm-support-quantile", "0.5",
                 "--catalogues", "colour"])
    floored = tmp_path / "out" / "design" / "colour" / "tune-tanh-realism_floor-2-support_quantile0.5"
    tuned_with = json.loads((floored / "tune_config.json").read_text())
    assert (tuned_with["realism_floor"], tuned_with["support_quantile"]) == (-2, 0.5)
    assert (tmp_path / "out" / "design_tune-realism_floor-2-support_quantile0.5.md").is_file()
    monkeypatch.setattr(family, "PM_TUNE", dict(trials=2, tune_starts=[2], tune_steps=[0, 5, 10], tune_lrs=[0.1]))
    with pytest.raises(SystemExit, match=r"^family: \S+tune-tanh was run with other tune_steps: move it away"):
        family.main([*tiny_family, "--design", "--tune", "--catalogues", "colour"])
    monkeypatch.setattr(family, "PM_TUNE", dict(trials=2, tune_starts=[2], tune_steps=[0, 5], tune_lrs=[0.1]))

    through_lsgan = family.main([*tiny_family, "--design", "--tune", "--generator", "lsgan", "--catalogues", "colour"])
    lsgan_run = tmp_path / "out" / "design" / "colour" / "gan-lsgan"
    assert open_gan_run(lsgan_run).config.generator == "lsgan" and open_gan_run(lsgan_run).config.beta1 == 0.5
    assert (tmp_path / "out" / "design" / "colour" / "tune-tanh-lsgan" / "tune.json").is_file()
    assert through_lsgan["colour"]["tanh"]["rows"] != tuned["colour"]["tanh"]["rows"]
    assert (tmp_path / "out" / "design_tune-lsgan.md").read_text().count("| colour | tanh |") == 1
    family.main([*tiny_family, "--design", "--tune", "--generator", "vae", "--latents", "sphere", "--catalogues",
                 "colour"])
    vae_run = open_gan_run(tmp_path / "out" / "design" / "colour" / "gan-vae")   # its demo samples the encoder's codes
    assert vae_run.config.generator == "vae" and vae_run.config.ex_post_prior and vae_run.model.averages
    assert (tmp_path / "out" / "design" / "colour" / "tune-sphere-vae" / "tune.json").is_file()

    reseeded = family.main([*tiny_family, "--design", "--pm-sampled", "--gan-seeds", "1", "--catalogues", "colour"]
                           )["colour"]["tanh"]
    seed1_run = open_gan_run(tmp_path / "out" / "design" / "colour" / "gan-gan_seed1")
    assert seed1_run.config.seed == 1 and open_gan_run(tmp_path / "out" / "design" / "colour" / "gan").config.seed == 0
    assert reseeded["table"]["generated"] != sampled["table"]["generated"]   # another GAN's samples
    assert reseeded["table"]["retrieval"] == sampled["table"]["retrieval"]   # the same DVBPR and trials
    assert (tmp_path / "out" / "design-gan_seed1-sampled.md").read_text().count("| colour | tanh |") == 3
    # both seeds' finished tables, read back and set side by side
    across = family.main([*tiny_family, "--design", "--pm-sampled", "--gan-seeds", "0", "1", "--catalogues", "colour"])
    assert across["0"]["colour"]["tanh"] == sampled and across["1"]["colour"]["tanh"] == reseeded
    table = (tmp_path / "out" / "design-gan_seeds0-1-sampled.md").read_text()
    for seed, row in across.items():
        side, difference = family.verdict(row["colour"]["tanh"], "synthesis_vs_sampled", "judge")
        assert re.search(rf"^\| colour \| tanh \| {seed} \| .* \| {re.escape(f'{side} ({difference:+.2f})')} \|", table,
                         re.MULTILINE)
    assert table.count("| colour | tanh |") == 2 and "- synthesis vs best samples: true preference: ahead on" in table

    demo_run = tmp_path / "out" / "design" / "colour" / "gan"
    shutil.rmtree(demo_run)
    shutil.copytree(lsgan_run, demo_run)   # as an earlier version, whose demo was the LSGAN, left it
    with pytest.raises(SystemExit, match=f"^family: {re.escape(str(demo_run))} was trained with --generator lsgan, "
                                         "not sngan: move it away"):
        family.main([*tiny_family, "--design", "--catalogues", "colour"])


def test_missing_trains_the_demo_stages_and_measures_the_missing_combination(tiny_family, tmp_path, monkeypatch):
    tiny = dict(num_users=40, num_items=120, image_size=32, image_source="procedural")
    holed = CatalogueConfig(seed=3, pattern_weight=3, missing_pattern="stripes", missing_categories=[4, 5], **tiny)
    monkeypatch.setattr(family, "LACKING", {"holed": holed})
    tiny_gan_demo(monkeypatch)
    monkeypatch.setattr(family, "PM_DEMO", dict(trials=3, starts=2, steps=3, realism_floor=-1.0))
    terms, measure = [], family.missing_combination

    def measure_and_record_the_terms(stages, *args):
        terms.append((stages.designer.realism_floor, stages.designer.support is not None))
        return measure(stages, *args)

    monkeypatch.setattr(family, "missing_combination", measure_and_record_the_terms)
    row = family.main([*tiny_family, "--missing"])["holed"]
    assert row["items_with_combination"] == 0 and row["queries"] == 3 and row["lovers"] >= 1
    assert set(row["sources"]) == {"generated", "retrieval", "synthesis"}
    assert all(0 <= metrics["combination"][0] <= 1 for metrics in row["sources"].values())
    assert row["paired"]["true_preference"]["trials"] == 3
    assert "no item of categories [4, 5] is stripes (0 such items)" in (tmp_path / "out" / "missing.md").read_text()
    at_start = family.main([*tiny_family, "--missing", "--pm-steps", "0", "--pm-trials", "4", "--pm-realism-floor",
                            "-2", "--pm-support-quantile", "0.9"])["holed"]
    assert at_start["queries"] == 4 and (tmp_path / "out" / "missing-steps0-trials4-realism_floor-2-"
                                                         "support_quantile0.9.md").is_file()
    assert terms == [(-1.0, False), (-2.0, True)]   # the demo's terms, then the flags', reach the designs
    assert at_start["sources"]["synthesis"] != row["sources"]["synthesis"]
    reseeded = family.main([*tiny_family, "--missing", "--gan-seeds", "1"])["holed"]
    assert open_gan_run(tmp_path / "out" / "design" / "holed" / "gan-gan_seed1").config.seed == 1
    assert reseeded["sources"]["generated"] != row["sources"]["generated"] and (tmp_path / "out" /
                                                                               "missing-gan_seed1.md").is_file()


def test_the_table_across_gan_seeds_counts_each_verdict_and_names_the_sides_that_turn_over():
    def row(judge_difference, judge_p, kid_difference):
        return {"consistency": 0.9, "fidelity": {source: {family.CLASSIFIER_EXTRACTOR: {"kid": 0.5}}
                                                 for source in ("generated", "retrieval", "synthesis")},
                "paired": {"judge": {"mean_difference": judge_difference, "p_value": judge_p}},
                "against_samples": {"kid": {"kid_difference": kid_difference, "p_value": 0.5}}}

    by_seed = {"0": {"a": {"tanh": row(+0.4, 0.01, 0.1)}, "b": {"tanh": row(-0.3, 0.04, 0.1)}},
               "1": {"a": {"tanh": row(-0.2, 0.03, 0.1)}, "b": {"tanh": row(-0.1, 0.30, 0.1)}}}
    table = family.across_seeds_markdown(by_seed)
    assert "| a | tanh | 1 | 0.900 | 0.50 / 0.50 / 0.50 | behind (-0.20) | = (+0.10) |" in table
    assert ("- synthesis vs retrieval: judge DVBPR: ahead on 1, behind on 2, = on 1; one seed's side another's "
            "opposite on a (tanh).") in table
    assert ("- synthesis vs random G: KID: ahead on 0, behind on 0, = on 4; one seed's side another's opposite on "
            "none.") in table
    assert "optimised score" not in table   # no table has that test


def test_the_pm_flags_reach_pm_and_name_its_folders():
    cfg, _ = parse_config(family.FamilyConfig, ["--design", "--pm-steps", "5", "--pm-realism-term", "discriminator",
                                                "--pm-shape-weight", "30", "--pm-structure-weight", "20",
                                                "--pm-jitter", "4", "--pm-truncation", "0.5",
                                                "--pm-min-silhouette", "0.642"])
    assert family.pm_settings(cfg) == dict(steps=5, realism_term="discriminator", shape_weight=30.0,
                                           structure_weight=20.0, jitter=4, truncation=0.5, min_silhouette=0.642)
    assert family.settings_names(cfg)[-7:] == ["steps5", "realism_termdiscriminator", "shape_weight30",
                                               "structure_weight20", "jitter4", "truncation0.5", "min_silhouette0.642"]


@pytest.mark.parametrize("flags, message", [
    (["--tune"], "--tune tunes PM on every catalogue: give it with --design"),
    (["--pm-steps", "0"], "--pm-steps set Table IV of --design; give --design (or --missing)"),
    (["--missing", "--sweep-eta", "0"], "--sweep-eta set Table IV of --design; give --design"),
    (["--generator", "lsgan"], "--generator lsgan trains the GAN of --design or --missing: give one of them"),
    (["--gan-seeds", "1"], "--gan-seeds 1 trains the GAN of --design or --missing: give one of them"),
    (["--design", "--tune", "--gan-seeds", "0", "1"],
     "several --gan-seeds compare Table IV across GAN runs: give one seed with --tune, or several with --design alone"),
    (["--missing", "--gan-seeds", "1", "2"],
     "several --gan-seeds compare Table IV across GAN runs: give one seed with --missing, or several with --design "
     "alone"),
    (["--design", "--gan-seeds", "1", "1"], "--gan-seeds names a seed twice: 1 1"),
    (["--design", "--gan-seeds", "0", "-1"], "--gan-seeds must be from 0 to 4294967295, got -1"),
    (["--pm-eta", "0"], "--pm-eta sets PM of --design or --missing: give one of them"),
    (["--pm-realism-floor", "-1"], "--pm-realism-floor sets PM of --design or --missing: give one of them"),
    (["--pm-support-quantile", "0.9"], "--pm-support-quantile sets PM of --design or --missing: give one of them"),
    (["--pm-support-weight", "0"], "--pm-support-weight sets PM of --design or --missing: give one of them"),
    (["--pm-shape-weight", "1"], "--pm-shape-weight sets PM of --design or --missing: give one of them"),
    (["--pm-jitter", "4"], "--pm-jitter sets PM of --design or --missing: give one of them"),
    (["--pm-truncation", "0.5"], "--pm-truncation sets PM of --design or --missing: give one of them"),
    (["--pm-min-silhouette", "0.6"], "--pm-min-silhouette sets PM of --design or --missing: give one of them"),
    (["--missing", "--pm-steps-on-manifold"], "--pm-steps-on-manifold set Table IV of --design; give --design"),
    (["--pm-tailored"], "--pm-tailored set Table IV of --design; give --design"),
    (["--pm-sampled"], "--pm-sampled set Table IV of --design; give --design"),
    (["--design", "--pm-steps-on-manifold", "--pm-steps", "3"],
     "--pm-steps-on-manifold picks each catalogue's steps: leave --pm-steps out"),
    (["--design", "--tune", "--pm-trials", "5", "--sweep-eta", "0"],
     "--sweep-eta --pm-trials set Table IV of --design; --tune writes no Table IV: leave them out"),
    (["--design", "--generator", "vaegan"],
     "--latents tanh keeps z in [-1, 1], but --generator vaegan draws its codes from N(0, I): give --latents sphere"),
])
def test_table_iv_flags_are_refused_where_they_would_be_ignored(flags, message):
    with pytest.raises(SystemExit, match="^family: " + re.escape(message) + "$"):
        family.main(flags)
