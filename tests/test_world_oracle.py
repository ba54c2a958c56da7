"""The world-scene oracle: parsing rendered scenes back into objects and checking prompts against images.

Ground truth is the world's own scene metadata (objects placed by ``World.layout`` and drawn by ``render``)
and hand-built scenes whose relations are set by construction.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from ofa.data.world import SPLITS, Background, World, WorldConfig, WorldObject, render
from ofa.data.world.schema import float_box, pixel_box
from ofa.evaluation.world_oracle import (
    DetectedObject,
    Prompt,
    compositional_accuracy,
    compositional_match,
    parse_prompt,
    parse_scene,
)

SCENES_PER_SPLIT = 40
# Indices away from the scenes the oracle was developed on.
FIRST_INDEX = 1000


def make_object(
    shape: str, colour: str, size: str, cx: float, cy: float, rotation: float = 0.0
) -> WorldObject:
    """A world object on a 128 px canvas, sized inside the world's ranges (large 38 px, small 19 px)."""
    extent = 38.0 if size == "large" else 19.0
    rotation = 0.0 if shape == "circle" else rotation
    box = pixel_box(float_box(shape, cx, cy, extent, rotation))
    rgb = {"red": (214, 39, 40), "blue": (31, 86, 220), "green": (44, 160, 44), "black": (34, 34, 34)}[colour]
    return WorldObject(shape, colour, size, box, (cx, cy), extent, rotation, rgb)


def draw(*objects: WorldObject, style: str = "noise") -> Image.Image:
    return render(objects, 128, Background("cream", style))


@pytest.mark.parametrize("image_size", [64, 96, 128])
def test_parse_scene_recovers_world_scenes(image_size: int) -> None:
    world = World(image_size=image_size)
    correct = total = 0
    for split in SPLITS:
        for index in range(FIRST_INDEX, FIRST_INDEX + SCENES_PER_SPLIT):
            objects, background = world.layout(split, index)
            image = render(objects, image_size, background, world.config.supersample)
            detected = parse_scene(image, world.config)
            total += 1
            if sorted(d.triple for d in detected) != sorted(o.triple for o in objects):
                continue
            correct += 1
            for obj in objects:
                # Its detection: same attributes, nearest centre (identical objects are never adjacent).
                twin = min(
                    (d for d in detected if d.triple == obj.triple),
                    key=lambda d: (d.cx - obj.cx) ** 2 + (d.cy - obj.cy) ** 2,
                )
                assert max(abs(a - b) for a, b in zip(twin.box, obj.box)) <= 2, (split, index, obj, twin)
    assert correct / total >= 0.99, f"scene accuracy {correct}/{total} at {image_size} px"


@pytest.mark.parametrize("degrade", ["blur", "jpeg"])
def test_parse_scene_tolerates_soft_images(degrade: str) -> None:
    # Decoded images are soft: a 1 px Gaussian blur or JPEG at quality 75 still reads exactly at 96 px.
    world = World(image_size=96)
    for index in range(FIRST_INDEX, FIRST_INDEX + 30):
        objects, background = world.layout("test", index)
        image = render(objects, 96, background)
        if degrade == "blur":
            image = image.filter(ImageFilter.GaussianBlur(1))
        else:
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=75)
            image = Image.open(buffer)
        detected = parse_scene(image, world.config)
        assert sorted(d.triple for d in detected) == sorted(o.triple for o in objects), index


def test_parse_scene_reads_a_hand_built_scene() -> None:
    star = make_object("star", "blue", "large", 90.0, 40.0, rotation=10.0)
    circle = make_object("circle", "red", "small", 30.0, 90.0)
    (c, s) = parse_scene(draw(star, circle))  # sorted left to right
    assert (c.triple, s.triple) == (("small", "red", "circle"), ("large", "blue", "star"))
    assert c.box == circle.box and abs(c.cx - 30.0) < 0.3 and abs(c.cy - 90.0) < 0.3
    assert abs(s.rotation - 10.0) < 2.0 and abs(s.extent - 38.0) < 1.0
    assert s.shape_error < 0.05 and isinstance(s.to_world_object(), WorldObject)


