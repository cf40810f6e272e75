"""The web demo's page in a real browser: headless chromium driven by Selenium, against `python -m omni.web`
on tiny untrained checkpoints (the replies are gibberish; these check that the page works)."""
import itertools
import re
import shutil

import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from web.test_server import build_checkpoints, running_server

from omni.audio.features import save_wav

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs chromium and chromedriver on PATH (Debian: apt-get install chromium chromium-driver, "
           "which scripts/setup.sh does)")

WAIT_S = 60  # the first spoken reply includes the Talker's warm-up; a slow CI machine needs the margin


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return build_checkpoints(tmp_path_factory.mktemp("web_browser"))


@pytest.fixture(scope="module")
def url(ckpts, tmp_path_factory):
    with running_server(ckpts, tmp_path_factory.mktemp("server")) as u:
        yield u


@pytest.fixture(scope="module")
def driver():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required",
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console, for page_errors
    d = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    yield d
    d.quit()


def open_page(driver, url):
    """A fresh tab's state (a new server session), connected."""
    driver.get(url)
    WebDriverWait(driver, WAIT_S).until(lambda d: d.find_element(By.ID, "send").is_enabled())
    return driver


def page_errors(driver) -> list[str]:
    """Uncaught exceptions and console errors the page logged since the last call; not the browser's
    note of a refused upload (a 4xx answer), which the page shows in its error box."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"
            and not re.search(r"/upload/\S+ - Failed to load resource: .* status of 4\d\d", e["message"])]


@pytest.fixture
def page(driver, url):
    page_errors(driver)
    yield open_page(driver, url)
    assert page_errors(driver) == []


def send(page, text):
    box = page.find_element(By.ID, "text")
    box.clear()
    if text:
        box.send_keys(text)
    page.find_element(By.ID, "send").click()


def wait_reply(page, n):
    """The n-th finished reply (it has its latency line) -> its element."""
    WebDriverWait(page, WAIT_S).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".turn.assistant .latency")) >= n)
    return page.find_elements(By.CSS_SELECTOR, ".turn.assistant")[n - 1]


def wait_pending(page, name):
    WebDriverWait(page, WAIT_S).until(lambda d: name in d.find_element(By.ID, "pending").text or error_text(d))
    assert not error_text(page), error_text(page)


def error_text(page):
    box = page.find_element(By.ID, "error")
    return box.text if box.is_displayed() else ""


def test_page_loads(page):
    assert page.title == "μOmni"
    assert page.find_element(By.ID, "status").text == "connected"
    assert not error_text(page) and not page.find_element(By.ID, "speech-status").is_displayed()
    assert page.find_element(By.ID, "speech").is_selected()


def test_text_turn_streams(page):
    # count the reply's growth steps as they happen: one step means it appeared all at once
    page.execute_script("""
        window.replySteps = 0;
        new MutationObserver((records) => {
            for (const r of records) if (r.target.classList && r.target.classList.contains('reply')) window.replySteps++;
        }).observe(document.getElementById('history'), {childList: true, subtree: true});""")
    page.find_element(By.ID, "speech").click()  # text only
    send(page, "hello there")
    reply = wait_reply(page, 1)
    assert reply.find_element(By.CSS_SELECTOR, ".reply").text.strip()
    assert page.execute_script("return window.replySteps") > 2
    assert re.search(r"first token \d+ ms · \d+ tokens", reply.find_element(By.CSS_SELECTOR, ".latency").text)
    assert not reply.find_elements(By.TAG_NAME, "audio")
    assert page.find_elements(By.CSS_SELECTOR, ".turn.user .text")[0].text == "hello there"


def test_image_and_audio_turns(page, tmp_path):
    png = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(png)
    page.find_element(By.ID, "image-file").send_keys(str(png))
    wait_pending(page, "noise.png")
    send(page, "What is in the picture?")
    wait_reply(page, 1)
    user = page.find_elements(By.CSS_SELECTOR, ".turn.user")[0]
    assert "noise.png (64x48)" in user.text and user.find_elements(By.TAG_NAME, "img")
    assert page.find_element(By.ID, "pending").text == ""

    t = np.arange(16000) / 16000
    wav = save_wav(tmp_path / "question.wav", (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32))
    page.find_element(By.ID, "audio-file").send_keys(str(wav))
    wait_pending(page, "question.wav")
    send(page, "")  # the clip alone is the message
    wait_reply(page, 2)
    assert "question.wav (1.0 s)" in page.find_elements(By.CSS_SELECTOR, ".turn.user")[1].text
    assert not error_text(page)


def test_reply_audio_plays(page):
    # record what the page hands WebAudio while the reply streams: each chunk's start time and length
    page.execute_script("""
        window.scheduled = [];
        const start = AudioBufferSourceNode.prototype.start;
        AudioBufferSourceNode.prototype.start = function (when) {
            window.scheduled.push([when, this.buffer.duration]);
            return start.apply(this, arguments);
        };""")
    send(page, "hello")
    reply = wait_reply(page, 1)
    audio = reply.find_element(By.TAG_NAME, "audio")
    WebDriverWait(page, WAIT_S).until(lambda d: d.execute_script("return arguments[0].readyState", audio) >= 2)
    duration = page.execute_script("return arguments[0].duration", audio)
    spoken = float(re.search(r"speech ([\d.]+) s", reply.find_element(By.CSS_SELECTOR, ".latency").text).group(1))
    assert duration > 0 and duration == pytest.approx(spoken, abs=0.01)  # the WAV holds every chunk
    scheduled = page.execute_script("return window.scheduled")
    assert sum(d for _, d in scheduled) == pytest.approx(spoken, abs=0.01), "not every chunk was played"
    assert all(b[0] >= a[0] + a[1] - 1e-6 for a, b in itertools.pairwise(scheduled)), "chunks overlap"
    played = page.execute_async_script("""
        const [a, done] = arguments;
        a.play().then(() => done('ok'), (e) => done('play() failed: ' + e.message));""", audio)
    assert played == "ok"
    WebDriverWait(page, 10).until(lambda d: d.execute_script(
        "return arguments[0].currentTime > 0 || !arguments[0].paused", audio))


def test_bad_upload_shows_an_error(page, tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_text("not a picture at all")
    page.find_element(By.ID, "image-file").send_keys(str(fake))
    WebDriverWait(page, WAIT_S).until(lambda d: error_text(d))
    assert "fake.png: not an image" in error_text(page)
    assert page.find_element(By.ID, "pending").text == ""
    send(page, "hello")  # the session goes on
    assert wait_reply(page, 1).find_element(By.CSS_SELECTOR, ".reply").text
    assert not error_text(page)


def test_microphone_records_a_message(page):
    mic = page.find_element(By.ID, "mic")
    mic.click()
    # the fake capture device plays a beep; record about a second of it
    WebDriverWait(page, WAIT_S).until(lambda d: "(1 s)" in mic.text or error_text(d))
    assert not error_text(page), error_text(page)
    mic.click()
    wait_pending(page, "recording.wav")
    send(page, "")
    wait_reply(page, 1)
    assert "recording.wav" in page.find_elements(By.CSS_SELECTOR, ".turn.user")[0].text


def test_reset_clears_the_page(page):
    send(page, "hello")
    wait_reply(page, 1)
    page.find_element(By.ID, "reset").click()
    WebDriverWait(page, WAIT_S).until(lambda d: not d.find_elements(By.CSS_SELECTOR, ".turn"))
    send(page, "hello")
    assert wait_reply(page, 1).find_element(By.CSS_SELECTOR, ".reply").text


def test_speech_unavailable_is_shown(ckpts, driver, tmp_path):
    with running_server(ckpts, tmp_path, "--talker", str(tmp_path / "no_talker")) as u:
        page = open_page(driver, u)
        note = page.find_element(By.ID, "speech-status")
        assert note.is_displayed() and "Speech is unavailable" in note.text and "no_talker" in note.text
        assert not page.find_element(By.ID, "speech").is_enabled()
        send(page, "hello")
        assert wait_reply(page, 1).find_element(By.CSS_SELECTOR, ".reply").text
