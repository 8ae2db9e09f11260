"""Uses only the client generated from openapi.yaml: mint via /v1/tokens (Bearer key) and via
/v3/token (raw `Authorization: <key>`), redeem both, and check a second redemption is refused;
then mint once more and ask /v1/forward-auth as a proxy would (its key in X-Streamtoken-Api-Key):
granted once with the identity headers, refused with 401 the second time."""
import os
import sys

sys.path.insert(0, os.environ["GENERATED_CLIENT_DIR"])

from streamtoken_client import AuthenticatedClient  # noqa: E402
from streamtoken_client.api.default import (  # noqa: E402
    generate_streaming_token,
    get_v1_forward_auth,
    introspect_token,
    mint_token,
    redeem_token,
)
from streamtoken_client.models import (  # noqa: E402
    Error,
    GenerateStreamingTokenResponse200,
    IntrospectResponse,
    MintRequest,
    MintResponse,
    RedeemResponse,
    TokenRequest,
)

base_url = os.environ["STREAMTOKEN_URL"]
key = os.environ["STREAMTOKEN_KEY"]
bearer = AuthenticatedClient(base_url=base_url, token=key)
raw = AuthenticatedClient(base_url=base_url, token=key, prefix="")

minted = mint_token.sync(
    client=bearer,
    body=MintRequest(token_type="realtime", expires_in_seconds=60, max_session_duration_seconds=600),
)
assert isinstance(minted, MintResponse), minted
assert minted.token.startswith("eyJ") and minted.expires_in_seconds == 60 and minted.uses == 1

streaming = generate_streaming_token.sync(client=raw, expires_in_seconds=60)
assert isinstance(streaming, GenerateStreamingTokenResponse200), streaming
assert streaming.token.startswith("eyJ") and streaming.expires_in_seconds == 60

for name, token, token_type in [("/v1/tokens", minted.token, "realtime"), ("/v3/token", streaming.token, "realtime")]:
    peek = introspect_token.sync(client=bearer, body=TokenRequest(token=token))
    assert isinstance(peek, IntrospectResponse) and peek.active, (name, peek)

    first = redeem_token.sync_detailed(client=bearer, body=TokenRequest(token=token))
    assert first.status_code == 200, (name, first.status_code, first.content)
    assert isinstance(first.parsed, RedeemResponse), (name, first.parsed)
    assert first.parsed.org == "dev" and first.parsed.token_type == token_type and first.parsed.uses_remaining == 0

    second = redeem_token.sync_detailed(client=bearer, body=TokenRequest(token=token))
    assert second.status_code == 409, (name, second.status_code, second.content)
    assert isinstance(second.parsed, Error), (name, second.parsed)
    assert second.parsed.error.code == "token_already_used", (name, second.parsed)
    print(f"client flow: {name} token redeemed once, second redemption refused with 409")

proxy = AuthenticatedClient(base_url=base_url, token=key, prefix="", auth_header_name="X-Streamtoken-Api-Key")
token = mint_token.sync(client=bearer, body=MintRequest(ctx={"sessionId": "s-1"})).token
asked = lambda: get_v1_forward_auth.sync_detailed(client=proxy, x_original_uri=f"/ws/asr?token={token}")
granted = asked()
assert granted.status_code == 200, (granted.status_code, granted.content)
assert granted.headers["x-streamtoken-org"] == "dev", granted.headers
assert granted.headers["x-streamtoken-ctx"] == '{"sessionId":"s-1"}', granted.headers
refused = asked()
assert refused.status_code == 401, (refused.status_code, refused.content)
assert isinstance(refused.parsed, Error) and refused.parsed.error.code == "token_already_used", refused.parsed
assert refused.headers["x-streamtoken-error"] == "token_already_used", refused.headers
print("client flow: /v1/forward-auth granted once, then refused with 401 token_already_used")

print("client flow: OK")
