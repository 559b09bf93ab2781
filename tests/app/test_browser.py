"""The app in a real browser (headless Chromium driven by Selenium), and its defences over HTTP.

The app runs in this process on a free port with ``--preset tiny`` (random-weight models built in code, the
session's copy), so everything is offline. Skipped, saying why, without gradio, selenium, Chromium or
chromedriver (``.ci/run`` installs them: ``apt-get install chromium chromium-driver``, the ``dev`` extra).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio", reason="gradio is not installed (pip install 'storycast[ui]')")
gradio_client = pytest.importorskip("gradio_client", reason="gradio_client (installed with gradio) is missing")
httpx = pytest.importorskip("httpx", reason="httpx (installed with gradio) is missing")

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver")

STORY_YAML = """\
title: Queue test
characters:
  - {id: mara, description: a young woman with red hair, class_word: woman}
frames:
  - "{mara} reading a book"
settings: {width: 64, height: 64, steps: 2}
"""
QUEUE_SIZE = 4
MAX_UPLOAD_MB = 1


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_sdxl):
    """The app, serving; its drawings use the session's tiny models (no second load)."""
    from storycast.app import ui
    from storycast.app.config import AppConfig

    root = tmp_path_factory.mktemp("app")
    previous = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(root / ".gradio")
    config = AppConfig(
        root=root,
        preset="tiny",
        port=_free_port(),
        cache_dir=root / "cache",
        device="cpu",
        queue_size=QUEUE_SIZE,
        max_upload_mb=MAX_UPLOAD_MB,
    )
    app, demo, url = ui.launch(config, block=False)
    app.drawer.keep(tiny_sdxl)
    yield app, url
    demo.close()
    if previous is None:
        os.environ.pop("GRADIO_TEMP_DIR", None)
    else:
        os.environ["GRADIO_TEMP_DIR"] = previous


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("Chromium or chromedriver is not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,2400"):
        options.add_argument(argument)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.downloads = downloads
    yield driver
    driver.quit()


def _type(driver, element_id: str, text: str) -> None:
    from selenium.webdriver.common.by import By

    field = driver.find_element(By.CSS_SELECTOR, f"#{element_id} textarea, #{element_id} input")
    field.clear()
    field.send_keys(text)


def _status(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, "status").text


