"""Screenshots of the real demo for docs/demo.md: serves it, drives it in headless Chromium, writes docs/img/demo_*.png.

    python tools/demo_screenshots.py [--model default] [--out docs/img] [--tokens 2000]

Each PNG is reduced to a 256-colour palette so it stays small (< 200 KB).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "demo")]
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

FLAGS = ["--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
WAIT = 600_000


def shrink(path: Path) -> None:
    from PIL import Image

    img = Image.open(path).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    img.save(path, optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", default=str(ROOT / "docs" / "img"))
    ap.add_argument("--tokens", type=int, default=2000)
    args = ap.parse_args()

    from playwright.sync_api import expect, sync_playwright

    from comet_demo.app import launch
    from comet_demo.backend import DemoBackend

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp()
    backend = DemoBackend(args.model, store=f"sqlite:///{tmp}/demo.db", secret="screenshots-key1", background=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = launch(backend, port=port, block=False, quiet=True)
    shots = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(demo.local_url)
            expect(page.locator('#panel [data-stat="tokens"]')).to_be_attached(timeout=WAIT)

            def shot(name: str) -> None:
                page.evaluate("window.scrollTo(0, 0)")
                path = out / f"demo_{name}.png"
                page.screenshot(path=path)
                shrink(path)
                shots.append(path)

            page.get_by_role("tab", name="Stream").click()
            page.locator("#stream-length input").fill(str(args.tokens))
            page.locator("#stream-generate").click()
            expect(page.locator("#stream-status")).to_contain_text("Generated", timeout=WAIT)
            page.locator("#stream-absorb").click()
            expect(page.locator("#stream-status")).to_contain_text("tokens/s", timeout=WAIT)
            page.locator("#ask").click()
            expect(page.locator("#stream-status")).to_contain_text("Answered", timeout=WAIT)
            shot("stream")

            page.get_by_role("tab", name="Chat").click()
            page.locator("#chat-input textarea").fill("I am vegetarian and I live in Lyon.")
            page.locator("#chat-send").click()
            expect(page.locator("#chat-status")).to_contain_text("Turn absorbed", timeout=WAIT)
            shot("chat")

            page.get_by_role("tab", name="Pass key").click()
            page.locator("#passkey-run").click()
            expect(page.locator("#passkey-result")).to_contain_text("hidden at", timeout=WAIT)
            shot("passkey")

            page.get_by_role("tab", name="Sessions").click()
            expect(page.locator("#timeline")).to_contain_text("manual", timeout=WAIT)
            shot("sessions")
            browser.close()
    finally:
        demo.close()
        backend.close()
    for path in shots:
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {path.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
