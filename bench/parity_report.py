"""Largest absolute difference from the official outputs, per tensor and attention kernel (the README table).

python bench/parity_report.py [FIXTURE_DIR]      # default: $OFA_PARITY_FIXTURE or ../shared/fixtures/ofa_reference
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from ofa.models import OFAModel


def main() -> None:
    default = os.environ.get(
        "OFA_PARITY_FIXTURE", Path(__file__).resolve().parents[1].parent / "shared/fixtures/ofa_reference"
    )
    fixture = Path(sys.argv[1] if len(sys.argv) > 1 else default)
    inputs = load_file(str(fixture / "inputs.safetensors"))
    expected = load_file(str(fixture / "expected.safetensors"))
    rows: dict[str, dict[str, float]] = {}
    for impl in ("eager", "sdpa", "flex"):
        model = OFAModel.from_pretrained(fixture, attn_implementation=impl)
        with torch.no_grad():
            enc = model.encode(inputs["input_ids"], inputs["patch_images"], output_hidden_states=True)
            dec = model.decode(inputs["decoder_input_ids"], enc, output_hidden_states=True)
            t2i_enc = model.encode(inputs["t2i_input_ids"])
            t2i = model.decode(inputs["t2i_decoder_input_ids"], t2i_enc, code_masks=inputs["t2i_code_masks"])
            got = {
                "image_features": model.encoder.embed_images(inputs["patch_images"]),
                "encoder_embedding_output": enc.hidden_states[0],
                "encoder_position_embedding": enc.position_embedding,
                "encoder_last_hidden_state": enc.last_hidden_state,
                "decoder_hidden_states": torch.stack(dec.hidden_states),
                "logits": dec.logits,
                "t2i_encoder_last_hidden_state": t2i_enc.last_hidden_state,
                "t2i_logits": t2i.logits,
            }
        for name, value in got.items():
            rows.setdefault(name, {})[impl] = (value - expected[name]).abs().max().item()
    print(f"{'tensor':32s} {'eager':>10s} {'sdpa':>10s} {'flex':>10s}")
    for name, diffs in rows.items():
        print(f"{name:32s} " + " ".join(f"{diffs[i]:10.2e}" for i in ("eager", "sdpa", "flex")))


if __name__ == "__main__":
    main()
