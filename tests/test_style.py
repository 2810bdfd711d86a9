import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import pytest  # noqa: E402
from producer.cli import CliError  # noqa: E402
from producer.files.style import (
    MAX_LIST_ITEMS,
    MAX_TEXT_CHARS,
    Style,
    StylePrompts,
    apply_style,
    join_negative,
    join_prompt,
    load_style,
    style_prompts,
)

FULL = {
    "project_name": "Temple Dawn",
    "visual_style": {"art_style": "Studio Ghibli anime, painterly", "color_palette": "warm oranges, soft teal",
                     "lighting": "golden hour", "composition": "rule of thirds"},
    "motion_language": {"movement_quality": "smooth and fluid", "pacing": "slow contemplative",
                        "camera_style": "slow dolly in"},
    "subject_consistency": {"main_subject": "samurai in red armor", "environment": "temple courtyard"},
    "constraints": {"avoid": ["blurry", "text", "extra fingers"], "maintain": ["red armor", "cherry blossoms"]},
}


def write(tmp_path, data, name="style.json"):
    p = tmp_path / name
    if isinstance(data, bytes):
        p.write_bytes(data)
    else:
        p.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return p


def error_of(path) -> CliError:
    with pytest.raises(CliError) as info:
        load_style(path)
    return info.value


# ---------------------------------------------------------------- loading


def test_full_style_loads(tmp_path):
    style = load_style(write(tmp_path, FULL))
    assert style.project_name == "Temple Dawn"
    assert style.visual_style.lighting == "golden hour"
    assert style.motion_language.camera_style == "slow dolly in"
    assert style.subject_consistency.main_subject == "samurai in red armor"
    assert style.constraints.avoid == ("blurry", "text", "extra fingers")
    assert style.warnings == ()
    assert style.to_dict()["constraints"]["maintain"] == ["red armor", "cherry blossoms"]


def test_sections_and_fields_are_optional(tmp_path):
    style = load_style(write(tmp_path, {"visual_style": {"art_style": "watercolour"}}))
    assert style.visual_style.art_style == "watercolour"
    assert style.project_name == "" and style.constraints.avoid == ()
    assert style.motion_language.pacing == ""


def test_null_comment_keys_and_bom_are_accepted(tmp_path):
    data = {"$schema": "x", "_notes": "anything", "visual_style": {"art_style": "noir", "_why": "mood",
                                                                     "lighting": None}}
    path = write(tmp_path, b"\xef\xbb\xbf" + json.dumps(data).encode())
    assert load_style(path).visual_style.art_style == "noir"


def test_whitespace_is_collapsed_and_list_duplicates_dropped(tmp_path):
    data = {"visual_style": {"art_style": "  film\n noir  "}, "constraints": {"avoid": ["Blurry", "blurry", " text "]}}
    style = load_style(write(tmp_path, data))
    assert style.visual_style.art_style == "film noir"
    assert style.constraints.avoid == ("Blurry", "text")


def test_empty_strings_are_ignored_with_a_warning(tmp_path):
    style = load_style(write(tmp_path, {"visual_style": {"art_style": "noir", "lighting": "  "},
                                        "constraints": {"avoid": ["", "text"]}}))
    assert style.visual_style.lighting == ""
    assert style.constraints.avoid == ("text",)
    assert any("visual_style.lighting is empty" in w for w in style.warnings)
    assert any("constraints.avoid[0] is empty" in w for w in style.warnings)


def test_long_values_are_capped_at_a_word_with_a_warning(tmp_path):
    long_text = "very " * 400
    style = load_style(write(tmp_path, {"subject_consistency": {"main_subject": long_text},
                                        "constraints": {"avoid": [f"thing {i}" for i in range(100)]}}))
    kept = style.subject_consistency.main_subject
    assert len(kept) <= MAX_TEXT_CHARS and kept.endswith("very")
    assert len(style.constraints.avoid) == MAX_LIST_ITEMS
    assert any("subject_consistency.main_subject is 1999 characters" in w for w in style.warnings)
    assert any(f"kept the first {MAX_LIST_ITEMS}" in w for w in style.warnings)


@pytest.mark.parametrize("data, expected, fix", [
    ({"constraints": {"avoid": "blurry, text"}},
     "style.json: constraints.avoid must be a list of strings, got a string", '["blurry", "text"]'),
    ({"visual_style": {"art_style": 3}}, "style.json: visual_style.art_style must be a string, got a number (3)",
     "double quotes"),
    ({"visual_style": "anime"}, "style.json: visual_style must be an object {...}, got a string", '"art_style"'),
    ({"visual_style": {"colour_palette": "warm"}}, "style.json: visual_style.colour_palette is not a style.json field",
     "did you mean 'visual_style.color_palette'"),
    ({"visual_style": {"art_style": "x"}, "lighting": "soft"}, "style.json: lighting is not a style.json field",
     "move it to visual_style.lighting"),
    ({"visual_style": {"art_style": "x"}, "banana": 1}, "style.json: banana is not a style.json field",
     "keys starting with _ are comments"),
    ({"constraints": {"avoid": ["ok", 5]}}, "style.json: constraints.avoid[1] must be a string, got a number (5)", ""),
    ({"constraints": {"maintain": True}}, "constraints.maintain must be a list of strings, got a boolean (true)", ""),
    ({"visual_style": {"art_style": "description"}}, "visual_style.art_style still holds the template placeholder",
     "replace it"),
    ({"constraints": {"avoid": ["list", "of", "things"]}}, "constraints.avoid still holds the template placeholder",
     "[]"),
    ({"project_name": "x"}, "none of the style fields has a value", "art_style"),
    ({}, "none of the style fields has a value", "--style-ref"),
])
def test_schema_errors_name_the_file_the_json_path_and_the_fix(tmp_path, data, expected, fix):
    err = error_of(write(tmp_path, data))
    assert expected in err.message
    assert str(tmp_path / "style.json") in err.message
    assert fix in err.fix


