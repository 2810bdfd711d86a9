"""The words of every planned prompt, built from the plan's own descriptions, deterministically.

The style's text (art style, palette, lighting...) is not written here: every job passes
`--style-ref style.json` and the scripts add it the same way everywhere. Pictures are numbered as
qwen_image.py numbers them: the --reference files in order, then --style-image, then the pose.
"""

from __future__ import annotations

ASSET_PROMPTS = {
    # SKILL.md Phase 2.5's templates, with what each asset is for spelled out for the model.
    "characters": "Full-body character sheet of {description}, standing in a neutral pose and facing the viewer, "
                  "the whole figure visible, plain light grey background",
    "backgrounds": "{description}. An empty establishing shot of the place, no people",
    "poses": "A plain grey mannequin figure, {description}, the whole body visible, plain white background",
    "styles": "An example scene that shows this visual style: {description}",
    "objects": "{description}, a single object on its own, plain light grey background",
}


def asset_prompt(kind: str, description: str) -> str:
    text = ASSET_PROMPTS[kind].format(description=description.rstrip(". "))
    return text[:1].upper() + text[1:]


def _thing(description: str) -> str:
    """A description as a noun phrase after "the": no leading article, no final full stop."""
    text = description.strip().rstrip(". ")
    first, _, rest = text.partition(" ")
    return rest if first.lower() in ("a", "an", "the") and rest else text


def background_prompt(place: str, moment: str | None, chained: bool, with_object: str | None) -> str:
    """A landscape keyframe (moment = its description) or the background layer of a character keyframe
    (moment None: the empty set only, so that a new description of the moment leaves the layer as it is).
    Image 1 is the place (the background asset, or the previous keyframe's background when chained),
    image 2 the object when there is one, then the style asset."""
    source = "the same place as image 1, seen again" if chained else "the place in image 1"
    parts = [moment.rstrip(". ") + "." if moment else "The empty set of this shot.",
             f"Show {source}: {place.rstrip('. ')}."]
    style_image = 2
    if with_object:
        parts.append(f"Include the {_thing(with_object)} from image 2.")
        style_image = 3
    parts.append("No people." if moment is None else "")
    parts.append(f"Paint it in the visual style of image {style_image}.")
    return " ".join(p for p in parts if p)


def character_prompt(character: str, pose: str | None, with_object: str | None) -> str:
    """The character layer: image 1 is the original character asset (identity is never chained), image 2
    the object when there is one; qwen_image.py puts its own pose instruction before this text."""
    parts = [f"The character from image 1, {character.rstrip('. ')}"]
    if pose:
        parts.append(pose.rstrip(". "))
    if with_object:
        parts.append(f"holding the {_thing(with_object)} from image 2")
    return ", ".join(parts) + ". Full body, the same face, hair and clothes as image 1, plain white background."


def composite_prompt(moment: str) -> str:
    """The keyframe of a character scene: image 1 the background layer, image 2 the character layer,
    image 3 the style asset."""
    return (f"{moment.rstrip('. ')}. Place the character from image 2 naturally into the scene of image 1, at a "
            "size and position that fit the set, with matching light and shadows. Keep the set of image 1 and the "
            "character's face, hair and clothes from image 2. Paint it in the visual style of image 3.")


def clip_prompt(motion: str, camera: str | None) -> str:
    text = motion.rstrip(". ") + "."
    return f"{text} Camera: {camera.rstrip('. ')}." if camera else text
