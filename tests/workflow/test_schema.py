"""The config schema: both shipped configs validate, typos and bad values fail naming the key, defaults match."""

from __future__ import annotations

import copy
import dataclasses
import importlib
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
ARMS = ["baseline", "xattn_from_base", "xattn_scratch", "baseline_continued"]

# Config section -> the package dataclass whose fields it feeds (and whose defaults it must repeat).
DATACLASSES = {
    "train": ("aaclip_xattn.train", "TrainConfig"),
    "evaluate": ("aaclip_xattn.evaluate", "EvalConfig"),
    "stats": ("aaclip_xattn.stats.config", "StatsConfig"),
    "compute": ("aaclip_xattn.train", "TrainConfig"),
}
# Keys the workflow itself reads (not dataclass fields), per section, with their defaults.
WORKFLOW_KEYS = {"compute": {"seed_batch": 1}}
# Objects whose keys are another component's field names, validated there (ModelConfig options).
OPEN_OBJECTS = {"properties.train.properties.model_options"}


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / name).read_text())


def validated(cfg: dict) -> dict:
    cfg = copy.deepcopy(cfg)
    validate(cfg, str(SCHEMA), set_default=True)
    return cfg


@pytest.fixture(scope="module")
def schema() -> dict:
    return yaml.safe_load(SCHEMA.read_text())


def _objects(node, path=""):
    """Yield (path, schema) for every object schema in the tree."""
    if isinstance(node, dict):
        if node.get("type") == "object":
            yield path, node
        for key, value in node.items():
            yield from _objects(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _objects(value, f"{path}[{i}]")


def test_every_object_is_closed_and_every_key_described(schema):
    objects = list(_objects(schema))
    assert len(objects) >= 10
    for path, node in objects:
        if path in OPEN_OBJECTS:
            continue
        assert node.get("additionalProperties") is False, f"{path or 'root'} lets unknown keys through"
        for key, prop in node.get("properties", {}).items():
            assert prop.get("description"), f"{path}.properties.{key} has no description"


def test_default_config_is_the_embedded_study():
    cfg = validated(load("config.yaml"))
    assert cfg["backbone"]["name"] == "tiny"
    assert cfg["compute"]["device"] == "cpu"
    assert cfg["compute"]["seed_batch"] == 1  # per-seed jobs: seed-batching gains nothing on CPU
    datasets = {d["name"]: d for d in cfg["datasets"]}
    assert set(datasets) == {"synth_train", "synth_test"}
    assert all("synthetic" in d and "root" not in d for d in datasets.values())
    assert cfg["study"]["train_datasets"] == [{"name": "synth_train", "test_datasets": ["synth_test"]}]
    assert sorted(cfg["study"]["arms"]) == sorted(ARMS)
    assert len(cfg["study"]["seeds"]) >= 6
    assert cfg["train"]["text_epoch"] <= 2 and cfg["train"]["image_epoch"] <= 3
    assert 64 <= cfg["backbone"]["image_size"] <= 128
    assert cfg["stats"]["alpha"] == 0.05


def test_default_synthetic_test_set_has_at_least_eight_categories():
    data = pytest.importorskip("aaclip_xattn.data")
    if not hasattr(data, "DEFAULT_SYNTHETIC_DATASETS"):
        pytest.skip("aaclip_xattn.data.DEFAULT_SYNTHETIC_DATASETS not available yet")
    cfg = validated(load("config.yaml"))
    spec = next(d for d in cfg["datasets"] if d["name"] == "synth_test")["synthetic"]
    categories = spec.get("categories") or data.DEFAULT_SYNTHETIC_DATASETS[spec["preset"]].categories
    assert len(categories) >= 8


def test_paper_config_is_the_real_study():
    cfg = validated(load("paper.yaml"))
    assert cfg["backbone"] == {
        "name": "ViT-L-14-336",
        "weights": "/path/to/ViT-L-14-336px.pt",
        "image_size": 518,
    }
    layouts = {d["name"]: d["layout"] for d in cfg["datasets"]}
    assert layouts == {"mvtec": "mvtec", "visa": "visa"}
    directions = {e["name"]: e["test_datasets"] for e in cfg["study"]["train_datasets"]}
    assert directions == {"visa": ["mvtec"], "mvtec": ["visa"]}
    assert sorted(cfg["study"]["training_mode"]) == ["few_shot", "full_shot"]
    train = cfg["train"]
    assert (train["text_epoch"], train["image_epoch"], train["text_lr"], train["image_lr"]) == (
        5,
        20,
        1e-5,
        5e-4,
    )
    assert (train["text_batch_size"], train["image_batch_size"]) == (16, 2)
    assert all(d["root"].startswith("/path/to/") for d in cfg["datasets"])


def test_unknown_key_fails_naming_it():
    cfg = load("config.yaml")
    cfg["train"]["text_epochs"] = 3
    with pytest.raises(Exception, match=r"'text_epochs' was unexpected"):
        validated(cfg)


def test_unknown_top_level_section_fails_naming_it():
    cfg = load("config.yaml")
    cfg["trainer"] = {}
    with pytest.raises(Exception, match=r"'trainer' was unexpected"):
        validated(cfg)


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("train", "vv_axis", "rows", r"'rows' is not one of \['batch', 'token', 'value_only'\]"),
        ("compute", "device", "tpu", r"'tpu' is not one of \['auto', 'cpu', 'cuda'\]"),
        ("stats", "primary_metric", "accuracy", r"'accuracy' is not one of"),
        ("evaluate", "aupro_fpr_limit", 0.0, r"0\.0 is less than or equal to the minimum of 0"),
        ("compute", "seed_batch", 0, r"0 is less than the minimum of 1"),
        ("compute", "seed_batch", 2.5, r"2\.5 is not of type 'integer'"),
    ],
)
def test_bad_value_fails_naming_value_and_allowed_set(section, key, value, message):
    cfg = load("config.yaml")
    cfg[section][key] = value
    with pytest.raises(Exception, match=message):
        validated(cfg)


