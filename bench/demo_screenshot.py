"""Screenshot of the demo's grounding tab with the shipped checkpoint, for the README: docs/demo.png.

    python bench/demo_screenshot.py [--checkpoint checkpoints/ofa-world-tiny] [--out docs/demo.png]

Serves the demo on a free localhost port and drives Debian's chromium through Playwright (as the browser test
does): a held-out world scene, a colour expression, "Find it", then a full-page screenshot.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from ofa import OFA
from ofa.data.world import World, WorldConfig
from ofa.demo import launch

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default="checkpoints/ofa-world-tiny")
    parser.add_argument("--out", type=Path, default=Path("docs/demo.png"))
    parser.add_argument("--scene", type=int, default=5)
    parser.add_argument("--text", default="the cyan object")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = OFA.from_pretrained(args.checkpoint)
    demo, url = launch(model, host="127.0.0.1", port=port, block=False, quiet=True)
    scene = Path(tempfile.mkdtemp()) / "scene.png"
    World(WorldConfig(image_size=96)).scene("heldout", args.scene).image.save(scene)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.get_by_role("tab", name="Grounding").click()
            page.locator("#ground-image input[type=file]").set_input_files(str(scene))
            expect(page.locator("#ground-image img")).to_be_visible()
            page.locator("#ground-text textarea").fill(args.text)
            page.locator("#ground-button").click()
            expect(page.locator("#ground-output img")).to_be_visible(timeout=20_000)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
    finally:
        demo.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
