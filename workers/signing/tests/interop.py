"""Reference side of the interop test (driven by interop.rs): the independent PyPI package
`http-message-signatures` signs and verifies requests the same way other RFC 9421 clients do.

Reads a JSON array of requests on stdin and writes a JSON array of answers on stdout, one answer
per request, so one interpreter start serves a whole test. Bytes travel as base64.

  {"op": "sign", "key_id", "secret_b64", "method", "url", "body_b64", "nonce", "label",
   "components": [...], "include_alg": bool, "created": unix-seconds (optional)}
      -> {"headers": {"Content-Digest", "Signature-Input", "Signature"}}
  {"op": "verify", "key_id", "secret_b64", "method", "url", "body_b64", "headers": {...}}
      -> {"ok": true, "label", "parameters": {...}, "covered": [...]}
       | {"ok": false, "error_type", "error"}

Exits non-zero, with the reason on stderr, if the package cannot be imported: the Rust test
treats that as a failure, never as a skip.
"""

import base64
import datetime
import json
import sys

try:
    from http_message_signatures import (
        HTTPMessageSigner,
        HTTPMessageVerifier,
        InvalidSignature,
        MappingKeyResolver,
        algorithms,
    )
except ImportError as error:
    sys.stderr.write(
        f"interop.py: cannot import http_message_signatures ({error}); "
        "install scripts/requirements-test.txt into .local/venv\n"
    )
    sys.exit(3)

# The profile the gateway enforces: these three components must always be covered.
REQUIRED_COMPONENTS = ("@method", "@target-uri", "content-digest")


class Request:
    """The minimal request interface the package reads: method, absolute url, headers."""

    def __init__(self, method, url, headers):
        self.method = method
        self.url = url
        self.headers = headers


def resolver(request):
    secret = base64.b64decode(request["secret_b64"])
    keys = {request["key_id"]: secret}
    return MappingKeyResolver(public_keys=keys, private_keys=keys)


def sign(request):
    message = Request(request["method"], request["url"], {})
    created = request.get("created")
    signer = HTTPMessageSigner(signature_algorithm=algorithms.HMAC_SHA256, key_resolver=resolver(request))
    signer.sign(
        message,
        key_id=request["key_id"],
        created=None if created is None else datetime.datetime.fromtimestamp(created, tz=datetime.timezone.utc),
        nonce=request["nonce"],
        label=request["label"],
        include_alg=request.get("include_alg", True),
        covered_component_ids=tuple(request["components"]),
        # Passing the body makes the package add Content-Digest and cover it.
        body=base64.b64decode(request["body_b64"]),
    )
    return {"headers": dict(message.headers)}


def verify(request):
    message = Request(request["method"], request["url"], dict(request["headers"]))
    verifier = HTTPMessageVerifier(signature_algorithm=algorithms.HMAC_SHA256, key_resolver=resolver(request))
    try:
        results = verifier.verify(
            message,
            require_components=REQUIRED_COMPONENTS,
            # Checks Content-Digest against these bytes and requires the digest to be signed.
            body=base64.b64decode(request["body_b64"]),
        )
    except InvalidSignature as error:
        return {"ok": False, "error_type": type(error).__name__, "error": str(error)}
    (result,) = results
    return {
        "ok": True,
        "label": result.label,
        "parameters": result.parameters,
        "covered": [name for name in result.covered_components if name != '"@signature-params"'],
    }


def main():
    requests = json.load(sys.stdin)
    handlers = {"sign": sign, "verify": verify}
    json.dump([handlers[request["op"]](request) for request in requests], sys.stdout)


if __name__ == "__main__":
    main()
