"""The text tokenizer of world models, trained on train-split texts only (`python -m ofa.data.world.tokenizer DIR`)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

from ofa.tokenization import OFATokenizer

from .core import World
from .language import NUM_ZH, REL_ZH
from .vocab import COLOUR_ZH, SHAPE_ZH, SIZE_ZH

WORLD_NUM_CODES = 512
WORLD_NUM_BINS = 256


def world_texts(world: World, scenes: int) -> Iterator[str]:
    """Task prompts plus every caption and referring expression of the first `scenes` train scenes."""
    from ofa.tasks import TASKS

    for task in TASKS.values():
        for prompt in task.prompts.values():
            yield prompt.replace("{}", "")
    for index in range(scenes):
        scene = world.scene("train", index)
        for lang, captions in scene.captions.items():
            yield from ((" " + c) if lang == "en" else c for c in captions)
        yield from ((" " + r.text) if r.lang == "en" else r.text for r in scene.refs)


def world_chinese_words() -> list[str]:
    """The Chinese words of world texts that become single tokens: colours, shapes, "大的" / "小的", numeral +
    classifier ("两个") and the relation words. A Chinese mention ("一个小的红色圆形") is then four tokens like its
    English one (" a small red circle") instead of eight characters; longer targets were where the small
    decoder lost its place (skipped or repeated words in Chinese captions)."""
    return [
        *COLOUR_ZH.values(),
        *SHAPE_ZH.values(),
        *(f"{size}的" for size in SIZE_ZH.values()),
        *(f"{numeral}个" for numeral in NUM_ZH.values()),
        *REL_ZH.values(),
        "物体",
    ]


def build_world_tokenizer(seed: int = 0, scenes: int = 4000, vocab_size: int = 1000) -> OFATokenizer:
    from ofa.tokenization.train import train_bpe_tokenizer

    return train_bpe_tokenizer(
        world_texts(World(seed=seed), scenes),
        vocab_size,
        num_codes=WORLD_NUM_CODES,
        num_bins=WORLD_NUM_BINS,
        cjk_words=world_chinese_words(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--scenes", type=int, default=4000)
    args = parser.parse_args()
    tokenizer = build_world_tokenizer(scenes=args.scenes)
    tokenizer.save_pretrained(args.out)
    print(f"wrote {args.out}: {tokenizer}")


if __name__ == "__main__":
    main()
