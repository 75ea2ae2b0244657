"""The lab page in a real browser: headless Debian Chromium (Playwright, sync API) against `gaze serve` running
as a real uvicorn server on a free loopback port. Screenshots go to tests/artifacts/ (git-ignored)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("GAZE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.timeout(300)]  # generous: CI machines may be busy

if not CHROMIUM.is_file():
    pytest.skip(
        f"no Chromium at {CHROMIUM}: `make setup` installs Debian's chromium (apt-get install chromium)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
httpx = pytest.importorskip("httpx")


def bundled_detector_available() -> bool:
    from machinegaze import GazeError, zoo

    try:
        zoo.resolve_detector("default")
        return True
    except GazeError:
        return False


# ---------------------------------------------------------------- servers and browser
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m machinegaze.cli serve ...` on 127.0.0.1:<free port>, stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, args: list[str], data_dir: Path, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        # One torch thread: with two, every op waits for both threads, which is very slow on a busy machine.
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "machinegaze.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--data-dir",
                str(data_dir),
                "--threads",
                "1",
                *args,
            ],
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gaze serve exited with {self.proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/api/status", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"gaze serve did not answer within 60 s: {log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.fixture(scope="module")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / ".gitignore").write_text("*\n")
    return ARTIFACTS


@pytest.fixture(scope="module")
def face(shared) -> Path:
    faces = sorted((shared / "data" / "faces" / "real").rglob("*.jpg"))
    if not faces:
        pytest.skip("no face photos in shared/data/faces/real")
    return faces[0]


@pytest.fixture(scope="module")
def server(network, tiny_detector, tmp_path_factory, artifacts):
    """The lab with the golden 32 px network and a tiny (untrained) detector."""
    d = tmp_path_factory.mktemp("lab")
    s = Server(["--network", str(network), "--detector", str(tiny_detector)], d / "data", artifacts / "server.log")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(60_000)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.errors = errors
    yield pg
    ctx.close()


def open_tab(page, url: str, tab: str) -> None:
    page.goto(f"{url}/#{tab}")
    page.wait_for_selector("body[data-ready=true]")
    if not page.is_visible(f"#tab-{tab}.active"):
        page.click(f"#tab-btn-{tab}")
    page.wait_for_selector(f"#tab-{tab}.active")


def shown_pixels(page, selector: str) -> bytes:
    """The RGBA pixels an <img> shows, read back through a canvas (what a person sees)."""
    data = page.evaluate(
        """(sel) => {
        const img = document.querySelector(sel);
        const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        const ctx = c.getContext('2d');
        ctx.drawImage(img, 0, 0);
        return Array.from(ctx.getImageData(0, 0, c.width, c.height).data);
    }""",
        selector,
    )
    return bytes(data)


# ---------------------------------------------------------------- tests
def test_page_loads(page, server, artifacts):
    open_tab(page, server.url, "detect")
    assert "machinegaze" in page.inner_text("#server-info")
    for tab in ("detect", "mix", "project", "dream", "uncanny", "gallery"):
        assert page.is_visible(f"#tab-btn-{tab}")
    page.screenshot(path=str(artifacts / "page.png"), full_page=True)
    assert not page.errors, page.errors


def test_api_docs_render_offline(page, server, artifacts):
    page.goto(f"{server.url}/docs")
    page.wait_for_selector('[data-path="/api/detect"]')  # Swagger UI rendered the operations: no CDN needed
    page.screenshot(path=str(artifacts / "docs.png"))


def test_detect_upload_gives_verdict(page, server, face, artifacts):
    open_tab(page, server.url, "detect")
    assert page.is_hidden("#detect-unavailable")
    page.set_input_files("#detect-file", str(face))
    page.click("#detect-run")
    page.wait_for_selector("#detect-result:not([hidden])")
    verdict = page.inner_text("#detect-verdict")
    prob = float(page.inner_text("#detect-prob"))
    assert verdict in ("real", "fake") and 0.0 <= prob <= 1.0
    page.wait_for_function("() => document.getElementById('detect-overlay').naturalWidth > 0")
    page.screenshot(path=str(artifacts / "detect.png"), full_page=True)
    assert not page.errors, page.errors


def test_detect_draws_a_box_per_face(page, server, shared, tmp_path, artifacts):
    """A canvas with two real faces (pasted from ../shared here) gets two boxes with verdicts; a coffee cup none."""
    import skimage.data
    from PIL import Image

    faces = sorted((shared / "data" / "faces" / "real" / "ffhq256").glob("*.jpg"))[2:4]
    canvas = Image.new("RGB", (560, 300), (60, 60, 60))
    for k, f in enumerate(faces):
        canvas.paste(Image.open(f).convert("RGB"), (16 + 288 * k, 22))
    canvas.save(tmp_path / "two.png")
    Image.fromarray(skimage.data.coffee()).save(tmp_path / "coffee.jpg")
    open_tab(page, server.url, "detect")
    page.set_input_files("#detect-file", str(tmp_path / "two.png"))
    page.click("#detect-run")
    page.wait_for_selector("#detect-photo-box .facebox >> nth=1")
    page.wait_for_function("() => document.getElementById('detect-photo').naturalWidth === 560")
    boxes = page.locator("#detect-photo-box .facebox")
    assert boxes.count() == 2
    labels = [boxes.nth(k).inner_text() for k in range(2)]
    assert all(t.split(" ")[1] in ("real", "fake") for t in labels), labels
    assert page.inner_text("#detect-summary").startswith("2 faces")
    photo = page.locator("#detect-photo").bounding_box()
    left, right = (boxes.nth(k).bounding_box() for k in range(2))
    mid = photo["x"] + photo["width"] / 2  # drawn over the photo: one box in each half
    assert photo["x"] <= left["x"] < left["x"] + left["width"] <= mid <= right["x"] <= photo["x"] + photo["width"]
    page.screenshot(path=str(artifacts / "detect-two-faces.png"), full_page=True)
    page.set_input_files("#detect-file", str(tmp_path / "coffee.jpg"))
    page.click("#detect-run")
    page.wait_for_selector("#detect-noface:not([hidden])")
    assert page.inner_text("#detect-verdict") == "no face" and boxes.count() == 0
    assert page.is_hidden("#detect-overlay-fig")
    page.screenshot(path=str(artifacts / "detect-no-face.png"), full_page=True)
    assert not page.errors, page.errors


def test_detect_tab_unavailable_without_a_detector(browser, network, tmp_path, artifacts):
    # `--detector none` is what a build without the bundled detector looks like to the page
    s = Server(
        ["--network", str(network), "--detector", "none"], tmp_path / "data", artifacts / "server-nodetector.log"
    )
    try:
        ctx = browser.new_context()
        pg = ctx.new_page()
        open_tab(pg, s.url, "detect")
        note = pg.locator("#detect-unavailable")
        note.wait_for(state="visible")
        assert "Unavailable" in note.inner_text() and "detector" in note.inner_text()
        assert pg.is_disabled("#detect-run")
        assert "off" in (pg.get_attribute("#tab-btn-detect", "class") or "")
        pg.screenshot(path=str(artifacts / "detect-unavailable.png"), full_page=True)
        ctx.close()
    finally:
        s.stop()


@pytest.mark.skipif(
    not bundled_detector_available(),
    reason="waits for the bundled detector (zoo 'default'): runs by itself once it is in the build",
)
def test_detect_verdict_with_bundled_detector(browser, network, shared, tmp_path, artifacts):
    """The real bundled detector through the page: a held-out real photo is called real, a face made by the
    bundled generator is called fake (both verdicts are measured facts of the detector, see docs/detect.md)."""
    from machinegaze import checkpoints, zoo
    from machinegaze.data import save_image
    from machinegaze.detect.sources import parse_source, select
    from machinegaze.generate import GenerateConfig, generate_images

    real = Path(select(parse_source("utkface", shared / "data" / "faces").items(), "test", 1)[0].path)
    G = checkpoints.load_networks(zoo.resolve_network("faces64")).generator
    fake = tmp_path / "faces64_seed5000.png"
    save_image(generate_images(G, [5000], GenerateConfig(trunc=1.0))[0], fake)
    s = Server(["--network", str(network)], tmp_path / "data", artifacts / "server-bundled.log")
    try:
        ctx = browser.new_context()
        pg = ctx.new_page()
        open_tab(pg, s.url, "detect")
        for path, want in ((real, "real"), (fake, "fake")):
            pg.evaluate("() => { document.getElementById('detect-verdict').textContent = ''; }")
            pg.set_input_files("#detect-file", str(path))
            pg.click("#detect-run")
            pg.wait_for_function(
                "() => document.getElementById('detect-verdict').textContent.length > 0", timeout=60_000
            )
            assert pg.inner_text("#detect-verdict") == want, (path, pg.inner_text("#detect-result"))
            pg.screenshot(path=str(artifacts / f"detect-bundled-{want}.png"), full_page=True)
        ctx.close()
    finally:
        s.stop()


def test_mix_slider_changes_image(page, server, artifacts):
    open_tab(page, server.url, "mix")
    page.wait_for_function("() => document.getElementById('mix-image').dataset.item")
    first_item = page.get_attribute("#mix-image", "data-item")
    before = shown_pixels(page, "#mix-image")
    page.focus("#mix-coarse")
    page.keyboard.press("End")  # move the coarse slider all the way to B, as a person would
    assert page.input_value("#mix-coarse") == "1"
    page.wait_for_function("i => document.getElementById('mix-image').dataset.item !== i", arg=first_item)
    page.wait_for_function("() => document.getElementById('mix-image').naturalWidth > 0")
    after = shown_pixels(page, "#mix-image")
    assert len(before) == len(after) == 32 * 32 * 4 and before != after
    assert page.evaluate("() => document.getElementById('mix-image').src.startsWith('blob:')")
    assert page.inner_text("#mix-coarse-out") == "1"
    page.screenshot(path=str(artifacts / "mix.png"), full_page=True)
    assert not page.errors, page.errors


def test_projection_progress_then_result(page, server, face, artifacts):
    open_tab(page, server.url, "project")
    page.fill("#project-steps", "8")  # tiny and fast: 8 steps on a 32 px network
    page.set_input_files("#project-file", str(face))
    page.evaluate("""() => {
        window.__statuses = [];
        new MutationObserver(() => window.__statuses.push(document.getElementById('project-status').textContent))
            .observe(document.getElementById('project-status'), {childList: true, characterData: true, subtree: true});
    }""")
    page.click("#project-run")
    page.wait_for_selector("#project-progress:not([hidden])")
    page.wait_for_selector("#project-result-box:not([hidden])", timeout=90_000)
    statuses = page.evaluate("window.__statuses")
    assert any("step" in s and "/8" in s for s in statuses), statuses
    assert page.get_attribute("#project-status", "data-status") == "done"
    page.wait_for_function("() => document.getElementById('project-result').naturalWidth > 0")
    assert "LPIPS" in page.inner_text("#project-lpips")
    page.screenshot(path=str(artifacts / "project.png"), full_page=True)
    # breed it: the projection becomes Mix's parent B
    page.click("#project-breed")
    page.wait_for_selector("#tab-mix.active")
    item = page.get_attribute("#project-result", "data-item")
    assert page.input_value("#mix-item-b") == item
    page.wait_for_function("() => document.getElementById('mix-b-img').naturalWidth > 0")
    assert not page.errors, page.errors


def test_gallery_shows_lineage(page, server, artifacts):
    httpx.post(f"{server.url}/api/mix", json={"a": {"seed": 21}, "b": {"seed": 22}, "fine": 1.0}, timeout=30)
    open_tab(page, server.url, "gallery")
    page.select_option("#gallery-kind", "mix")
    page.wait_for_selector("#gallery-grid figure")
    page.click("#gallery-grid figure >> nth=0")
    page.wait_for_selector("#gallery-detail:not([hidden])")
    parents = page.locator("#gallery-parents .link")
    assert parents.count() == 2
    parents.nth(0).click()  # follow the lineage to parent A
    page.wait_for_function("() => document.getElementById('gallery-detail-title').textContent.startsWith('generate')")
    assert page.locator("#gallery-children .link").count() >= 1
    page.screenshot(path=str(artifacts / "gallery.png"), full_page=True)
    assert not page.errors, page.errors
