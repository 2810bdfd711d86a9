"""Prompt templates of the production planner."""

from producer.production import prompts


def test_object_descriptions_lose_their_article_after_the():
    text = prompts.character_prompt("a fox in a red coat", None, "a brass storm lantern.")
    assert "holding the brass storm lantern from image 2" in text and "the a " not in text
    text = prompts.background_prompt("a harbour at dusk", None, False, "An old rowing boat")
    assert "Include the old rowing boat from image 2." in text
    assert "Include the anchor from image 2." in prompts.background_prompt("a quay", None, False, "anchor")
