"""Prompt sentences and the class-description policy (default names, user files, sha256)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from aaclip_xattn.prompts import (
    ABNORMAL_STATES,
    NORMAL_STATES,
    TEMPLATES,
    Descriptions,
    build_sentences,
    category_to_words,
    descriptions_sha256,
    load_descriptions,
)

FIXTURE = Path(__file__).parent / "fixtures" / "aaclip_small"


def test_sentences_equal_the_reference_fixture_in_order():
    expected = torch.load(FIXTURE / "expected.pt", weights_only=True)["text"]
    normal, abnormal = build_sentences("dark bottle")
    assert normal == expected["sentences_normal"]
    assert abnormal == expected["sentences_abnormal"]


def test_state_words_and_templates_are_the_method_spec():
    assert NORMAL_STATES == ("{}", "a {}", "the {}")
    assert ABNORMAL_STATES == (
        "a damaged {}",
        "a broken {}",
        "a {} with flaw",
        "a {} with defect",
        "a {} with damage",
    )
    assert TEMPLATES == ("{}.", "a photo of {}.")
    normal, abnormal = build_sentences("x")
    assert (len(normal), len(abnormal)) == (6, 10)
    assert abnormal[:2] == ["a damaged x.", "a photo of a damaged x."]  # state-major, template-minor


@pytest.mark.parametrize(
    ("category", "words"),
    [("metal_nut", "metal nut"), ("bottle", "bottle"), ("pcb1", "pcb1"), ("a__b_", "a b")],
)
def test_category_names_become_words(category, words):
    assert category_to_words(category) == words
    assert Descriptions().describe(category) == words


def test_empty_category_name_is_an_error():
    with pytest.raises(ValueError, match="no words"):
        category_to_words("__")


def test_user_file_is_used_and_must_cover_every_category(tmp_path):
    path = tmp_path / "desc.json"
    path.write_text(json.dumps({"bottle": "dark bottle", "pill": "white pill"}), encoding="utf-8")
    policy = Descriptions(path)
    assert policy.describe("bottle") == "dark bottle"
    assert policy.sentences("pill")[0][0] == "white pill."
    with pytest.raises(ValueError, match=r"desc\.json: no description for category 'screw'.*bottle, pill"):
        policy.describe("screw")


def test_missing_file_and_invalid_json_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"descriptions file .*absent\.json does not exist"):
        Descriptions(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.json is not valid JSON"):
        load_descriptions(bad)
    wrong = tmp_path / "list.json"
    wrong.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match=r"list\.json: expected a JSON object"):
        load_descriptions(wrong)
    empty_value = tmp_path / "empty.json"
    empty_value.write_text('{"bottle": "  "}', encoding="utf-8")
    with pytest.raises(ValueError, match="entry 'bottle' must map a category name to a non-empty string"):
        load_descriptions(empty_value)


def test_sha256_is_of_the_canonical_json_of_the_mapping(tmp_path):
    mapping = {"b": "second", "a": "ünïcode first"}
    canonical = '{"a":"ünïcode first","b":"second"}'.encode()
    assert descriptions_sha256(mapping) == hashlib.sha256(canonical).hexdigest()
    # key order and file formatting do not matter; content does
    path = tmp_path / "d.json"
    path.write_text(json.dumps(dict(reversed(mapping.items())), indent=4), encoding="utf-8")
    assert Descriptions(path).sha256 == Descriptions(mapping).sha256 == descriptions_sha256(mapping)
    assert descriptions_sha256({"a": "x"}) != descriptions_sha256({"a": "y"})
    # the name policy differs from every mapping, the empty one included
    assert Descriptions().sha256 == hashlib.sha256(b"null").hexdigest()
    assert Descriptions().sha256 != descriptions_sha256({})


def test_descriptions_mapping_is_read_only_copy():
    source = {"bottle": "dark bottle"}
    policy = Descriptions(source)
    source["bottle"] = "changed"
    assert policy.describe("bottle") == "dark bottle"
    with pytest.raises(TypeError):
        policy.mapping["bottle"] = "x"  # type: ignore[index]
