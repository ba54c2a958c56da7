"""Reading and writing OFA checkpoints: our format, the official HF port and official fairseq `.pt` files.

* ours: a folder with `config.json` (`"model_format": "ofa-unified"`) and `model.safetensors`, or shards
  `model-0000i-of-0000n.safetensors` with `model.safetensors.index.json`.
* HF port: a folder with the port's `config.json` (`"model_type": "ofa"`) and `model.safetensors` or
  `pytorch_model.bin`.
* fairseq: a `.pt` file holding `model` (the state dict) and `cfg` (or the older `args`).

Nothing is ever unpickled beyond tensors and the plain containers these files really hold
(`torch.load(weights_only=True)` with `argparse.Namespace` allowed). The architecture is read off the weights
themselves, so a config that disagrees with them cannot produce a silently wrong model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ofa.models.configuration_ofa import ConfigError, OFAConfig

FORMAT_NAME = "ofa-unified"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"

# Official buffers and aliases that we rebuild or tie instead of loading.
_DROPPED = re.compile(
    r"^(encoder|decoder)\.(version|token_rp_bucket|image_rp_bucket|image_position_idx)$"
    r"|^decoder\.(embed_tokens|output_projection)\.weight$"
)
# fairseq -> our (= HF port) names, applied to whole dotted components.
_FAIRSEQ_RENAMES = [
    (".attn_ln.", ".self_attn_mid_layer_norm."),
    (".self_attn_ln.", ".self_attn_mid_layer_norm."),
    (".cross_attn_ln.", ".cross_attn_mid_layer_norm."),
    (".encoder_attn_layer_norm.", ".cross_attn_layer_norm."),
    (".encoder_attn.", ".cross_attn."),
    (".ffn_layernorm.", ".ffn_layer_norm."),
]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read as an OFA model; the message names the file and the problem."""


