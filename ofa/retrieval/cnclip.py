"""Chinese-CLIP (OFA-Sys/Chinese-CLIP, `cn_clip`) checkpoints as open_clip models.

`load_cnclip(path)` builds an `open_clip.CustomTextCLIP` (ViT or ModifiedResNet image tower, HF BERT text
tower with [CLS] pooling and a bias-free linear projection, QuickGELU), loads the official weights into it
with `strict=True`, and wraps it with Chinese-CLIP's exact tokenizer and eval image preprocessing.
Nothing is downloaded and `cn_clip` is not needed at run time.

Accepted layouts for `path`:

* a folder with `config.json` and `model.safetensors` (official key names). `config.json` is either
  `{"clip_kwargs": {...cn_clip.clip.model.CLIP kwargs...}, "context_length": 52, "input_resolution": 224,
  "image_mean": [...], "image_std": [...]}` (only `clip_kwargs` is required) or the flat kwargs themselves;
* a released Chinese-CLIP `.pt` file (`{"state_dict": {...}, "epoch": ..., ...}`, keys optionally prefixed
  by `module.`) or a `.safetensors` file, with its configuration from `config=` or, if that is not given,
  a sibling `<file stem>.json` or `config.json`. `config=` may be a dict, one JSON path, or several JSON
  paths merged in order: the official configs are split in two, e.g.
  `config=("cn_clip/clip/model_configs/ViT-B-16.json", ".../RoBERTa-wwm-ext-base-chinese.json")`.

`.pt` files are read with `torch.load(weights_only=True)`: pickles of arbitrary objects are refused.
Every problem with the files raises `CNCLIPLoadError` (a `ValueError`) naming the file.

The vocabulary is `vocab_path=` if given, else `vocab.txt` next to the weights, else the `vocab.txt` of
an installed `cn_clip` package.
"""

from __future__ import annotations

import ast
import json
import math
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers import BertConfig

from .cnclip_tokenizer import DEFAULT_CONTEXT_LENGTH, CNCLIPTokenizer, CNCLIPVocabError, resolve_vocab

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CONFIG_FILENAME = "config.json"
WEIGHTS_FILENAME = "model.safetensors"

ImageInput = Image.Image | str | Path | torch.Tensor
TextInput = str | Sequence[str] | torch.Tensor

_REQUIRED_KWARGS = (
    "embed_dim",
    "image_resolution",
    "vision_layers",
    "vision_width",
    "vocab_size",
    "text_hidden_size",
    "text_num_hidden_layers",
    "text_num_attention_heads",
    "text_intermediate_size",
    "text_max_position_embeddings",
    "text_type_vocab_size",
)


class CNCLIPLoadError(ValueError):
    """A Chinese-CLIP checkpoint, config or vocab is missing, corrupt or inconsistent."""


@dataclass
class CNCLIPConfig:
    """cn_clip constructor kwargs plus the preprocessing constants."""

    clip_kwargs: dict[str, Any]
    context_length: int = DEFAULT_CONTEXT_LENGTH
    input_resolution: int | None = None
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    source: str = field(default="<dict>", compare=False)

    @property
    def is_resnet(self) -> bool:
        return isinstance(self.clip_kwargs["vision_layers"], (list, tuple))

    @property
    def resolution(self) -> int:
        """Image side length fed to the model."""
        return int(self.input_resolution or self.clip_kwargs["image_resolution"])

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> CNCLIPConfig:
        """Parse the fixture layout (`clip_kwargs` + constants) or flat cn_clip kwargs."""
        if not isinstance(data, Mapping):
            raise CNCLIPLoadError(f"{source}: config must be a JSON object, got {type(data).__name__}")
        kwargs = dict(data["clip_kwargs"]) if "clip_kwargs" in data else dict(data)
        missing = [k for k in _REQUIRED_KWARGS if k not in kwargs]
        if missing:
            raise CNCLIPLoadError(f"{source}: config lacks cn_clip kwargs {missing}")
        kwargs["vision_layers"] = _parse_vision_layers(kwargs["vision_layers"], source)
        if not isinstance(kwargs["vision_layers"], list) and not kwargs.get("vision_patch_size"):
            raise CNCLIPLoadError(f"{source}: a ViT config needs vision_patch_size")
        return cls(
            clip_kwargs=kwargs,
            context_length=int(data.get("context_length", DEFAULT_CONTEXT_LENGTH)),
            input_resolution=data.get("input_resolution"),
            image_mean=tuple(data.get("image_mean", OPENAI_CLIP_MEAN)),
            image_std=tuple(data.get("image_std", OPENAI_CLIP_STD)),
            source=source,
        )

    @classmethod
    def from_source(cls, config: Mapping[str, Any] | str | Path | Sequence[str | Path]) -> CNCLIPConfig:
        """A dict, a JSON file, or several JSON files merged in order (official vision + text configs)."""
        if isinstance(config, Mapping):
            return cls.from_dict(config)
        paths = [Path(config)] if isinstance(config, (str, Path)) else [Path(p) for p in config]
        if not paths:
            raise CNCLIPLoadError("config: empty list of JSON files")
        merged: dict[str, Any] = {}
        for p in paths:
            merged.update(_read_json(p))
        return cls.from_dict(merged, source=" + ".join(str(p) for p in paths))


