"""The official OFA image tokenizer: taming-transformers' `GumbelVQ` as `model.yaml` + Lightning `last.ckpt`.

`model.yaml` is taming's OmegaConf-style YAML (read here as plain YAML)::

    model:
      target: taming.models.vqgan.GumbelVQ
      params:
        kl_weight: 1.0e-08
        embed_dim: 256
        n_embed: 8192
        ddconfig: {double_z: false, z_channels: 256, resolution: 256, in_channels: 3, out_ch: 3,
                   ch: 128, ch_mult: [1, 1, 2, 4], num_res_blocks: 2, attn_resolutions: [32], dropout: 0.0}
        lossconfig: ...                     # training only: ignored
        temperature_scheduler_config: ...   # training only: ignored

`last.ckpt` is a Lightning checkpoint whose `state_dict` uses our weight names already (`encoder.*`,
`decoder.*`, `quant_conv.*`, `post_quant_conv.*`, `quantize.proj.*`, `quantize.embed.weight`); the
discriminator and perceptual-loss weights under `loss.*` are dropped. It is read with
`safe_torch_load`: tensors and plain data only, never arbitrary objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ofa.tokenization.image.configuration import ImageTokenizerConfig, ImageTokenizerError
from ofa.tokenization.image.modeling import ImageTokenizer, load_state_checked

CONFIG_FILE = "model.yaml"
CHECKPOINT_FILE = "last.ckpt"
# Training-only weights of a taming checkpoint: the GAN/LPIPS loss module and the segmentation colouriser.
_IGNORED_PREFIXES = ("loss.", "colorize")
_DDCONFIG_NAMES = {
    "ch": "channels",
    "ch_mult": "channel_multipliers",
    "num_res_blocks": "num_res_blocks",
    "attn_resolutions": "attn_resolutions",
    "in_channels": "in_channels",
    "out_ch": "out_channels",
    "resolution": "resolution",
    "z_channels": "z_channels",
    "dropout": "dropout",
}


def find_taming_files(path: str | Path) -> tuple[Path, Path]:
    """(`model.yaml`, checkpoint) for a folder holding both, or for the checkpoint file itself."""
    path = Path(path)
    folder = path.parent if path.is_file() else path
    config_file = folder / CONFIG_FILE
    if path.is_file():
        checkpoint = path
    elif (folder / CHECKPOINT_FILE).is_file():
        checkpoint = folder / CHECKPOINT_FILE
    else:
        found = sorted(folder.glob("*.ckpt"))
        if len(found) != 1:
            raise ImageTokenizerError(
                f"{path}: not an image tokenizer: expected config.json + model.safetensors (ours) or "
                f"{CONFIG_FILE} + {CHECKPOINT_FILE} (official taming VQGAN)"
            )
        checkpoint = found[0]
    if not config_file.is_file():
        raise ImageTokenizerError(f"{folder}: {CONFIG_FILE} is missing beside {checkpoint.name}")
    return config_file, checkpoint


def config_from_taming_yaml(file: str | Path) -> ImageTokenizerConfig:
    """Our config for the `GumbelVQ` that a taming `model.yaml` describes."""
    import yaml

    file = Path(file)
    try:
        document = yaml.safe_load(file.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ImageTokenizerError(f"{file}: not readable YAML: {str(err).splitlines()[0]}") from None
    model = document.get("model") if isinstance(document, Mapping) else None
    params = model.get("params") if isinstance(model, Mapping) else None
    if not isinstance(params, Mapping) or not isinstance(params.get("ddconfig"), Mapping):
        raise ImageTokenizerError(f"{file}: expected taming's layout model.params.ddconfig")
    target = str(model.get("target", "GumbelVQ"))
    if not target.endswith("GumbelVQ"):
        raise ImageTokenizerError(f"{file}: model.target is {target}; only taming's GumbelVQ is supported")
    if params.get("remap") is not None:
        raise ImageTokenizerError(f"{file}: codebook remapping (model.params.remap) is not supported")
    ddconfig = dict(params["ddconfig"])
    for key, wanted in (
        ("double_z", False),
        ("resamp_with_conv", True),
        ("give_pre_end", False),
        ("tanh_out", False),
    ):
        if key in ddconfig and bool(ddconfig[key]) != wanted:
            raise ImageTokenizerError(
                f"{file}: ddconfig.{key}={ddconfig[key]} is not supported (a VQGAN has {wanted})"
            )
    values: dict[str, Any] = {}
    for taming_name, our_name in _DDCONFIG_NAMES.items():
        if taming_name in ddconfig:
            values[our_name] = ddconfig[taming_name]
    for required in ("ch", "ch_mult", "num_res_blocks", "resolution", "z_channels"):
        if required not in ddconfig:
            raise ImageTokenizerError(f"{file}: model.params.ddconfig.{required} is missing")
    for key in ("n_embed", "embed_dim"):
        if key not in params:
            raise ImageTokenizerError(f"{file}: model.params.{key} is missing")
    if int(params["embed_dim"]) != int(ddconfig["z_channels"]):
        # taming builds GumbelQuantize's projection for z_channels inputs but feeds it embed_dim channels.
        raise ImageTokenizerError(
            f"{file}: GumbelVQ needs embed_dim == z_channels, got {params['embed_dim']} and {ddconfig['z_channels']}"
        )
    try:
        values.update(
            codebook_size=int(params["n_embed"]),
            embed_dim=int(params["embed_dim"]),
            quantizer="gumbel",
            # PyYAML reads "1e-8" (no dot) as a string; OmegaConf reads it as a float.
            kl_weight=float(params.get("kl_weight", 1e-8)),
            dropout=float(values.get("dropout", 0.0)),
        )
        for key in ("channels", "num_res_blocks", "in_channels", "out_channels", "resolution", "z_channels"):
            if key in values:
                values[key] = int(values[key])
        values["channel_multipliers"] = tuple(int(m) for m in values["channel_multipliers"])
        values["attn_resolutions"] = tuple(int(r) for r in values.get("attn_resolutions", ()))
    except (TypeError, ValueError) as err:
        raise ImageTokenizerError(f"{file}: a model.params value is not a number: {err}") from None
    return ImageTokenizerConfig.from_dict(values, source=str(file))


def load_taming_state(file: str | Path) -> dict[str, Tensor]:
    """The model weights of a taming Lightning checkpoint (or a bare state dict), loss weights dropped."""
    from ofa.convert.checkpoints import CheckpointError, safe_torch_load

    file = Path(file)
    try:
        raw = safe_torch_load(file)
    except CheckpointError as err:
        raise ImageTokenizerError(str(err)) from None
    state = raw.get("state_dict", raw) if isinstance(raw, Mapping) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ImageTokenizerError(f"{file}: expected a Lightning checkpoint with a 'state_dict' of tensors")
    kept = {k: v for k, v in state.items() if not k.startswith(_IGNORED_PREFIXES)}
    if "encoder.conv_in.weight" not in kept:
        raise ImageTokenizerError(f"{file}: no encoder.conv_in.weight; not a taming VQGAN checkpoint")
    return kept


def load_taming(config_file: str | Path, checkpoint_file: str | Path) -> ImageTokenizer:
    """An `ImageTokenizer` holding the official taming `GumbelVQ` weights."""
    config = config_from_taming_yaml(config_file)
    state = load_taming_state(checkpoint_file)
    model = ImageTokenizer(config)
    with torch.no_grad():
        load_state_checked(model, state, source=str(checkpoint_file))
    return model
