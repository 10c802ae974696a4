"""A software WebAuthn authenticator for tests (python-fido2 has none built in): an
ES256 key pair per credential, with the client's part (collected client data, origin)
done here as a browser would. It answers the JSON PVE's web UI sends, built with
fido2's own encoders and `cryptography` signatures, so the server's checks run as on a
real authenticator's answer."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from fido2.cose import ES256
from fido2.utils import websafe_decode, websafe_encode
from fido2.webauthn import (
    AttestationObject,
    AttestedCredentialData,
    AuthenticatorData,
    CollectedClientData,
)

FLAGS = AuthenticatorData.FLAG


class SoftAuthenticator:
    def __init__(self, origin: str, rp_id: str | None = None) -> None:
        self.origin = origin
        self.rp_id = rp_id
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.credential_id = os.urandom(32)
        self.counter = 0

    def create(self, options: dict[str, Any]) -> str:
        """navigator.credentials.create for PVE's creation options (the JSON string's
        parsed form): the `value` the UI posts."""
        pk = options["publicKey"]
        rp_id = self.rp_id or pk["rp"]["id"]
        cred = AttestedCredentialData.create(b"\0" * 16, self.credential_id,
                                             ES256.from_cryptography_key(self.key.public_key()))
        client = CollectedClientData.create(type="webauthn.create",
                                            challenge=websafe_decode(pk["challenge"]),
                                            origin=self.origin)
        auth = AuthenticatorData.create(hashlib.sha256(rp_id.encode()).digest(),
                                        FLAGS.UP | FLAGS.AT, self.counter, cred)
        att = AttestationObject.create("none", auth, {})
        return json.dumps({
            "id": websafe_encode(self.credential_id), "type": "public-key",
            "rawId": websafe_encode(self.credential_id),
            "response": {"attestationObject": websafe_encode(bytes(att)),
                         "clientDataJSON": websafe_encode(bytes(client))}})

    def get(self, options: dict[str, Any], *, counter_step: int = 1,
            flags: int = FLAGS.UP, challenge: str | None = None) -> str:
        """navigator.credentials.get for the ticket's `webauthn` options: the JSON after
        `webauthn:` in the password (with PVE's `challenge` field)."""
        pk = options["publicKey"]
        self.counter += counter_step
        chal = challenge or pk["challenge"]
        client = CollectedClientData.create(type="webauthn.get",
                                            challenge=websafe_decode(chal),
                                            origin=self.origin)
        auth = AuthenticatorData.create(
            hashlib.sha256((self.rp_id or pk["rpId"]).encode()).digest(), flags,
            self.counter)
        sig = self.key.sign(bytes(auth) + client.hash, ec.ECDSA(hashes.SHA256()))
        return json.dumps({
            "id": websafe_encode(self.credential_id), "type": "public-key",
            "challenge": chal, "rawId": websafe_encode(self.credential_id),
            "response": {"authenticatorData": websafe_encode(bytes(auth)),
                         "clientDataJSON": websafe_encode(bytes(client)),
                         "signature": websafe_encode(sig)}})