def test_all_problems_are_reported_together(tmp_path):
    err = error_of(write(tmp_path, {"visual_style": {"art_style": 1, "lihgting": "x"}, "constraints": {"avoid": "a"}}))
    assert "has 3 problems" in err.message
    assert [p["error"].split(" ")[0] for p in err.details["problems"]] == [
        "visual_style.art_style", "visual_style.lihgting", "constraints.avoid"]
    assert "visual_style.lighting" in err.fix


@pytest.mark.parametrize("content, expected, fix", [
    ('{"visual_style": {"art_style": "x",}}', "invalid JSON at line 1, column 36", "no comma before a closing"),
    ('{\n  "visual_style": {\n    "art_style": "x"\n  \n', "invalid JSON at line 5", "json.tool"),
    ("", "is empty", "Phase 1"),
    ('["anime"]', "the top level must be a JSON object {...}, got a list", "Phase 1"),
    ('"anime"', "got a string", ""),
    ('{"visual_style": {"art_style": "a", "art_style": "b"}}', "the key 'art_style' appears twice", "keep one"),
])
def test_bad_json_is_reported_with_position(tmp_path, content, expected, fix):
    err = error_of(write(tmp_path, content))
    assert expected in err.message and fix in err.fix


def test_non_utf8_file_is_refused_with_the_line(tmp_path):
    path = write(tmp_path, '{\n"visual_style": {"art_style": "café"}}'.encode("cp1252"))
    err = error_of(path)
    assert "not UTF-8 text (byte 0xe9 at line 2)" in err.message and "UTF-8" in err.fix


def test_missing_file_directory_and_huge_file(tmp_path):
    assert "does not exist" in error_of(tmp_path / "nope.json").message
    assert "is a directory" in error_of(tmp_path).message
    big = write(tmp_path, "x" * 1_000_001, "big.json")
    assert "bytes; a style.json is a few hundred" in error_of(big).message


# ---------------------------------------------------------------- prompts


def full_style(tmp_path) -> Style:
    return load_style(write(tmp_path, FULL))


def test_image_prompts_carry_the_look_and_maintain_items(tmp_path):
    prompts = style_prompts(full_style(tmp_path), "image")
    assert prompts == StylePrompts(
        positive_suffix="Studio Ghibli anime, painterly, warm oranges, soft teal, golden hour, rule of thirds, "
                        "red armor, cherry blossoms",
        negative="blurry, text, extra fingers")


def test_maintain_items_can_be_left_out_for_background_plates(tmp_path):
    prompts = style_prompts(full_style(tmp_path), "image", include_maintain=False)
    assert prompts.positive_suffix.endswith("rule of thirds")


def test_video_prompts_carry_motion_and_art_style_only(tmp_path):
    prompts = style_prompts(full_style(tmp_path), "video")
    assert prompts.positive_suffix == ("smooth and fluid, slow contemplative, slow dolly in, "
                                       "Studio Ghibli anime, painterly")
    assert prompts.negative == "blurry, text, extra fingers"
    assert "samurai" not in prompts.positive_suffix  # subjects belong in the agent's own prompt


def test_prompts_from_a_sparse_style_have_no_stray_commas(tmp_path):
    style = load_style(write(tmp_path, {"visual_style": {"lighting": "neon"}}))
    assert style_prompts(style, "image") == StylePrompts("neon", "")
    assert style_prompts(style, "video") == StylePrompts("", "")


def test_unknown_target_is_a_programming_error(tmp_path):
    with pytest.raises(ValueError):
        style_prompts(full_style(tmp_path), "audio")


@pytest.mark.parametrize("prompt, suffix, expected", [
    ("a cat on a wall", "anime, golden hour", "a cat on a wall, anime, golden hour"),
    ("a cat on a wall, ,  ", "anime", "a cat on a wall, anime"),
    ("A cat sits.  ", "anime", "A cat sits. anime"),
    ("an ANIME cat in golden hour light", "anime, golden hour, soft", "an ANIME cat in golden hour light, soft"),
    ("shredded paper", "red", "shredded paper, red"),  # whole words only
    ("a cat", "", "a cat"),
    ("", "anime,, noir", "anime, noir"),
    ("  a\n cat  ", "noir", "a cat, noir"),
])
def test_join_prompt(prompt, suffix, expected):
    assert join_prompt(prompt, suffix) == expected


@pytest.mark.parametrize("user, style, expected", [
    ("low quality, Blurry", "blurry, text", "low quality, Blurry, text"),
    (None, "blurry,  text ,", "blurry, text"),
    ("", "", ""),
    ("worst quality,,", "", "worst quality"),
])
def test_join_negative_keeps_the_users_terms_first(user, style, expected):
    assert join_negative(user, style) == expected


def test_apply_style(tmp_path):
    prompts = style_prompts(full_style(tmp_path), "video")
    prompt, negative = apply_style("the samurai bows", "watermark", prompts)
    assert prompt.startswith("the samurai bows, smooth and fluid")
    assert negative == "watermark, blurry, text, extra fingers"
