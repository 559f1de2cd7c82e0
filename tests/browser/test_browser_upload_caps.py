"""Each uploader's cap is the server's too: a caller that bypasses the browser posts 200 MB straight to Explore's
20 MB uploader of a real session, and the server refuses it (HTTP 413) without keeping the bytes.

Uses test_browser.py's server (a real ``streamlit run app.py``) and Chromium, skipped with the same reasons. The
browser opens the session and uploads a small photo; its request gives the upload URL (session id), the XSRF
header and cookie, which a script would read the same way. Then this test posts on its own, over a raw socket.
"""
from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

from test_browser import browser, page, server, sync_api, wait_until_idle  # noqa: F401 - fixtures

from app_fixture import png_bytes

MB = 1 << 20
UPLOADER = '[data-testid="stFileUploader"] input[type="file"]'


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def steady_rss_mb(pid: int, timeout_s: float = 60) -> float:
    """RSS once it has stayed within 2 MB for 3 s (at most ``timeout_s``)."""
    readings = [rss_mb(pid)]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(1)
        readings.append(rss_mb(pid))
        if len(readings) >= 4 and max(readings[-4:]) - min(readings[-4:]) < 2:
            break
    return readings[-1]


def server_pid(url: str) -> int:
    """The process listening on ``url``'s port (the streamlit server), from /proc/net/tcp and the fds."""
    port = urlparse(url).port
    inodes = {line.split()[9] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
              if line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A"}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            links = [str(fd.readlink()) for fd in (proc / "fd").iterdir()]
        except OSError:
            continue
        if any(link == f"socket:[{inode}]" for inode in inodes for link in links):
            return int(proc.name)
    raise RuntimeError(f"no process listens on port {port}")


def put(url: str, path: str, headers: dict[str, str], size: int, chunked: bool = False,
        chunk: int = 1 * MB) -> tuple[int, int]:
    """PUT a multipart body carrying ``size`` bytes of file to ``path``, as a script would; returns (HTTP status,
    bytes of body sent before the server answered). Stops sending as soon as an answer arrives."""
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    total = len(head) + size + len(tail)
    parsed = urlparse(url)
    lines = [f"PUT {path} HTTP/1.1", f"Host: {parsed.netloc}",
             f"Content-Type: multipart/form-data; boundary={boundary}"]
    lines += ["Transfer-Encoding: chunked"] if chunked else [f"Content-Length: {total}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    sent = 0
    with socket.create_connection((parsed.hostname, parsed.port), timeout=60) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

        def pieces():
            yield head
            zeros = bytes(chunk)
            left = size
            while left > 0:
                yield zeros[:min(chunk, left)]
                left -= min(chunk, left)
            yield tail

        try:
            for piece in pieces():
                sock.settimeout(0)
                try:
                    if sock.recv(1, socket.MSG_PEEK):
                        break  # the server has answered: a script would stop here too
                except BlockingIOError:
                    pass
                sock.settimeout(60)
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece)
                sent += len(piece)
            else:
                if chunked:
                    sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed the connection after answering
        sock.settimeout(60)
        answer = b""
        while b"\r\n" not in answer:
            data = sock.recv(4096)
            if not data:
                break
            answer += data
    return int(answer.split(b" ", 2)[1]), sent


def test_a_post_over_the_uploaders_cap_is_refused_by_the_server(server, page, tmp_path):  # noqa: F811 - fixtures
    captured = []
    page.on("request", lambda r: captured.append(r) if r.method == "PUT" and "/upload_file/" in r.url else None)
    page.goto(server["url"])
    page.get_by_role("radio", name="Upload").click()
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes(64, 48))
    page.locator(UPLOADER).set_input_files(str(photo))
    sync_api.expect(page.get_by_text("photo.png", exact=True).first).to_be_visible()
    wait_until_idle(page)
    assert captured, "the browser's upload was not seen"
    request = captured[0]
    session_path = urlparse(request.url).path.rsplit("/", 1)[0]  # /_stcore/upload_file/<session id>
    headers = {"X-Xsrftoken": request.headers.get("x-xsrftoken", ""), "Cookie": request.headers.get("cookie", "")}
    if not headers["Cookie"]:
        headers["Cookie"] = "; ".join(f"{c['name']}={c['value']}" for c in page.context.cookies())
    pid = server_pid(server["url"])
    before = steady_rss_mb(pid)  # the page's own work (detecting the photo's regions) settles first

    # within the cap: stored, as from the browser
    status, _ = put(server["url"], f"{session_path}/{uuid.uuid4()}", headers, 1 * MB)
    assert status == 204
    # 200 MB to the 20 MB uploader, declared up front: refused before any of it is read
    start = time.monotonic()
    status, sent = put(server["url"], f"{session_path}/{uuid.uuid4()}", headers, 200 * MB)
    assert status == 413 and sent < 200 * MB and time.monotonic() - start < 30
    # the same without a length (chunked): refused once the bytes pass the cap
    status, sent = put(server["url"], f"{session_path}/{uuid.uuid4()}", headers, 200 * MB, chunked=True)
    assert status == 413 and sent < 200 * MB
    time.sleep(2)
    after = rss_mb(pid)
    assert after - before < 50, f"server RSS {before:.0f} -> {after:.0f} MB"
    # the page is still served: the visitor's own upload is untouched
    assert page.get_by_test_id("stException").count() == 0