def test_odd_shot_and_duplicate_seed_fail():
    cfg = load("config.yaml")
    cfg["study"]["shots"] = [3]
    with pytest.raises(Exception, match=r"3 is not a multiple of 2"):
        validated(cfg)
    cfg = load("config.yaml")
    cfg["study"]["seeds"] = [0, 1, 1]
    with pytest.raises(Exception, match=r"non-unique elements"):
        validated(cfg)


def test_dataset_needs_exactly_one_of_root_and_synthetic():
    cfg = load("config.yaml")
    cfg["datasets"][0]["root"] = "/data/x"
    with pytest.raises(Exception, match=r"is valid under each of"):
        validated(cfg)


def test_missing_sections_take_the_defaults():
    cfg = load("config.yaml")
    for section in ("train", "evaluate", "stats", "compute"):
        del cfg[section]
    cfg = validated(cfg)
    assert cfg["train"]["vv_axis"] == "batch"
    assert cfg["train"]["text_epoch"] is None
    assert cfg["evaluate"]["aupro_fpr_limit"] == 0.3
    assert cfg["stats"]["primary_metric"] == "image_auroc"
    assert cfg["compute"] == {"device": "auto", "amp": False, "seed_batch": 1}


def _plain(value):
    if dataclasses.is_dataclass(value):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize("section", sorted(DATACLASSES))
def test_schema_defaults_equal_dataclass_defaults(schema, section):
    module_name, class_name = DATACLASSES[section]
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        pytest.skip(f"{module_name}.{class_name} not available yet")
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.name.startswith("_")}
    properties = dict(schema["properties"][section]["properties"])
    for key, default in WORKFLOW_KEYS.get(section, {}).items():
        assert properties.pop(key)["default"] == default, f"{section}.{key}"
    unknown = sorted(set(properties) - set(fields))
    assert not unknown, f"schema section {section!r} has keys {cls.__name__} does not accept: {unknown}"
    for key, prop in properties.items():
        field = fields[key]
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        assert prop["default"] == _plain(default), (
            f"{section}.{key}: schema {prop['default']!r} != {default!r}"
        )
