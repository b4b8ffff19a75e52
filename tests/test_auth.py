from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from millionws import auth
from millionws.auth import AuthError, Verifier, extract_token

SECRET = "s3cret-for-tests-only-32-bytes!!"


def hs(claims: dict, secret: str = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


def test_hs256_identity():
    identity = Verifier(secret=SECRET).verify(hs({"sub": "alice", "channels": ["news", "chat.*"],
                                                  "exp": time.time() + 60}))
    assert identity.user == "alice"
    assert identity.may_use("news") and identity.may_use("chat.42")
    assert not identity.may_use("admin") and not identity.may_use("newsx")


# Tokens are built at collection time, minutes before the test runs in a full suite: exp is an hour out.
@pytest.mark.parametrize(("token", "reason"), [
    ("not-a-jwt", auth.A_MALFORMED),
    (hs({"sub": "a", "exp": time.time() - 60}), auth.A_EXPIRED),
    (hs({"sub": "a", "exp": time.time() + 3600}, "another-secret-of-32-bytes-long!"), auth.A_BAD_SIGNATURE),
    (hs({"sub": "a"}), auth.A_INVALID_CLAIMS),  # exp is required
    (hs({"sub": 5, "exp": time.time() + 3600}), auth.A_INVALID_CLAIMS),
    (hs({"sub": "a", "channels": "news", "exp": time.time() + 3600}), auth.A_INVALID_CLAIMS),
    (jwt.encode({"sub": "a", "exp": time.time() + 3600}, None, algorithm="none"), auth.A_BAD_SIGNATURE),
])
def test_refusals_carry_their_reason(token, reason):
    with pytest.raises(AuthError) as info:
        Verifier(secret=SECRET).verify(token)
    assert info.value.reason == reason


def _jwks(tmp_path, private, kid, alg):
    jwk = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(private.public_key()))
    jwk.update(kid=kid, alg=alg, use="sig")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    return str(path)


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_asymmetric_with_jwks(tmp_path, alg):
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048) if alg == "RS256" \
        else ec.generate_private_key(ec.SECP256R1())
    verifier = Verifier(jwks_path=_jwks(tmp_path, private, "k1", alg))
    token = jwt.encode({"sub": "bob", "exp": time.time() + 60}, private, algorithm=alg, headers={"kid": "k1"})
    assert verifier.verify(token).user == "bob"
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048) if alg == "RS256" \
        else ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode({"sub": "bob", "exp": time.time() + 60}, other, algorithm=alg, headers={"kid": "k1"})
    with pytest.raises(AuthError) as info:
        verifier.verify(forged)
    assert info.value.reason == auth.A_BAD_SIGNATURE
    # An HS256 token signed with the public key must not pass (algorithm confusion).
    with pytest.raises(AuthError):
        verifier.verify(hs({"sub": "x", "exp": time.time() + 60}, "k1-public-key-material-32-bytes!"))
    # A kid that is not a string (a list, an object) is a malformed token, not a crash on an unhashable key.
    _, payload, signature = token.split(".")
    for kid in (["k1"], {"k": 1}, 7):  # PyJWT will not write such a header: spell it out
        header = base64.urlsafe_b64encode(json.dumps({"alg": alg, "kid": kid}).encode()).rstrip(b"=").decode()
        odd = f"{header}.{payload}.{signature}"
        with pytest.raises(AuthError) as info:
            verifier.verify(odd)
        assert info.value.reason == auth.A_MALFORMED


def test_token_sources_in_order():
    assert extract_token([(b"authorization", b"Bearer abc")], b"/pubsub?token=zzz") == ("abc", False)
    assert extract_token([(b"sec-websocket-protocol", b"millionws, millionws.bearer.tok")], b"/") == ("tok", True)
    assert extract_token([], b"/pubsub?x=1&token=qq") == ("qq", False)
    assert extract_token([(b"authorization", b"Basic abc")], b"/") == (None, False)
