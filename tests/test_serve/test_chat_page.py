"""The chat page (GET /) in a real headless browser: the system's chromium driven by Selenium (extra `browser`)
against a real server. The test types a message, sees its reply arrive token by token over several reads of
the stream, sees the stored memory the reply recalled (level and score) and forgets it from the page."""

import shutil

import httpx
import pytest

from tests.test_serve.conftest import Server, write_config

webdriver = pytest.importorskip("selenium.webdriver", reason="the chat page's test needs the 'browser' extra")
from selenium.webdriver.common.by import By  # noqa: E402  (after the extra is known to be there)
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,  # a server and a browser started: tens of seconds on 2 cores
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="no system browser: needs Debian's chromium and chromium-driver (apt-get install them)",
    ),
]
TOKEN = "page-token-0123456789"
LONG_REPLY = {"max_new_tokens": 40, "stop": "\x7f"}  # DEL, a byte the model never writes: 40 tokens every reply
MEMORY = "The ship sails at dawn from Verona."


@pytest.fixture(scope="module")
def page_server(checkpoint, tmp_path_factory):
    running = Server(write_config(tmp_path_factory.mktemp("page"), checkpoint, chat=LONG_REPLY), token=TOKEN).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,800"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_a_reply_streams_into_the_page_beside_its_recalled_memory(page_server, browser):
    with page_server.client() as client:
        client.post("/memory/store", json={"session": "page", "text": MEMORY})
    browser.get(f"{page_server.url}/#token={TOKEN}&session=page")
    browser.find_element(By.ID, "text").send_keys("When does the ship sail?" + Keys.ENTER)
    WebDriverWait(browser, 120).until(lambda driver: driver.find_elements(By.CSS_SELECTOR, ".assistant[data-done]"))
    reply = browser.find_element(By.CSS_SELECTOR, ".assistant")
    log = browser.execute_script("return window.tokenLog")
    assert len(log) == 40 == int(reply.get_attribute("data-tokens"))
    assert len({read for read, _ in log}) > 1  # the tokens came in over several reads of the stream
    with page_server.client() as client:
        turns = client.get("/chat/history/page").json()["turns"]
    assert turns[0]["text"] == "When does the ship sail?"  # the exchange was stored (a blank reply is not)
    assert reply.get_attribute("textContent") == "".join(text for _, text in log)
    rows = browser.find_elements(By.CSS_SELECTOR, "#memories .memory")
    recalled = [row for row in rows if MEMORY in row.text]
    assert recalled and recalled[0].find_element(By.CLASS_NAME, "level").text == "long_term"
    recalled[0].find_element(By.TAG_NAME, "button").click()
    WebDriverWait(browser, 30).until(lambda driver: MEMORY not in driver.find_element(By.ID, "memories").text)
    with page_server.client() as client:
        recall = client.post("/memory/recall", json={"session": "page", "query": MEMORY}).json()["memories"]
    assert MEMORY not in [memory["text"] for memory in recall]


def test_the_page_is_open_without_the_token_and_the_api_is_not(page_server):
    assert httpx.get(page_server.url + "/", timeout=30).status_code == 200
    assert httpx.get(page_server.url + "/memory/stats", timeout=30).status_code == 401