# ----------------------------------------------------------------------------------------------- loading
def detect_format(path: str | Path) -> str:
    """`ofa`, `hf` or `fairseq` for a checkpoint path, or raise `CheckpointError`."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix in (".pt", ".pth", ".ckpt") or _is_zip_or_pickle(path):
            return "fairseq"
        raise CheckpointError(
            f"{path}: not a checkpoint (expected a folder with config.json or a fairseq .pt file)"
        )
    config_file = path / CONFIG_NAME
    config = read_json_object(config_file) if config_file.is_file() else {}
    if config.get("model_format") == FORMAT_NAME:
        return "ofa"
    has_hf_weights = any((path / name).is_file() for name in (WEIGHTS_NAME, INDEX_NAME, "pytorch_model.bin"))
    if config.get("model_type") == "ofa" and has_hf_weights:
        return "hf"
    if len(_torch_files(path)) == 1:
        return "fairseq"
    raise CheckpointError(
        f"{path}: not an OFA checkpoint: expected {CONFIG_NAME} with model_format={FORMAT_NAME!r}, "
        f"an official HF-port folder (model_type 'ofa' + weights) or exactly one fairseq .pt file"
    )


def _torch_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".pt", ".pth") and p.is_file())


def load_checkpoint(
    path: str | Path, dtype: torch.dtype = torch.float32
) -> tuple[OFAConfig, dict[str, Tensor]]:
    """(config, state dict under our names) from any supported checkpoint. Floating tensors become `dtype`."""
    path = Path(path)
    kind = detect_format(path)
    if kind == "ofa":
        config = _load_our_config(path / CONFIG_NAME)
        state = _load_safetensors_folder(path)
    elif kind == "hf":
        hf_config = read_json_object(path / CONFIG_NAME)
        state = _load_hf_weights(path)
        config = config_from_state(state, _hf_hints(hf_config), source=str(path), position_idx_tail=768)
    else:
        file = path if path.is_file() else _torch_files(path)[0]
        raw = safe_torch_load(file)
        if not isinstance(raw, Mapping) or "model" not in raw:
            raise CheckpointError(
                f"{file}: a fairseq checkpoint holds a dict with a 'model' entry; this one does not"
            )
        state = {_fairseq_to_ours(k): v for k, v in raw["model"].items()}
        config = config_from_state(state, _fairseq_hints(raw, file), source=str(file), position_idx_tail=769)
        path = file
    state = _clean(state, source=str(path))
    return config, {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


# Globals that only rebuild plain data (numpy scalars, dtypes and arrays in fairseq's `extra_state` metrics).
_DATA_GLOBAL_PREFIXES = (
    "numpy.dtype",
    "numpy.dtypes.",
    "numpy._core.multiarray.scalar",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray._reconstruct",
    "numpy.ndarray",
)


def _numpy_data_globals() -> list[Any]:
    import numpy
    import numpy.dtypes

    multiarray = numpy._core.multiarray if hasattr(numpy, "_core") else numpy.core.multiarray
    classes = [getattr(numpy.dtypes, name) for name in numpy.dtypes.__all__]
    return [numpy.dtype, numpy.ndarray, multiarray.scalar, multiarray._reconstruct, *classes]


# Lightning < 1.5 keys each callback's saved state by the callback's class, so a checkpoint names classes
# such as ModelCheckpoint. They are only dict keys there: stand-in classes take their place, nothing of
# Lightning is imported or run.
_LIGHTNING_CALLBACK_KEYS = [
    (type(name.rsplit(".", 1)[1], (), {"__module__": __name__}), name)
    for name in (
        "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
        "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
    )
]


def safe_torch_load(file: str | Path) -> Any:
    """`torch.load` that only builds tensors and plain data: containers, `argparse.Namespace`, numpy scalars.

    Lightning checkpoints load too: callback classes used as keys of their `callbacks` entry come back as
    empty stand-in classes.
    """
    allowed: list[Any] = [argparse.Namespace, *_numpy_data_globals(), *_LIGHTNING_CALLBACK_KEYS]
    try:  # fairseq may store its config as OmegaConf containers: plain data, safe to rebuild when installed.
        from omegaconf import DictConfig, ListConfig
        from omegaconf.base import ContainerMetadata, Metadata
        from omegaconf.nodes import AnyNode

        allowed += [DictConfig, ListConfig, ContainerMetadata, Metadata, AnyNode]
    except ImportError:
        pass
    # Zip checkpoints (torch >= 1.6) are scanned first, so a refusal names every offending global; the legacy
    # format cannot be scanned, and there torch's weights-only unpickler refuses the first one it meets.
    if zipfile.is_zipfile(file):
        try:
            found = torch.serialization.get_unsafe_globals_in_checkpoint(file)
        except Exception as err:
            raise CheckpointError(
                f"{file}: cannot be read as a torch checkpoint (corrupt or truncated?): {_first_line(err)}"
            ) from None
        known = {g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}" for g in allowed}
        refused = [name for name in found if name not in known and not name.startswith(_DATA_GLOBAL_PREFIXES)]
        if refused:
            raise CheckpointError(
                f"{file}: refuses to unpickle {', '.join(refused)}; only tensors and plain data are loaded"
            )
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # truncation and bad archives surface as several exception types
        refused_global = re.search(r"GLOBAL ([\w.]+)", str(err))
        if refused_global:
            raise CheckpointError(
                f"{file}: refuses to unpickle {refused_global.group(1)}; only tensors and plain data are loaded"
            ) from None
        raise CheckpointError(
            f"{file}: cannot be read as a torch checkpoint (corrupt or truncated?): {_first_line(err)}"
        ) from None


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _is_zip_or_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK") or head[:1] == b"\x80"


def read_json_object(file: Path, error: type[Exception] | None = None) -> dict[str, Any]:
    """A JSON object from `file`; anything else raises `error` (default `CheckpointError`) naming the file."""
    kind = error or CheckpointError
    try:
        value = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise kind(f"{file}: not readable JSON: {err}") from None
    if not isinstance(value, dict):
        raise kind(f"{file}: expected a JSON object")
    return value


def _load_our_config(file: Path) -> OFAConfig:
    try:
        return OFAConfig.load(file)
    except ConfigError as err:
        raise CheckpointError(str(err)) from None


def _load_safetensors(file: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not file.is_file():
        raise CheckpointError(f"{file}: missing")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{file}: not a valid safetensors file (corrupt or truncated?): {err}"
        ) from None


def _load_safetensors_folder(folder: Path) -> dict[str, Tensor]:
    index_file = folder / INDEX_NAME
    if index_file.is_file():
        index = read_json_object(index_file)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index_file}: no 'weight_map'")
        state: dict[str, Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            state.update(_load_safetensors(folder / shard))
        missing = sorted(set(weight_map) - set(state))
        if missing:
            raise CheckpointError(f"{index_file}: shards lack {missing[:5]}")
        return state
    return _load_safetensors(folder / WEIGHTS_NAME)


def _load_hf_weights(folder: Path) -> dict[str, Tensor]:
    if (folder / WEIGHTS_NAME).is_file() or (folder / INDEX_NAME).is_file():
        return _load_safetensors_folder(folder)
    bin_file = folder / "pytorch_model.bin"
    if bin_file.is_file():
        state = safe_torch_load(bin_file)
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{bin_file}: expected a state dict")
        return dict(state)
    raise CheckpointError(f"{folder}: no {WEIGHTS_NAME} or pytorch_model.bin")


def _fairseq_to_ours(key: str) -> str:
    key = "." + key + "."
    for old, new in _FAIRSEQ_RENAMES:
        key = key.replace(old, new)
    return key[1:-1]


def _clean(state: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """Drop rebuilt buffers and tied aliases (checking that an alias really equals what it aliases)."""
    state = dict(state)
    if "encoder.embed_tokens.weight" not in state:
        for alias in ("decoder.embed_tokens.weight", "decoder.output_projection.weight"):
            if alias in state:
                state["encoder.embed_tokens.weight"] = state[alias]
                break
        else:
            raise CheckpointError(f"{source}: no token embedding (encoder.embed_tokens.weight)")
    shared = state["encoder.embed_tokens.weight"]
    for alias in ("decoder.embed_tokens.weight", "decoder.output_projection.weight"):
        if alias in state and not torch.equal(state[alias].to(shared.dtype), shared):
            raise CheckpointError(
                f"{source}: {alias} differs from encoder.embed_tokens.weight; OFA ties them"
            )
    return {k: v for k, v in state.items() if not _DROPPED.match(k)}


# ----------------------------------------------------------------------------------- architecture reading
def _hf_hints(hf: dict[str, Any]) -> dict[str, Any]:
    normformer = bool(hf.get("normformer", True))
    hints = {
        "encoder_attention_heads": hf.get("encoder_attention_heads"),
        "decoder_attention_heads": hf.get("decoder_attention_heads"),
        "activation_function": hf.get("activation_function", "gelu"),
        "dropout": hf.get("dropout", 0.1),
        "attention_dropout": hf.get("attention_dropout", 0.0),
        "activation_dropout": hf.get("activation_dropout", 0.0),
        "encoder_drop_path_rate": hf.get("encoder_drop_path_rate", 0.0),
        "decoder_drop_path_rate": hf.get("decoder_drop_path_rate", 0.0),
        "resnet_drop_path_rate": hf.get("resnet_drop_path_rate", 0.0),
        "encoder_normalize_before": hf.get("encoder_normalize_before", True),
        "decoder_normalize_before": hf.get("decoder_normalize_before", True),
        "scale_embedding": hf.get("scale_embedding", False),
        "attn_scale_factor": hf.get("attn_scale_factor", 2.0),
        "code_image_size": hf.get("code_image_size", 128),
        "entangle_position_embedding": hf.get("entangle_position_embedding", False),
        "entangle_decoder_positions": hf.get("entangle_position_embedding", False),
        "scale_heads": True,  # the port always builds c_attn
        "scale_attn": normformer,
        "scale_fc": normformer,
        "image_size": 256,
    }
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if hf.get(key) is not None:
            hints[key] = hf[key]
    return {k: v for k, v in hints.items() if v is not None}


def _fairseq_hints(raw: Mapping[str, Any], file: Path) -> dict[str, Any]:
    cfg = raw.get("cfg")
    args = raw.get("args")
    model_args: dict[str, Any] = {}
    task_args: dict[str, Any] = {}
    if cfg is not None:
        cfg = _plain(cfg)
        if isinstance(cfg, dict):
            model_args = _plain(cfg.get("model")) or {}
            task_args = _plain(cfg.get("task")) or {}
    if not model_args and args is not None:
        model_args = task_args = _plain(args) or {}
    if not isinstance(model_args, dict):
        raise CheckpointError(f"{file}: cfg.model / args is not a mapping of model arguments")
    get = model_args.get
    hints: dict[str, Any] = {
        "encoder_attention_heads": get("encoder_attention_heads"),
        "decoder_attention_heads": get("decoder_attention_heads"),
        "activation_function": get("activation_fn", "gelu"),
        "dropout": get("dropout", 0.1),
        "attention_dropout": get("attention_dropout", 0.0),
        "activation_dropout": get("activation_dropout", 0.0),
        "encoder_drop_path_rate": get("encoder_drop_path_rate", 0.0),
        "decoder_drop_path_rate": get("decoder_drop_path_rate", 0.0),
        "resnet_drop_path_rate": get("resnet_drop_path_rate", 0.0),
        "encoder_normalize_before": get("encoder_normalize_before", True),
        "decoder_normalize_before": get("decoder_normalize_before", True),
        "scale_embedding": not get("no_scale_embedding", True),
        "attn_scale_factor": get("attn_scale_factor", 2.0),
        "code_image_size": get(
            "code_image_size", task_args.get("code_image_size", 128) if task_args else 128
        ),
        "entangle_decoder_positions": not get("disable_entangle", True),
        "entangle_position_embedding": get("entangle_position_embedding", False),
        "image_size": (task_args or {}).get("patch_image_size", 480),
        "num_codes": (task_args or {}).get("code_dict_size"),
        "num_bins": (task_args or {}).get("num_bins"),
    }
    return {k: v for k, v in hints.items() if v is not None}


def _plain(value: Any) -> Any:
    """Namespace / OmegaConf containers -> dicts, recursively."""
    if isinstance(value, argparse.Namespace):
        return {k: _plain(v) for k, v in vars(value).items()}
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(value):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:
        pass
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _count(state: Mapping[str, Tensor], pattern: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    if found and found != set(range(len(found))):
        raise CheckpointError(f"layers matching {pattern!r} are not numbered 0..n-1: {sorted(found)}")
    return len(found)


def config_from_state(
    state: Mapping[str, Tensor], hints: dict[str, Any], source: str, position_idx_tail: int = 768
) -> OFAConfig:
    """Read the architecture off the weights; take what weights cannot show (heads, rates) from `hints`.

    `position_idx_tail` is the number of trailing entries of the official `decoder.image_position_idx`
    buffer (768 in the HF port, 769 in fairseq); when the buffer is stored it fixes `code_image_size`.
    """

    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise CheckpointError(f"{source}: expected weight {key} is missing")
        return tuple(state[key].shape)

    embed_key = next(
        (k for k in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight") if k in state), None
    )
    if embed_key is None:
        raise CheckpointError(f"{source}: no token embedding; is this an OFA checkpoint?")
    vocab_size, d_model = shape(embed_key)
    encoder_layers = _count(state, r"encoder\.layers\.(\d+)\.")
    decoder_layers = _count(state, r"decoder\.layers\.(\d+)\.")
    if not encoder_layers or not decoder_layers:
        raise CheckpointError(f"{source}: found {encoder_layers} encoder and {decoder_layers} decoder layers")

    def heads(side: str) -> int:
        key = f"{side}.layers.0.self_attn.c_attn"
        if key in state:
            return shape(key)[0]
        value = hints.get(f"{side}_attention_heads")
        if value is None:
            raise CheckpointError(f"{source}: the number of {side} attention heads is not recorded")
        return int(value)

    token_buckets = shape("encoder.token_rel_pos_table_list.0.weight")[0]
    image_positions = shape("encoder.embed_image_positions.weight")[0]
    image_bucket = math.isqrt(image_positions - 1)
    resnet_layers = [_count(state, rf"encoder\.embed_images\.layer{s}\.(\d+)\.") for s in (1, 2, 3)]
    values = {
        **{k: v for k, v in hints.items() if k not in ("encoder_attention_heads", "decoder_attention_heads")},
        "vocab_size": vocab_size,
        "d_model": d_model,
        "encoder_layers": encoder_layers,
        "decoder_layers": decoder_layers,
        "encoder_attention_heads": heads("encoder"),
        "decoder_attention_heads": heads("decoder"),
        "encoder_ffn_dim": shape("encoder.layers.0.fc1.weight")[0],
        "decoder_ffn_dim": shape("decoder.layers.0.fc1.weight")[0],
        "scale_attn": "encoder.layers.0.self_attn_mid_layer_norm.weight" in state,
        "scale_fc": "encoder.layers.0.ffn_layer_norm.weight" in state,
        "scale_heads": "encoder.layers.0.self_attn.c_attn" in state,
        "scale_resids": "encoder.layers.0.w_resid" in state,
        "layernorm_embedding": "encoder.layernorm_embedding.weight" in state,
        "patch_layernorm_embedding": "encoder.patch_layernorm_embedding.weight" in state,
        "code_layernorm_embedding": "decoder.code_layernorm_embedding.weight" in state,
        "add_type_embedding": "encoder.type_embedding.weight" in state,
        "encoder_normalize_before": "encoder.layer_norm.weight" in state,
        "decoder_normalize_before": "decoder.layer_norm.weight" in state,
        "token_bucket_size": (token_buckets + 1) // 2,
        "image_bucket_size": image_bucket,
        "max_source_positions": shape("encoder.embed_positions.weight")[0] - 2,
        "max_target_positions": shape("decoder.embed_positions.weight")[0] - 2,
        "resnet_layers": resnet_layers,
        "resnet_width": shape("encoder.embed_images.conv1.weight")[0],
    }
    if "decoder.image_position_idx" in state:
        cells = state["decoder.image_position_idx"].numel() - 1 - position_idx_tail
        grid = math.isqrt(max(cells, 0))
        if grid * grid == cells and grid > 0:
            values["code_image_size"] = grid * 8
    if image_bucket * image_bucket + 1 != image_positions:
        raise CheckpointError(f"{source}: embed_image_positions has {image_positions} rows, not B*B+1")
    try:
        return OFAConfig(**values)
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{source}: {err}") from None


# ----------------------------------------------------------------------------------------------- writing
def save_checkpoint(
    config: OFAConfig, state: dict[str, Tensor], path: str | Path, max_shard_bytes: int = 2 << 30
) -> None:
    """Write our format atomically: files are staged beside the target and moved in, `config.json` last."""
    from .safetensors_io import save_safetensors

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=path))
    try:
        shards = _shard(state, max_shard_bytes)
        names = (
            [WEIGHTS_NAME]
            if len(shards) == 1
            else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        )
        metadata = {"format": "pt", "model_format": FORMAT_NAME}
        for name, shard in zip(names, shards):
            save_safetensors({k: v.contiguous() for k, v in shard.items()}, staging / name, metadata=metadata)
        if len(shards) > 1:
            weight_map = {key: name for name, shard in zip(names, shards) for key in shard}
            total = sum(t.numel() * t.element_size() for t in state.values())
            (staging / INDEX_NAME).write_text(
                json.dumps(
                    {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True
                )
            )
        config_values = {"model_format": FORMAT_NAME, "format_version": FORMAT_VERSION, **config.to_dict()}
        (staging / CONFIG_NAME).write_text(json.dumps(config_values, indent=2, sort_keys=True) + "\n")
        stale = [p for p in path.glob("model*.safetensors*") if p.name not in names and p.name != INDEX_NAME]
        for name in [*names, *([INDEX_NAME] if len(shards) > 1 else []), CONFIG_NAME]:
            os.replace(staging / name, path / name)
        if len(shards) == 1 and (path / INDEX_NAME).exists():
            (path / INDEX_NAME).unlink()
        for old in stale:
            old.unlink()
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _shard(state: dict[str, Tensor], max_bytes: int) -> list[dict[str, Tensor]]:
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for key in sorted(state):
        tensor = state[key]
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    return shards
