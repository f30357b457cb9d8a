"""Keys and envelope encryption.

- The server secret signs/derives join credentials and tickets (HMAC-SHA256).
- The master key wraps per-person data keys (AES-256-GCM, NIST SP 800-38D); data is
  encrypted under the person's data key, so destroying that one wrapped key makes their
  data unreadable (crypto-shredding) without touching anyone else's.
- Both rotate without downtime: previous secrets still verify what they made (tickets,
  idempotency fingerprints, join links, checkpoint keys), previous master keys still unwrap
  until `callgate keys rotate-master` has re-wrapped every data key under the current one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12
SEALED_PREFIX = "cg1."  # a sealed text value: version 1, AES-256-GCM, nonce first


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sha256_hex(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()


def hmac_sha256(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def private_folder(path: Path) -> None:
    """Make the folder exist with mode 0700 (only callgate's user reads its state)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def load_or_create_key_file(path: Path, nbytes: int = 32) -> bytes:
    """A random key kept in `path` (mode 0600), made on first use: the embedded default."""
    if path.exists():
        os.chmod(path, 0o600)  # whatever made it, or a umask of old, it is the key
        return base64.b64decode(path.read_text().strip())
    private_folder(path.parent)
    key = secrets.token_bytes(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(base64.b64encode(key).decode())
    return key


class Keyring:
    """The server secret and the master key (and the previous ones, still accepted while a
    rotation runs); never logged, never serialized."""

    def __init__(
        self,
        secret: bytes,
        master: bytes,
        *,
        previous_secrets: Sequence[bytes] = (),
        previous_masters: Sequence[bytes] = (),
    ) -> None:
        for value in (secret, *previous_secrets):
            if len(value) < 32:
                raise ValueError("a server secret must have at least 32 bytes")
        for value in (master, *previous_masters):
            if len(value) != 32:
                raise ValueError("a master key must be 32 bytes (AES-256)")
        self._secret = secret
        self._master = AESGCM(master)
        self._previous_secrets = tuple(previous_secrets)
        self._previous_masters = tuple(AESGCM(m) for m in previous_masters)
        self._previous_master_bytes = tuple(previous_masters)
        self._master_bytes = master

    def __repr__(self) -> str:
        return "Keyring(<redacted>)"

    def derive(self, purpose: str, message: str) -> bytes:
        """A MAC of `message` under a key separated by `purpose` (domain separation)."""
        return hmac_sha256(self._secret, f"{purpose}\x00{message}")

    def derivations(self, purpose: str, message: str) -> list[bytes]:
        """`derive` under the current secret, then under each previous one (to verify)."""
        return [
            hmac_sha256(secret, f"{purpose}\x00{message}")
            for secret in (self._secret, *self._previous_secrets)
        ]

    def previous(self) -> tuple[Keyring, ...]:
        """A keyring per previous secret (their checkpoint keys stay trusted)."""
        return tuple(Keyring(s, self._master_bytes) for s in self._previous_secrets)

    def wrap(self, data_key: bytes, context: str) -> bytes:
        """Encrypt a data key under the master key, bound to `context` (e.g. the subject)."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce + self._master.encrypt(nonce, data_key, context.encode())

    def unwrap(self, wrapped: bytes, context: str) -> bytes:
        """The data key, under the current master key or a previous one (InvalidTag if
        under none)."""
        return self.unwrap_current(wrapped, context) or self._unwrap_previous(wrapped, context)

    def unwrap_current(self, wrapped: bytes, context: str) -> bytes | None:
        """The data key if it is wrapped under the current master key, else None."""
        nonce, body = wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:]
        try:
            return self._master.decrypt(nonce, body, context.encode())
        except InvalidTag:
            return None

    def _unwrap_previous(self, wrapped: bytes, context: str) -> bytes:
        nonce, body = wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:]
        for master in self._previous_masters:
            try:
                return master.decrypt(nonce, body, context.encode())
            except InvalidTag:
                continue
        raise InvalidTag

    @staticmethod
    def new_data_key() -> bytes:
        return AESGCM.generate_key(bit_length=256)


def seal(key: bytes, plaintext: bytes, context: str) -> str:
    """Encrypt a short value (a transcript line, a summary) under a data key, bound to
    `context` (associated data, so a sealed value cannot be moved to another row)."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    body = nonce + AESGCM(key).encrypt(nonce, plaintext, context.encode())
    return SEALED_PREFIX + base64.b64encode(body).decode()


def is_sealed(value: str) -> bool:
    return value.startswith(SEALED_PREFIX)


def unseal(key: bytes, sealed: str, context: str) -> bytes:
    """The plaintext of `seal`; cryptography's InvalidTag for a wrong key or context."""
    body = base64.b64decode(sealed[len(SEALED_PREFIX):])
    return AESGCM(key).decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], context.encode())


def split_key(key: bytes, parts: int) -> list[bytes]:
    """n-of-n shares of `key` (XOR): every share is needed to rebuild it, and any n-1 of them
    say nothing about it."""
    shares = [secrets.token_bytes(len(key)) for _ in range(parts - 1)]
    last = key
    for share in shares:
        last = bytes(a ^ b for a, b in zip(last, share, strict=True))
    return [*shares, last]


def join_key(shares: list[bytes]) -> bytes:
    key = shares[0]
    for share in shares[1:]:
        key = bytes(a ^ b for a, b in zip(key, share, strict=True))
    return key
