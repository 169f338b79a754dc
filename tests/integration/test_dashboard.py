"""Issue 14: the web dashboard in headless Chromium against a 1-host lab with real QEMU.

Log in with a project's token, create a server from the form, see it ACTIVE (live, from the
event stream), open its VNC console (noVNC through the API's one-time ticket) and see the
guest's login prompt: the guest's VGA text memory (QMP) says `login:`, and the noVNC canvas
is the same picture as QEMU's own screendump of that screen. Keys typed into the page reach
the guest's getty. Screenshots are kept in test-artifacts/dashboard/.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nubes.client import NubesClient
from nubes.imagebuild import tiny
from nubes.schemas import resources as s
from tests.integration.conftest import LabCloud

pytestmark = pytest.mark.integration
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("chromium and chromium-driver (Debian) are needed")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1600",
                "--ignore-certificate-errors", f"--user-data-dir={tmp_path / 'chromium'}",
                "--disable-dev-shm-usage"):  # fmt: skip
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()  # chromedriver ends its browser and itself


def until(what: str, check: Callable[[], Any], timeout: float = 300, every: float = 1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def qmp(sock: Path, command: str, arguments: dict[str, Any] | None = None) -> Any:
    """One QMP command on the instance's monitor socket (reached through /proc/self/fd, since
    the path through the host's /proc/<pid>/root is longer than a UNIX socket path may be)."""
    fd = os.open(sock.parent, os.O_PATH)
    try:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(60)
            conn.connect(f"/proc/self/fd/{fd}/{sock.name}")
            stream = conn.makefile("rwb")
            stream.readline()  # the greeting
            for cmd, args in (("qmp_capabilities", None), (command, arguments)):
                msg: dict[str, Any] = {"execute": cmd}
                if args:
                    msg["arguments"] = args
                stream.write(json.dumps(msg).encode() + b"\n")
                stream.flush()
                while True:
                    answer = json.loads(stream.readline())
                    if "return" in answer or "error" in answer:
                        break
                assert "error" not in answer, answer
            return answer["return"]
    finally:
        os.close(fd)


def vga_text(sock: Path) -> str:
    """The characters of the guest's VGA text memory (vgacon: every other byte from 0xb8000)."""
    dump = qmp(sock, "human-monitor-command", {"command-line": "xp /8000bx 0xb8000"})
    data = bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})\b", dump))
    chars = data[0::2]
    return "\n".join(chars[i : i + 80].decode("latin-1").rstrip() for i in range(0, len(chars), 80))


def screendump(cloud: LabCloud, sock: Path) -> tuple[int, int, bytes]:
    """QEMU's own picture of the screen (PPM), as RGB bytes."""
    name = f"/tmp/screen-{time.monotonic_ns()}.ppm"  # the host's /tmp: QEMU writes it there
    qmp(sock, "screendump", {"filename": name})
    path = cloud.host_path(name)
    raw = path.read_bytes()
    path.unlink()
    match = re.match(rb"P6\s+(\d+)\s+(\d+)\s+255\s", raw)
    assert match, raw[:20]
    width, height = int(match.group(1)), int(match.group(2))
    return width, height, raw[match.end() :]


CANVAS_RGB = """
const c = document.querySelector('#screen canvas');
if (!c || !c.width) return null;
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let out = '';
for (let i = 0; i < d.length; i += 4) out += String.fromCharCode(d[i], d[i + 1], d[i + 2]);
return [c.width, c.height, btoa(out)];
"""


def same_picture(a: tuple[int, int, bytes], b: tuple[int, int, bytes]) -> float:
    """The share of pixels alike (within a little, for colour rounding): 1.0 is the same."""
    if a[:2] != b[:2]:
        return 0.0
    pa, pb = a[2], b[2]
    pixels = a[0] * a[1]
    alike = sum(
        1 for i in range(0, pixels * 3, 3) if all(abs(pa[i + k] - pb[i + k]) <= 8 for k in range(3))
    )
    return alike / pixels


def lit(picture: tuple[int, int, bytes]) -> float:
    """The share of pixels not black: a blank screen would be 'the same' too easily."""
    data = picture[2]
    return sum(1 for i in range(0, len(data), 3) if max(data[i : i + 3]) > 40) / (len(data) / 3)


