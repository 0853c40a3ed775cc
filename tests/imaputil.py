"""A throwaway Dovecot IMAP server for tests: its own config, users file and maildirs, on a
free loopback port, no TLS, started in the foreground and stopped at teardown.

Dovecot never gives mail access to uid 0, so when the tests run as root (CI) the mail
store (and the users file Dovecot's auth process reads) lives in a directory of its own
under the system temp dir, the mail owned by the `mail` user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import free_port

BINARY = shutil.which("dovecot") or (
    "/usr/sbin/dovecot" if Path("/usr/sbin/dovecot").exists() else None
)
USER = "seqd@example.test"
PASSWORD = "imap-secret"
# A second login of the same server (another mailbox).
OTHER = "other@example.test"

# Locally a missing dovecot skips (with the way to get it); in CI it must be there
# (.ci/run installs it), so there the tests fail instead of passing unseen.
needs_dovecot = pytest.mark.skipif(
    BINARY is None and not os.environ.get("CI"),
    reason="dovecot is not installed (apt-get install dovecot-imapd); CI installs it",
)


class Dovecot:
    """`tls`: (certificate, key) PEM files: STARTTLS offered on the port (plain login
    still allowed, as the other tests log in without it)."""

    def __init__(self, directory: Path, tls: tuple[Path, Path] | None = None) -> None:
        if BINARY is None:
            raise RuntimeError("dovecot is not installed (apt-get install dovecot-imapd)")
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.conf = directory / "dovecot.conf"
        if os.geteuid() == 0:
            owner = pwd.getpwnam("mail")
            # Dovecot's auth process (user dovecot) reads the users file, so both live
            # where it may look: a world-traversable directory of their own.
            self.shared = Path(tempfile.mkdtemp(prefix="seqd-dovecot-"))
            self.shared.chmod(0o755)
            self.mail = self.shared / "mail"
            self.mail.mkdir()
            os.chown(self.mail, owner.pw_uid, owner.pw_gid)
            internal = "default_internal_user = dovecot\ndefault_login_user = dovenull\n"
        else:
            owner = pwd.getpwuid(os.geteuid())
            self.shared = directory
            self.mail = directory / "mail"
            self.mail.mkdir()
            name = owner.pw_name
            internal = f"default_internal_user = {name}\ndefault_login_user = {name}\n"
        users = self.shared / "users"
        users.write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n{OTHER}:{{PLAIN}}{PASSWORD}\n")
        ssl = "ssl = no"
        if tls is not None:
            ssl = f"ssl = yes\nssl_cert = <{tls[0]}\nssl_key = <{tls[1]}"
        self.conf.write_text(
            f"""
base_dir = {directory}/run
state_dir = {directory}/state
log_path = {directory}/dovecot.log
{internal}
protocols = imap
listen = 127.0.0.1
{ssl}
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = {owner.pw_uid}
mail_location = maildir:{self.mail}/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {users}
}}
userdb {{
  driver = static
  args = uid={owner.pw_uid} gid={owner.pw_gid} home={self.mail}/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0666
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""
        )

    def start(self) -> None:
        self.process = subprocess.Popen([str(BINARY), "-F", "-c", str(self.conf)])
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(100).startswith(b"* OK"):
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.directory / "dovecot.log"
                raise RuntimeError(
                    "dovecot did not start: " + (log.read_text() if log.exists() else "")
                )
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        if self.shared != self.directory:
            shutil.rmtree(self.shared, ignore_errors=True)
