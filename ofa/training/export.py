"""Export a resumable training checkpoint (`step=N.ckpt`) as a model folder, like the run's `final/`.

    ofa export runs/world-tiny/checkpoints/step=002000.ckpt out/step2000 [--dtype float16]

The checkpoint holds the weights and the model config (`ofa_config`); the tokenizer and the recipe come from the
run folder's `recipe.yaml` (the checkpoint's grandparent folder, or `--recipe`). Loading uses
`torch.load(weights_only=True)`: tensors and plain values only.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ofa.models import OFAConfig

from .recipe import RecipeError, load_recipe


def export_checkpoint(
    checkpoint: str | Path,
    folder: str | Path,
    recipe_path: str | Path | None = None,
    dtype: str | None = None,
) -> Path:
    """Write `folder` (model + tokenizer + recipe.yaml) from a training checkpoint; returns the folder."""
    from .run import EXPORT_DTYPES, export_final, load_tokenizer

    checkpoint, folder = Path(checkpoint), Path(folder)
    if not checkpoint.is_file():
        raise RecipeError(f"{checkpoint}: no such checkpoint file")
    recipe_path = Path(recipe_path) if recipe_path else checkpoint.parent.parent / "recipe.yaml"
    if not recipe_path.is_file():
        raise RecipeError(f"{recipe_path}: no recipe.yaml beside the run (pass --recipe)")
    if dtype is not None and dtype not in EXPORT_DTYPES:
        raise RecipeError(f"dtype must be one of {sorted(EXPORT_DTYPES)}, got {dtype!r}")
    recipe = load_recipe(recipe_path)
    if dtype is not None:
        recipe.train.export_dtype = dtype
    try:
        payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is one clear message
        raise RecipeError(
            f"{checkpoint}: not a readable training checkpoint ({err.__class__.__name__})"
        ) from None
    if not isinstance(payload, dict) or "state_dict" not in payload or "ofa_config" not in payload:
        raise RecipeError(f"{checkpoint}: not an `ofa train` checkpoint (no state_dict / ofa_config)")
    weights = {
        k.removeprefix("model."): v for k, v in payload["state_dict"].items() if k.startswith("model.")
    }
    export_final(OFAConfig.from_dict(payload["ofa_config"]), weights, load_tokenizer(recipe), recipe, folder)
    return folder


__all__ = ["export_checkpoint"]
