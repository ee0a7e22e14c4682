"""The interactive REPL in a real pseudo-terminal: greeting, streamed reply, /commands."""

import os
import pty
import select
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.model


def read_until(fd, needle: bytes, timeout=60.0) -> bytes:
    buf = b""
    end = time.time() + timeout
    while needle not in buf:
        left = end - time.time()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {needle!r}; got {buf[-400:]!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return buf


def test_repl_session(tmp_path):
    card = tmp_path / "bob.json"
    card.write_text('{"name": "Bob", "description": "A baker who loves bread.", "first_mes": "Fresh loaves!"}')
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARBOT_")}
    env.update(CHARBOT_DB_PATH=str(tmp_path / "m.db"), XDG_DATA_HOME=str(tmp_path / "xdg"), TERM="dumb")
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "charbot", "chat", "--max-new-tokens", "16"],
        stdin=follower, stdout=follower, stderr=follower, env=env, cwd=tmp_path, close_fds=True,
    )
    os.close(follower)
    try:
        out = read_until(leader, b"You: ")
        assert b"Talking to Orla" in out and b"Mind the ninth step" in out  # greeting on a new conversation
        os.write(leader, b"Hello there\r")
        out = read_until(leader, b"You: ")
        reply = out.decode().split("Orla: ", 1)[1].split("You: ")[0].strip()
        assert reply
        os.write(leader, b"/persona " + str(card).encode() + b"\r")
        assert b"now talking to Bob" in read_until(leader, b"You: ")
        os.write(leader, b"/reset\r")
        assert b"forgot 2 messages" in read_until(leader, b"You: ")
        os.write(leader, b"/help\r")
        assert b"/persona FILE" in read_until(leader, b"You: ")
        os.write(leader, b"/quit\r")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)
    assert (tmp_path / "xdg" / "charbot" / "chat_history").exists()  # readline history kept