def test_parse_scene_handles_rotations_outside_the_world_range() -> None:
    # Moments give the pose for any rotation, not only the world's +-15 degrees.
    objects = [
        make_object("square", "black", "large", 32.0, 32.0, rotation=40.0),
        make_object("triangle", "green", "large", 96.0, 32.0, rotation=100.0),
        make_object("cross", "red", "large", 32.0, 96.0, rotation=-35.0),
        make_object("diamond", "blue", "large", 96.0, 96.0, rotation=70.0),
    ]
    detected = parse_scene(draw(*objects))
    assert sorted(d.triple for d in detected) == sorted(o.triple for o in objects)


def test_parse_scene_input_types_and_specks() -> None:
    image = draw(make_object("hexagon", "green", "large", 64.0, 64.0, rotation=5.0))
    expected = [("large", "green", "hexagon")]
    array = np.asarray(image).copy()
    assert [d.triple for d in parse_scene(array)] == expected
    assert [d.triple for d in parse_scene(array.astype(np.float32) / 255.0)] == expected
    assert [d.triple for d in parse_scene(image.convert("RGBA"))] == expected
    # Isolated dark pixels and a 2 x 2 blot are specks, not objects.
    array[5, 5] = array[100, 20] = (30, 30, 30)
    array[110:112, 110:112] = (214, 39, 40)
    assert [d.triple for d in parse_scene(array)] == expected
    assert parse_scene(render([], 128, Background("sky", "vgrad"))) == []


def test_parse_scene_splits_touching_objects_by_colour() -> None:
    left = make_object("square", "red", "large", 45.0, 64.0)
    right = make_object("square", "blue", "large", 45.0 + 32.0, 64.0)  # boxes touch: 32 px wide squares
    assert left.box[2] >= right.box[0]
    detected = parse_scene(draw(left, right))
    assert [d.triple for d in detected] == [("large", "red", "square"), ("large", "blue", "square")]