def _parse_vision_layers(value: Any, source: str) -> int | list[int]:
    """ViT depth (int) or ResNet stage depths (list; the official JSONs write it as a string "[3,4,6,3]")."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError) as e:
            raise CNCLIPLoadError(f"{source}: cannot parse vision_layers {value!r}") from e
    if isinstance(value, (list, tuple)):
        if len(value) != 4 or not all(isinstance(v, int) for v in value):
            raise CNCLIPLoadError(f"{source}: ResNet vision_layers must be 4 ints, got {value!r}")
        return list(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise CNCLIPLoadError(f"{source}: vision_layers must be an int (ViT) or 4 ints (ResNet), got {value!r}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError as e:
        raise CNCLIPLoadError(f"config file not found: {path}") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CNCLIPLoadError(f"{path}: not a readable JSON config ({e})") from e
    if not isinstance(data, dict):
        raise CNCLIPLoadError(f"{path}: config must be a JSON object, got {type(data).__name__}")
    return data


# ----------------------------------------------------------------------------------------------- model


def bert_config_from_kwargs(kwargs: Mapping[str, Any], pad_token_id: int = 0) -> BertConfig:
    """The `transformers.BertConfig` equivalent of cn_clip's text-tower kwargs."""
    return BertConfig(
        vocab_size=int(kwargs["vocab_size"]),
        hidden_size=int(kwargs["text_hidden_size"]),
        num_hidden_layers=int(kwargs["text_num_hidden_layers"]),
        num_attention_heads=int(kwargs["text_num_attention_heads"]),
        intermediate_size=int(kwargs["text_intermediate_size"]),
        hidden_act=kwargs.get("text_hidden_act", "gelu"),  # "gelu" is the exact (erf) GELU in both
        hidden_dropout_prob=float(kwargs.get("text_hidden_dropout_prob", 0.1)),
        attention_probs_dropout_prob=float(kwargs.get("text_attention_probs_dropout_prob", 0.1)),
        max_position_embeddings=int(kwargs["text_max_position_embeddings"]),
        type_vocab_size=int(kwargs["text_type_vocab_size"]),
        initializer_range=float(kwargs.get("text_initializer_range", 0.02)),
        layer_norm_eps=1e-12,
        pad_token_id=pad_token_id,
    )


