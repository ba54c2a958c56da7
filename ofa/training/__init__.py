"""Training: YAML recipes, a deterministic resumable multi-task data stream, and a Lightning module/trainer.

Typical use::

    from ofa.training import load_recipe, train
    recipe = load_recipe("tasks/world/tiny.yaml", ["train.max_steps=100"])
    result = train(recipe)          # writes checkpoints/, train_log.jsonl and final/ under train.output_dir

or ``ofa train tasks/world/tiny.yaml train.max_steps=100`` (see ``tasks/world/README.md``).
"""

from .recipe import Recipe, RecipeError, load_recipe, recipe_from_dict

__all__ = ["Recipe", "RecipeError", "load_recipe", "recipe_from_dict", "train"]


def __getattr__(name: str):  # lazy: importing the recipe schema must not import Lightning
    if name == "train":
        from .run import train

        return train
    raise AttributeError(name)