def _gallery(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [image.get_attribute("src") for image in driver.find_elements(By.CSS_SELECTOR, "#gallery img")]


def _manifest(app, run: str) -> dict:
    return json.loads((app.folders.run_dir(run) / "manifest.json").read_text(encoding="utf-8"))


def test_write_draw_redraw_and_download_a_story_in_the_browser(served, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    app, url = served
    wait = WebDriverWait(browser, 600, poll_frequency=0.2)
    browser.get(url)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#title textarea"))
    _type(browser, "title", "Browser story")
    _type(browser, "char1-id", "mara")
    _type(browser, "char1-class", "woman")
    _type(browser, "char1-description", "a young woman with red hair")
    _type(browser, "frames", "{mara} reading a book\n{mara} walking a dog")
    for field, value in (("width", "64"), ("height", "64"), ("steps", "2")):
        _type(browser, field, value)

    browser.find_element(By.ID, "draw").click()
    wait.until(lambda d: "drew frame(s) 1, 2" in _status(d) and len(_gallery(d)) == 2)
    run = app.folders.run_names()[0]
    assert run in _status(browser)
    first = _manifest(app, run)
    assert first["status"] == "complete" and [r["seed"] for r in first["frames"]] == [0, 1]
    assert first["run_summary"]["generation settings"]["width"] == 64
    frames_before = _gallery(browser)

    _type(browser, "redraw-frame", "2")
    _type(browser, "redraw-seed", "123")
    browser.find_element(By.ID, "redraw").click()
    wait.until(lambda d: "drew frame(s) 2; kept 1" in _status(d))
    second = _manifest(app, run)
    assert second["frames"][0] == first["frames"][0]  # kept as it was
    assert second["frames"][1]["seed"] == 123 and second["frames"][1]["drawn"] >= first["frames"][1]["drawn"]
    frames_after = _gallery(browser)
    assert len(frames_after) == 2 and frames_after[0] == frames_before[0] and frames_after[1] != frames_before[1]

    browser.find_element(By.ID, "export").click()
    wait.until(lambda d: d.find_element(By.ID, "export-file").is_displayed())
    button = browser.find_element(By.ID, "export-file")
    assert "comic.pdf" in button.text
    button.click()
    deadline = time.monotonic() + 600  # a ceiling: the loop ends when the download is there
    while time.monotonic() < deadline:
        # Chromium writes a download to a hidden temporary file (.org.chromium...) or a .crdownload first.
        done = [
            p for p in browser.downloads.iterdir() if not p.name.startswith(".") and not p.name.endswith(".crdownload")
        ]
        if done:
            break
        time.sleep(0.2)
    assert [p.name for p in done] == ["comic.pdf"]
    assert done[0].read_bytes() == (app.folders.run_dir(run) / "exports" / "comic.pdf").read_bytes()
    assert done[0].read_bytes().startswith(b"%PDF")


def test_an_upload_with_a_path_in_its_name_stays_in_the_upload_folders(served, tmp_path):
    from PIL import Image

    app, url = served
    photo = tmp_path / "photo.png"
    Image.new("RGB", (16, 16), "red").save(photo)
    target = tmp_path / "escaped.png"
    evil_name = "../" * 12 + str(target).lstrip("/")
    with photo.open("rb") as handle:
        reply = httpx.post(f"{url}gradio_api/upload", files={"files": (evil_name, handle, "image/png")}, timeout=600)
    assert reply.status_code == 200
    (received,) = reply.json()
    assert not target.exists()
    gradio_folder = Path(os.environ["GRADIO_TEMP_DIR"]).resolve()
    assert Path(received).resolve().is_relative_to(gradio_folder)
    # Kept by the app under a name of its own.
    client = gradio_client.Client(url, verbose=False)
    note = client.predict([gradio_client.handle_file(str(photo))], api_name="/photos_1")
    assert note == "1 photo(s) kept for this character."
    kept = [p.name for p in app.folders.uploads.iterdir() if p.suffix == ".png"]
    assert len(kept) == 1 and len(Path(kept[0]).stem) == 32 and "photo" not in kept[0]


def test_an_oversized_upload_is_refused(served, tmp_path):
    app, url = served
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(MAX_UPLOAD_MB * 2**20 + 1024))
    before = sorted(app.folders.uploads.iterdir())
    with big.open("rb") as handle:
        reply = httpx.post(f"{url}gradio_api/upload", files={"files": ("big.png", handle, "image/png")}, timeout=600)
    assert reply.status_code == 413 and "maximum allowed size" in reply.text
    assert sorted(app.folders.uploads.iterdir()) == before


def test_a_run_outside_the_root_is_refused(served, tmp_path):
    app, url = served
    client = gradio_client.Client(url, verbose=False)
    for name in ("../../etc", "/etc", "..", "a/../../b"):
        with pytest.raises(gradio_client.exceptions.AppError, match="not a run name"):
            client.predict(name, 0, api_name="/open_run")
    outside = tmp_path / "outside-run"
    outside.mkdir()
    (outside / "manifest.json").write_text("{}", encoding="utf-8")
    (app.folders.runs / "linked").symlink_to(outside, target_is_directory=True)
    with pytest.raises(gradio_client.exceptions.AppError, match="outside the app's folder"):
        client.predict("linked", 0, api_name="/open_run")
    # Files are served from the run folders and downloads only: not the system's, not the uploads.
    secret = app.folders.uploads / "secret.png"
    secret.write_bytes(b"private")
    for path in ("/etc/passwd", str(secret), str(app.folders.root / "runs" / ".." / "uploads" / "secret.png")):
        assert httpx.get(f"{url}gradio_api/file={path}", timeout=600).status_code == 403, path


def test_twenty_concurrent_requests_queue_without_a_crash(served):
    """The first drawing is held until every request has been answered or queued, so the queue is full: one
    drawing runs, QUEUE_SIZE wait and get their answers, the rest are told the queue is full."""
    app, url = served
    running, most, calls = 0, 0, 0
    lock, release = threading.Lock(), threading.Event()
    execute = app.drawer._execute

    def counted(*args, **kwargs):
        nonlocal running, most, calls
        with lock:
            running, calls = running + 1, calls + 1
            most, first = max(most, running), calls == 1
        try:
            if first:
                release.wait(timeout=600)
            return execute(*args, **kwargs)
        finally:
            with lock:
                running -= 1

    app.drawer._execute = counted
    try:
        client = gradio_client.Client(url, verbose=False)
        jobs = [client.submit(STORY_YAML, "vanilla", "tiny", "", api_name="/draw") for _ in range(20)]
        deadline = time.monotonic() + 600  # a ceiling: the loop ends when the refusals are in
        while sum(job.done() for job in jobs) < 20 - 1 - QUEUE_SIZE and time.monotonic() < deadline:
            time.sleep(0.1)
        release.set()
        answers, busy = [], []
        for job in jobs:
            try:
                answers.append(job.result(timeout=600))
            except Exception as err:  # the queue's answer when it is full
                busy.append(str(err))
    finally:
        release.set()
        app.drawer._execute = execute
    assert len(answers) == 1 + QUEUE_SIZE and len(busy) == 20 - 1 - QUEUE_SIZE
    assert all("Queue is full" in message for message in busy), busy
    assert most == 1  # one drawing on the device at a time
    for answer in answers:
        assert answer["drawn"] == [0]
        assert _manifest(app, answer["run"])["status"] == "complete"
    assert len({answer["run"] for answer in answers}) == len(answers)  # a run folder each
    # The app still answers after the burst.
    again = client.predict(STORY_YAML, "vanilla", "tiny", "", api_name="/draw")
    assert again["drawn"] == [0]