def build_open_clip_model(config: CNCLIPConfig, pad_token_id: int = 0) -> open_clip.CustomTextCLIP:
    """An (untrained) `open_clip.CustomTextCLIP` with Chinese-CLIP's architecture.

    The HF BERT text tower is built from a local `BertConfig` (written to a temporary folder that
    open_clip's `HFTextEncoder` reads with `pretrained=False`), so nothing is fetched from a hub and no
    BERT pooler is created. Its attention mask is `ids != pad_token_id`.
    """
    kw = config.clip_kwargs
    vision_cfg = open_clip.CLIPVisionCfg(
        layers=kw["vision_layers"],
        width=int(kw["vision_width"]),
        head_width=int(kw.get("vision_head_width", 64)),  # cn_clip's default
        patch_size=int(kw.get("vision_patch_size") or 16),  # unused by the ResNet
        image_size=int(kw["image_resolution"]),
        mlp_ratio=4.0,
    )
    bert_cfg = bert_config_from_kwargs(kw, pad_token_id)
    with tempfile.TemporaryDirectory(prefix="cnclip_bert_") as tmp:
        bert_cfg.save_pretrained(tmp)
        text_cfg = open_clip.CLIPTextCfg(
            context_length=config.context_length,
            vocab_size=int(kw["vocab_size"]),
            hf_model_name=tmp,
            hf_model_pretrained=False,
            hf_proj_type="linear",
            hf_pooler_type="cls_last_hidden_state_pooler",
        )
        model = open_clip.CustomTextCLIP(
            embed_dim=int(kw["embed_dim"]), vision_cfg=vision_cfg, text_cfg=text_cfg, quick_gelu=True
        )
    model.text.config._name_or_path = ""  # not the (deleted) temporary folder
    if model.text.config.pad_token_id != pad_token_id:  # the HF tower masks `ids != config.pad_token_id`
        raise CNCLIPLoadError(
            f"BERT pad_token_id is {model.text.config.pad_token_id}, expected {pad_token_id}"
        )
    return model