def shot(driver: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def test_dashboard_creates_a_server_and_shows_its_console(
    lab1: LabCloud, browser: Any, tmp_path: Path
) -> None:
    cloud, driver = lab1, browser
    cloud.nubes("image", "build", "tiny")
    token = cloud.client.create_project(s.ProjectCreate(name="blue")).token
    member = NubesClient(cloud.client.url, token)
    member.create_network(s.NetworkCreate(name="net1", cidr="10.20.0.0/24"))
    port = cloud.env["NUBES_API_PORT"]
    driver.get(f"https://127.0.0.1:{port}/ui/")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "login-button").click()
    until("the dashboard", lambda: driver.find_element(By.ID, "dashboard").is_displayed(), 60)
    until("the image in the form", lambda: driver.find_elements(
        By.CSS_SELECTOR, "#create-image option[value=tiny]"), 60)  # fmt: skip
    shot(driver, "1-logged-in")

    driver.find_element(By.ID, "create-name").send_keys("web1")
    Select(driver.find_element(By.ID, "create-flavor")).select_by_value("m1.tiny")
    Select(driver.find_element(By.ID, "create-network")).select_by_value("net1")
    driver.find_element(By.ID, "create-button").click()
    row = 'tr[data-name="web1"]'
    # the page is not reloaded: the row turns ACTIVE from the event stream
    until("web1 ACTIVE in the page", lambda: driver.find_elements(
        By.CSS_SELECTOR, f'{row}[data-status="ACTIVE"]'), 600)  # fmt: skip
    assert not driver.find_element(By.ID, "error").text
    shot(driver, "2-active")

    server = member.server("web1")
    sock = cloud.host_path(f"/run/nubes/{server.id}/qmp.sock")
    # the guest's VGA screen shows its getty's prompt (the tiny image's tty1)
    text = until("login: on the guest's VGA screen", lambda: (
        t if "login:" in (t := vga_text(sock)) else None), 600, 3)  # fmt: skip
    (tmp_path / "vga.txt").write_text(text)

    driver.find_element(By.CSS_SELECTOR, f"{row} .act-console").click()
    until("noVNC connected", lambda: driver.find_element(
        By.ID, "console-status").text == "Connected", 120)  # fmt: skip

    def canvas_is_the_screen() -> bool:
        got = driver.execute_script(CANVAS_RGB)
        if not got:
            return False
        canvas = (got[0], got[1], base64.b64decode(got[2]))
        screen = screendump(cloud, sock)
        alike = same_picture(canvas, screen)
        print(f"canvas {got[0]}x{got[1]}, screen {screen[0]}x{screen[1]}: {alike:.4f} alike")
        return alike >= 0.99 and lit(screen) > 0.002

    until("the noVNC canvas to show the guest's screen", canvas_is_the_screen, 180, 2)
    shot(driver, "3-console")

    # keys typed in the page reach the guest: the getty takes a user name and asks a password
    canvas = driver.find_element(By.CSS_SELECTOR, "#screen canvas")
    ActionChains(driver).click(canvas).send_keys("root\n").perform()
    until("the guest to ask for a password", lambda: "Password:" in vga_text(sock), 120, 2)
    until("the canvas to follow", canvas_is_the_screen, 120, 2)
    shot(driver, "4-typed")

    driver.find_element(By.ID, "console-close").click()
    driver.find_element(By.CSS_SELECTOR, f"{row} .act-log").click()
    until("the console log in the page", lambda: tiny.READY_LINE in driver.find_element(
        By.ID, "log").text, 60)  # fmt: skip

    # stop, start and delete from the page
    driver.find_element(By.CSS_SELECTOR, f"{row} .act-stop").click()
    until("web1 SHUTOFF", lambda: driver.find_elements(
        By.CSS_SELECTOR, f'{row}[data-status="SHUTOFF"]'), 300)  # fmt: skip
    driver.find_element(By.CSS_SELECTOR, f"{row} .act-start").click()
    until("web1 ACTIVE again", lambda: driver.find_elements(
        By.CSS_SELECTOR, f'{row}[data-status="ACTIVE"]'), 300)  # fmt: skip
    driver.find_element(By.CSS_SELECTOR, f"{row} .act-delete").click()
    until("web1 gone from the page", lambda: not driver.find_elements(
        By.CSS_SELECTOR, row), 300)  # fmt: skip
    shot(driver, "5-deleted")
    member.close()

    # the admin's token shows the hosts too
    driver.find_element(By.ID, "logout").click()
    admin = json.loads((cloud.state_dir / "client.json").read_text())["token"]
    until("the login form", lambda: driver.find_element(By.ID, "token").is_displayed(), 60)
    driver.find_element(By.ID, "token").send_keys(admin)
    driver.find_element(By.ID, "login-button").click()
    until("the host in the admin's page", lambda: driver.find_elements(
        By.CSS_SELECTOR, f'#hosts tr[data-name="{cloud.host_ns(1)}"]'), 60)  # fmt: skip
    shot(driver, "6-admin")