def test_parse_scene_rejects_bad_input() -> None:
    with pytest.raises(TypeError, match="PIL image or a numpy array"):
        parse_scene([[0, 0, 0]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="RGB array"):
        parse_scene(np.zeros((32, 32), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        parse_scene(np.full((32, 32, 3), 200.0, dtype=np.float32))
    with pytest.raises(ValueError, match="no background"):
        parse_scene(np.zeros((32, 32, 3), dtype=np.uint8))


# ------------------------------------------------------------------------------------------ prompts


def test_parse_prompt_hand_written_captions() -> None:
    want = Prompt(
        (
            ("small", "red", "circle"),
            ("large", "blue", "star"),
            ("small", "green", "square"),
            ("small", "green", "square"),
        ),
        ((0, "left", 1),),
    )
    assert (
        parse_prompt("a small red circle to the left of a large blue star, and also two small green squares")
        == want
    )
    assert parse_prompt("一个小的红色圆形在大的蓝色星形的左边，还有两个小的绿色正方形") == want
    assert parse_prompt("两个小的绿色正方形、一个大的蓝色星形和一个小的红色圆形").relations == ()
    assert parse_prompt("a red circle above a big blue star") == Prompt(
        ((None, "red", "circle"), ("large", "blue", "star")), ((0, "above", 1),)
    )
    with pytest.raises(ValueError, match="no object mention"):
        parse_prompt("an empty picture")
    with pytest.raises(ValueError, match="mention on each side"):
        parse_prompt("a small red circle to the left of")
    with pytest.raises(ValueError, match="unknown relation"):
        Prompt((("small", "red", "circle"), ("large", "blue", "star")), ((0, "behind", 1),))


def test_world_captions_are_true_of_their_scenes() -> None:
    # Every caption the world writes (EN and ZH) parses to the scene's objects, and its relations hold on
    # the ground-truth objects.
    world = World(WorldConfig(image_size=128))
    relations_seen = 0
    for index in range(40):
        scene = world.scene("train", index)
        for lang in ("en", "zh"):
            for caption in scene.captions[lang]:
                prompt = parse_prompt(caption, lang)
                assert sorted(prompt.objects) == sorted(o.triple for o in scene.objects), caption
                assert compositional_match(scene.objects, prompt), caption
                relations_seen += len(prompt.relations)
    assert relations_seen > 20


# ------------------------------------------------------------------------------------------ matching


CAPTION_EN = "a small red circle to the left of a large blue star"
CAPTION_ZH = "一个小的红色圆形在大的蓝色星形的左边"


@pytest.fixture(scope="module")
def relation_scene() -> tuple[WorldObject, WorldObject]:
    return make_object("circle", "red", "small", 25.0, 70.0), make_object("star", "blue", "large", 85.0, 60.0)


@pytest.mark.parametrize("caption", [CAPTION_EN, CAPTION_ZH])
def test_compositional_match_accepts_the_prompted_scene(relation_scene, caption: str) -> None:
    circle, star = relation_scene
    assert compositional_match(parse_scene(draw(circle, star)), parse_prompt(caption))


def test_compositional_match_rejects_violations(relation_scene) -> None:
    circle, star = relation_scene
    prompt = parse_prompt(CAPTION_EN)
    recoloured = make_object("circle", "green", "small", circle.cx, circle.cy)
    enlarged = make_object("circle", "red", "large", circle.cx, circle.cy)
    moved = make_object("circle", "red", "small", 110.0, 110.0)  # right of and below the star
    overlapping = make_object("circle", "red", "small", 70.0, 105.0)  # x ranges overlap: "left" undecided
    extra = make_object("square", "black", "small", 25.0, 20.0)
    for objects in ([recoloured, star], [enlarged, star], [star], [moved, star], [overlapping, star]):
        detected = parse_scene(draw(*objects))
        assert len(detected) == len(objects)
        assert not compositional_match(detected, prompt), objects
    assert not compositional_match(parse_scene(draw(circle, star, extra)), prompt)
    # Moving breaks only the relation: without relations the same image matches.
    assert compositional_match(parse_scene(draw(moved, star)), prompt.objects)
    # Size-free mentions accept either size.
    assert compositional_match(
        parse_scene(draw(enlarged, star)), parse_prompt("a red circle left of a blue star")
    )


def test_compositional_match_finds_the_assignment_among_identical_objects() -> None:
    # Two identical red circles: the relation must hold for one of them, whichever is mentioned first.
    a = make_object("circle", "red", "small", 20.0, 30.0)
    b = make_object("circle", "red", "small", 110.0, 30.0)
    star = make_object("star", "blue", "large", 64.0, 90.0)
    detected = parse_scene(draw(a, b, star))
    left_of = parse_prompt("a small red circle to the left of a large blue star, and also a small red circle")
    right_of = parse_prompt(
        "a small red circle to the right of a large blue star, and also a small red circle"
    )
    above = parse_prompt("a small red circle below a large blue star, and also a small red circle")
    assert compositional_match(detected, left_of) and compositional_match(detected, right_of)
    assert not compositional_match(detected, above)


def test_compositional_match_shape_error_threshold() -> None:
    blob = DetectedObject(
        "circle", "red", "small", (0, 0, 10, 10), (5.0, 5.0), 10.0, 0.0, (214, 39, 40), 70.0, 0.6
    )
    assert compositional_match([blob], [("small", "red", "circle")])
    assert not compositional_match([blob], [("small", "red", "circle")], max_shape_error=0.3)


def test_compositional_accuracy_on_world_scenes() -> None:
    world = World(image_size=96)
    scenes = [world.scene("heldout", i) for i in range(12)]
    images = [s.image for s in scenes]
    captions = [s.captions["en"][-1] for s in scenes]  # relation captions when the scene has one
    assert compositional_accuracy(images, captions) == {
        "compositional_accuracy": 1.0,
        "object_accuracy": 1.0,
        "num_images": 12.0,
    }
    assert compositional_accuracy(images, scenes, world.config)["compositional_accuracy"] == 1.0
    # Each image against the next scene's prompt: objects never coincide in these scenes.
    shifted = compositional_accuracy(images, scenes[1:] + scenes[:1], world.config)
    assert shifted["object_accuracy"] == 0.0
    # An unparsable image (no background) is a failure, not an error.
    black = np.zeros((96, 96, 3), dtype=np.uint8)
    assert compositional_accuracy([black], [scenes[0]])["compositional_accuracy"] == 0.0
    with pytest.raises(ValueError, match="2 images for 1 prompts"):
        compositional_accuracy([black, black], [scenes[0]])