def convert_state_dict(
    state_dict: Mapping[str, Any], source: str = "<state_dict>"
) -> dict[str, torch.Tensor]:
    """Official Chinese-CLIP keys -> `CustomTextCLIP` keys.

    Strips a DDP `module.` prefix, drops `bert.pooler.*`, maps `bert.X` -> `text.transformer.X` and
    `text_projection` (hidden x embed, used as `x @ P`) -> `text.proj.weight` (transposed); `visual.*` and
    `logit_scale` are unchanged.
    """
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CNCLIPLoadError(
                f"{source}: state_dict entry {key!r} is not a tensor ({type(value).__name__})"
            )
        k = key[len("module.") :] if key.startswith("module.") else key
        if k.startswith("bert.pooler.") or k in (
            "bert.embeddings.position_ids",
            "bert.embeddings.token_type_ids",
        ):
            continue
        if k.startswith("bert."):
            out["text.transformer." + k[len("bert.") :]] = value
        elif k == "text_projection":
            if value.ndim != 2:
                raise CNCLIPLoadError(
                    f"{source}: text_projection must be 2-d, got shape {tuple(value.shape)}"
                )
            out["text.proj.weight"] = value.t().contiguous()
        elif k.startswith("visual.") or k == "logit_scale":
            out[k] = value
        else:
            unknown.append(key)
    if unknown:
        raise CNCLIPLoadError(f"{source}: unexpected keys for a Chinese-CLIP checkpoint: {unknown[:10]}")
    return out


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Official-key state_dict from `.safetensors` or a `.pt` (`{"state_dict": ...}` or a bare dict).

    `.pt` files are loaded with `torch.load(weights_only=True)`, which refuses arbitrary pickled objects.
    """
    path = Path(path)
    if not path.is_file():
        raise CNCLIPLoadError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # SafetensorError, OSError, ... : all mean an unusable file
            raise CNCLIPLoadError(f"{path}: not a valid safetensors file ({e})") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError (unsafe object), RuntimeError/EOFError (corrupt archive), ...
        raise CNCLIPLoadError(
            f"{path}: cannot be loaded as a weights-only torch checkpoint "
            f"(corrupt, or it pickles arbitrary objects, which are refused): {e}"
        ) from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CNCLIPLoadError(f"{path}: expected {{'state_dict': {{name: tensor}}}} or {{name: tensor}}")
    return dict(obj)


def _resolve_files(path: Path, config: Any) -> tuple[Path, CNCLIPConfig]:
    """(weights file, parsed config) for a model folder or a weights file."""
    if path.is_dir():
        weights = path / WEIGHTS_FILENAME
        if not weights.is_file():
            raise CNCLIPLoadError(f"{path}: model folder has no {WEIGHTS_FILENAME}")
        config_source = config if config is not None else path / CONFIG_FILENAME
        return weights, CNCLIPConfig.from_source(config_source)
    if not path.is_file():
        raise CNCLIPLoadError(f"checkpoint not found: {path}")
    if config is None:
        candidates = [path.with_suffix(".json"), path.parent / CONFIG_FILENAME]
        config = next((c for c in candidates if c.is_file()), None)
        if config is None:
            raise CNCLIPLoadError(
                f"{path}: no config given and none of {[str(c) for c in candidates]} exists; pass config= "
                "(a dict, a JSON file, or the official vision + text model_configs JSONs)"
            )
    return path, CNCLIPConfig.from_source(config)


# --------------------------------------------------------------------------------------------- wrapper


def _batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


class CNCLIPModel(nn.Module):
    """An open_clip Chinese-CLIP model with its tokenizer and image preprocessing.

    `model` is the plain `open_clip.CustomTextCLIP` (train or export it directly); the methods below are
    batched, gradient-free inference helpers that accept raw inputs.
    """

    def __init__(
        self, model: open_clip.CustomTextCLIP, tokenizer: CNCLIPTokenizer, config: CNCLIPConfig
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.preprocess = open_clip.image_transform(
            config.resolution,
            is_train=False,
            mean=config.image_mean,
            std=config.image_std,
            resize_mode="squash",
            interpolation="bicubic",
        )

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    @property
    def context_length(self) -> int:
        return self.tokenizer.context_length

    @property
    def logit_scale(self) -> torch.Tensor:
        """exp(stored logit_scale): the multiplier of the cosine similarities."""
        return self.model.logit_scale.detach().exp()

    def tokenize(
        self, texts: str | Sequence[str], normalize_text: bool = False, context_length: int | None = None
    ) -> torch.Tensor:
        """Token ids (N, context_length), exactly `cn_clip.clip.tokenize` (after the dataset clean-up if
        `normalize_text`)."""
        return self.tokenizer(texts, context_length=context_length, normalize=normalize_text)

    def preprocess_image(self, image: Image.Image | str | Path) -> torch.Tensor:
        """(3, R, R) float tensor: bicubic squash-resize, then RGB, then CLIP mean/std."""
        if isinstance(image, (str, Path)):
            with Image.open(image) as im:
                return self.preprocess(im)
        return self.preprocess(image)

    def preprocess_images(self, images: ImageInput | Iterable[ImageInput]) -> torch.Tensor:
        """(N, 3, R, R) pixel tensor; tensors are taken as already preprocessed."""
        if isinstance(images, torch.Tensor):
            return images.unsqueeze(0) if images.ndim == 3 else images
        if isinstance(images, (Image.Image, str, Path)):
            images = [images]
        return torch.stack(
            [img if isinstance(img, torch.Tensor) else self.preprocess_image(img) for img in images]
        )

    @torch.no_grad()
    def encode_images(self, images: ImageInput | Sequence[ImageInput], batch_size: int = 64) -> torch.Tensor:
        """Unnormalised image features (N, D)."""
        if isinstance(images, (torch.Tensor, Image.Image, str, Path)):
            pixels = self.preprocess_images(images)
            chunks = [pixels[s] for s in _batches(len(pixels), batch_size)]
        else:
            images = list(images)
            chunks = (self.preprocess_images(images[s]) for s in _batches(len(images), batch_size))
        dtype = self.model.logit_scale.dtype
        outs = [self.model.encode_image(c.to(self.device, dtype)).float() for c in chunks]
        return torch.cat(outs) if outs else torch.empty(0, self.embed_dim, device=self.device)

    @torch.no_grad()
    def encode_texts(
        self,
        texts: TextInput,
        normalize_text: bool = False,
        batch_size: int = 256,
        context_length: int | None = None,
    ) -> torch.Tensor:
        """Unnormalised text features (N, D); `texts` may also be token ids (N, L)."""
        ids = (
            texts if isinstance(texts, torch.Tensor) else self.tokenize(texts, normalize_text, context_length)
        )
        if ids.ndim == 1:
            ids = ids.unsqueeze(0)
        outs = [
            self.model.encode_text(ids[s].to(self.device)).float() for s in _batches(len(ids), batch_size)
        ]
        return torch.cat(outs) if outs else torch.empty(0, self.embed_dim, device=self.device)

    def embed_images(self, images: ImageInput | Sequence[ImageInput], batch_size: int = 64) -> torch.Tensor:
        """L2-normalised image embeddings (N, D)."""
        return F.normalize(self.encode_images(images, batch_size), dim=-1)

    def embed_texts(
        self,
        texts: TextInput,
        normalize_text: bool = False,
        batch_size: int = 256,
        context_length: int | None = None,
    ) -> torch.Tensor:
        """L2-normalised text embeddings (N, D). `normalize_text=True` applies the dataset clean-up."""
        return F.normalize(self.encode_texts(texts, normalize_text, batch_size, context_length), dim=-1)

    def logits(
        self, images: ImageInput | Sequence[ImageInput], texts: TextInput, normalize_text: bool = False
    ) -> torch.Tensor:
        """logits_per_image (N_images, N_texts) = exp(logit_scale) * img @ txt.T (transpose: per text)."""
        img = self.embed_images(images)
        txt = self.embed_texts(texts, normalize_text)
        return self.logit_scale.float() * img @ txt.T

    @property
    def embed_dim(self) -> int:
        return int(self.config.clip_kwargs["embed_dim"])

    def forward(self, images: ImageInput | Sequence[ImageInput], texts: TextInput) -> torch.Tensor:
        return self.logits(images, texts)


def load_cnclip(
    path: str | Path,
    device: str | torch.device | None = None,
    *,
    config: Mapping[str, Any] | str | Path | Sequence[str | Path] | None = None,
    vocab_path: str | Path | None = None,
    context_length: int | None = None,
) -> CNCLIPModel:
    """Load a Chinese-CLIP checkpoint into open_clip (see the module docstring for the layouts).

    Args:
        path: model folder (`config.json` + `model.safetensors`) or a `.pt` / `.safetensors` file.
        device: where to put the model (default: CPU). Weights are kept in float32.
        config: overrides the config file (dict, JSON path, or several JSON paths merged in order).
        vocab_path: the BERT-Chinese `vocab.txt`; default `vocab.txt` beside the weights, else cn_clip's.
        context_length: tokenizer row length (default: the config's, else 52).
    """
    path = Path(path)
    weights, cfg = _resolve_files(path, config)
    if context_length is not None:
        cfg.context_length = int(context_length)
    max_pos = int(cfg.clip_kwargs["text_max_position_embeddings"])
    if not 2 <= cfg.context_length <= max_pos:
        raise CNCLIPLoadError(f"context_length {cfg.context_length} must be in [2, {max_pos}]")
    try:
        tokenizer = CNCLIPTokenizer(resolve_vocab(vocab_path, [weights.parent]), cfg.context_length)
    except CNCLIPVocabError as e:
        raise CNCLIPLoadError(str(e)) from e
    if len(tokenizer) != int(cfg.clip_kwargs["vocab_size"]):
        raise CNCLIPLoadError(
            f"{tokenizer.vocab_path}: {len(tokenizer)} entries but the model's vocab_size "
            f"is {cfg.clip_kwargs['vocab_size']}"
        )

    model = build_open_clip_model(cfg, pad_token_id=tokenizer.pad_id)
    state = convert_state_dict(read_state_dict(weights), source=str(weights))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CNCLIPLoadError(f"{weights}: weights do not match the config ({cfg.source}): {e}") from e
    if not math.isfinite(float(model.logit_scale.detach())):
        raise CNCLIPLoadError(f"{weights}: logit_scale is not finite")
    wrapper = CNCLIPModel(model, tokenizer, cfg).eval()
    return wrapper.to(device) if device is not None else wrapper
