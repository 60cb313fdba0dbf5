"""Operator sessions: signed cookies, CSRF tokens bound to them, and the login form's token.

Stateless, so every API replica accepts every session: the cookie carries the operator's name,
a fingerprint of the operator's key (removing or rotating the key ends its sessions) and a
random session id, signed with a key derived from the service's secrets."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

from app.core.auth import KeyRing
from app.core.config import Settings

SESSION_COOKIE = "imagegen_console"
LOGIN_COOKIE = "imagegen_console_login"
FLASH_COOKIE = "imagegen_console_flash"
SESSION_MAX_AGE = timedelta(hours=12)
LOGIN_MAX_AGE = timedelta(hours=1)
FLASH_MAX_AGE = timedelta(minutes=1)
_KDF_LABEL = b"imagegen-console-v1"


# Without IMAGEGEN_CONSOLE_SECRET (simulator mode only; the settings require it with evolink):
# a random key of this process, so sessions end when it restarts (logged at start).
_PROCESS_KEY = secrets.token_bytes(32)


def signing_key(settings: Settings) -> bytes:
    """The key that signs console cookies: derived from IMAGEGEN_CONSOLE_SECRET (the same on
    every replica), else random for this process."""
    if settings.console_secret is not None and settings.console_secret.get_secret_value():
        root = settings.console_secret.get_secret_value().encode()
    else:
        root = _PROCESS_KEY
    return hmac.new(root, _KDF_LABEL, hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class Operator:
    """A signed-in operator."""

    name: str
    session_id: str


class ConsoleAuth:
    """Issues and checks session cookies and CSRF tokens for the operators' keys."""

    def __init__(
        self,
        operators: dict[str, str],
        secret: bytes,
        *,
        secure: bool,
        max_age: timedelta = SESSION_MAX_AGE,
    ) -> None:
        self.secure = secure
        self.max_age = max_age
        self._ring = KeyRing(operators)
        self._secret = secret
        self._fingerprints: dict[str, list[str]] = {}
        for key, name in operators.items():
            self._fingerprints.setdefault(name, []).append(self.fingerprint(key))
        self.sessions = URLSafeTimedSerializer(secret, salt="imagegen-console-session")
        self._logins = URLSafeTimedSerializer(secret, salt="imagegen-console-login")
        self._flashes = URLSafeTimedSerializer(secret, salt="imagegen-console-flash")

    def _mac(self, purpose: str, value: str, length: int = 32) -> str:
        digest = hmac.new(self._secret, f"{purpose}\0{value}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:length]).rstrip(b"=").decode()

    def fingerprint(self, key: str) -> str:
        """A short keyed digest of an operator key: names the key without revealing it."""
        return self._mac("operator-key", key, length=12)

    def login(self, presented_key: str) -> str | None:
        """A new session cookie value for the operator owning `presented_key`, or None."""
        name = self._ring.identify(presented_key)
        if name is None:
            return None
        payload = {"o": name, "f": self.fingerprint(presented_key), "s": secrets.token_urlsafe(16)}
        return self.sessions.dumps(payload)

    def operator(self, cookie: str | None) -> Operator | None:
        """The operator of a session cookie that is authentic, recent and of a current key."""
        if not cookie:
            return None
        try:
            payload: Any = self.sessions.loads(cookie, max_age=int(self.max_age.total_seconds()))
        except BadSignature:  # SignatureExpired is one
            return None
        if not isinstance(payload, dict):
            return None
        name, fingerprint, session_id = payload.get("o"), payload.get("f"), payload.get("s")
        if (
            not isinstance(name, str)
            or not isinstance(fingerprint, str)
            or not isinstance(session_id, str)
        ):
            return None
        known = self._fingerprints.get(name, [])
        if not any(hmac.compare_digest(fingerprint, current) for current in known):
            return None
        return Operator(name=name, session_id=session_id)

    def csrf_token(self, operator: Operator) -> str:
        """The CSRF token of a session: forms of that session carry it."""
        return self._mac("csrf", operator.session_id)

    def check_csrf(self, operator: Operator, presented: object) -> bool:
        """Whether a form's token belongs to this session."""
        if not isinstance(presented, str) or not presented:
            return False
        return hmac.compare_digest(presented.encode(), self.csrf_token(operator).encode())

    def new_login(self) -> tuple[str, str]:
        """(cookie, token) for a login form: the form must send back the token of its cookie."""
        nonce = secrets.token_urlsafe(16)
        return self._logins.dumps(nonce), self._mac("login", nonce)

    def check_login(self, cookie: str | None, presented: object) -> bool:
        """Whether a login form's token matches the login cookie set with that form."""
        if not cookie or not isinstance(presented, str) or not presented:
            return False
        try:
            nonce: Any = self._logins.loads(cookie, max_age=int(LOGIN_MAX_AGE.total_seconds()))
        except BadSignature:
            return False
        if not isinstance(nonce, str):
            return False
        return hmac.compare_digest(presented.encode(), self._mac("login", nonce).encode())

    def flash(self, operator: Operator, kind: str, message: str) -> str:
        """A one-shot message to show on the next page of this session."""
        return self._flashes.dumps({"s": operator.session_id, "k": kind, "m": message})

    def read_flash(self, operator: Operator, cookie: str | None) -> tuple[str, str] | None:
        """(kind, message) of a flash cookie set for this session."""
        if not cookie:
            return None
        try:
            payload: Any = self._flashes.loads(cookie, max_age=int(FLASH_MAX_AGE.total_seconds()))
        except BadSignature:
            return None
        if not isinstance(payload, dict) or payload.get("s") != operator.session_id:
            return None
        kind, message = payload.get("k"), payload.get("m")
        if not isinstance(kind, str) or not isinstance(message, str):
            return None
        return kind, message


def build(settings: Settings) -> ConsoleAuth | None:
    """The console's authenticator, or None when no operator is configured (console off)."""
    operators = settings.operators
    if not operators:
        return None
    base = settings.public_base_url or ""
    return ConsoleAuth(operators, signing_key(settings), secure=not base.startswith("http://"))
