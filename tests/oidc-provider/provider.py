"""A real OpenID Provider on 127.0.0.1 for the dispatcher's sign-in tests, built on
Authlib's authorization server (authorization code grant, PKCE required, OpenID Connect
ID tokens signed RS256 with a fresh key, published as JWKS beside a discovery document).

    provider.py --client-secret SECRET --redirect-uri URL

prints its issuer URL on the first line of stdout once it listens, then serves until
killed. Its users and their groups are fixed (USERS). The sign-in page asks for a user
name; the form may also carry `quirk` (expired, tampered, wrong_aud) to make that code's ID
token broken in that one way, for the tests of what the dispatcher refuses.
"""

import argparse
import base64
import hmac
import json
import os
import sys
import time

# Plain HTTP on loopback only (the tests' provider); Authlib refuses it otherwise.
os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"

from authlib.integrations.flask_oauth2 import AuthorizationServer  # noqa: E402
from authlib.oauth2.rfc6749 import AuthorizationCodeMixin, ClientMixin, grants  # noqa: E402
from authlib.oauth2.rfc7636 import CodeChallenge  # noqa: E402
from authlib.oidc.core import UserInfo  # noqa: E402
from authlib.oidc.core.grants import OpenIDCode  # noqa: E402
from flask import Flask, jsonify, request  # noqa: E402
from joserfc.jwk import RSAKey  # noqa: E402
from markupsafe import escape  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

CLIENT_ID = "dispatcher"
KEY = RSAKey.generate_key(2048, parameters={"kid": "test-key-1", "use": "sig", "alg": "RS256"})


class User:
    def __init__(self, name, groups):
        self.name = name
        self.sub = "sub-" + name
        self.groups = groups

    def get_user_id(self):
        return self.sub


USERS = {
    user.name: user
    for user in [
        User("vera", ["dispatcher-viewers"]),
        User("dana", ["dispatcher-support", "everyone"]),
        User("oscar", ["dispatcher-ops"]),
        User("mallory", ["marketing", "everyone-else"]),
    ]
}


class Client(ClientMixin):
    def __init__(self, secret, redirect_uri):
        self.client_id = CLIENT_ID
        self.secret = secret
        self.redirect_uri = redirect_uri

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return self.redirect_uri

    def get_allowed_scope(self, scope):
        allowed = {"openid", "profile", "email"}
        return " ".join(s for s in (scope or "").split() if s in allowed)

    def check_redirect_uri(self, redirect_uri):
        return redirect_uri == self.redirect_uri

    def check_client_secret(self, client_secret):
        return hmac.compare_digest(client_secret, self.secret)

    def check_endpoint_auth_method(self, method, endpoint):
        if endpoint == "token":
            return method in ("client_secret_basic", "client_secret_post")
        return True

    def check_response_type(self, response_type):
        return response_type == "code"

    def check_grant_type(self, grant_type):
        return grant_type == "authorization_code"


class Code(AuthorizationCodeMixin):
    def __init__(self, code, client_id, redirect_uri, scope, user, nonce, challenge, method, quirk):
        self.code = code
        self.client_id = client_id
        self.redirect_uri = redirect_uri
        self.scope = scope
        self.user = user
        self.nonce = nonce
        self.code_challenge = challenge
        self.code_challenge_method = method
        self.quirk = quirk
        self.auth_time = int(time.time())

    def get_redirect_uri(self):
        return self.redirect_uri

    def get_scope(self):
        return self.scope

    def get_nonce(self):
        return self.nonce

    def get_auth_time(self):
        return self.auth_time

    def get_acr(self):
        return None

    def get_amr(self):
        return None


CODES = {}


class CodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    def save_authorization_code(self, code, req):
        data = req.payload.data
        CODES[code] = Code(
            code,
            req.client.get_client_id(),
            req.payload.redirect_uri,
            req.scope,
            req.user,
            data.get("nonce"),
            data.get("code_challenge"),
            data.get("code_challenge_method"),
            request.form.get("quirk"),
        )

    def query_authorization_code(self, code, client):
        found = CODES.get(code)
        if found and found.client_id == client.get_client_id():
            return found
        return None

    def delete_authorization_code(self, authorization_code):
        CODES.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code):
        return authorization_code.user


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class IdTokens(OpenIDCode):
    def __init__(self, issuer):
        super().__init__(require_nonce=True)
        self.issuer = issuer
        self.quirk = None

    def resolve_client_private_key(self, client):
        return KEY

    def get_client_algorithm(self, client):
        return "RS256"

    def get_encode_header(self, client):
        return {"alg": "RS256", "kid": KEY.kid}

    def get_client_claims(self, client):
        claims = {"iss": self.issuer, "aud": [client.get_client_id()]}
        now = int(time.time())
        if self.quirk == "expired":
            claims.update(iat=now - 7200, exp=now - 3600)
        if self.quirk == "wrong_aud":
            claims["aud"] = ["another-client"]
        return claims

    def exists_nonce(self, nonce, req):
        return False

    def generate_user_info(self, user, scope):
        return UserInfo(
            sub=user.sub,
            preferred_username=user.name,
            email=user.name + "@helparound.example",
            groups=user.groups,
        )

    def encode_id_token(self, token, req):
        self.quirk = getattr(req.authorization_code, "quirk", None)
        encoded = super().encode_id_token(token, req)
        if isinstance(encoded, bytes):
            encoded = encoded.decode()
        if self.quirk == "tampered":
            # Signed for vera's groups, then given the operators' group: the signature
            # no longer matches the payload.
            header, payload, signature = encoded.split(".")
            claims = json.loads(unb64(payload))
            claims["groups"] = ["dispatcher-ops"]
            encoded = ".".join([header, b64(json.dumps(claims).encode()), signature])
        return encoded


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--redirect-uri", required=True)
    args = parser.parse_args()

    app = Flask(__name__)
    app.config["OAUTH2_ERROR_URIS"] = []
    server_socket = make_server("127.0.0.1", 0, app, threaded=True)
    issuer = f"http://127.0.0.1:{server_socket.server_port}/oidc"
    client = Client(args.client_secret, args.redirect_uri)

    authorization = AuthorizationServer(
        app,
        query_client=lambda client_id: client if client_id == CLIENT_ID else None,
        save_token=lambda token, req: None,
    )
    authorization.register_grant(CodeGrant, [CodeChallenge(required=True), IdTokens(issuer)])

    @app.get("/oidc/.well-known/openid-configuration")
    def discovery():
        return jsonify(
            issuer=issuer,
            authorization_endpoint=issuer + "/authorize",
            token_endpoint=issuer + "/token",
            jwks_uri=issuer + "/jwks",
            response_types_supported=["code"],
            subject_types_supported=["public"],
            id_token_signing_alg_values_supported=["RS256"],
            code_challenge_methods_supported=["S256"],
            token_endpoint_auth_methods_supported=["client_secret_basic", "client_secret_post"],
            scopes_supported=["openid", "profile", "email"],
            claims_supported=["sub", "preferred_username", "email", "groups"],
        )

    @app.get("/oidc/jwks")
    def jwks():
        return jsonify(keys=[KEY.as_dict(private=False)])

    @app.route("/oidc/authorize", methods=["GET", "POST"])
    def authorize():
        if request.method == "GET":
            try:
                authorization.get_consent_grant(end_user=None)
            except Exception as error:  # an OAuth error: shown, never redirected
                return f"<p id='error'>{escape(str(error))}</p>", 400
            return (
                "<!DOCTYPE html><title>Test identity provider</title>"
                "<h1>Test identity provider</h1>"
                "<form method='post'>"
                "<label>User name <input name='username' id='username'></label>"
                "<button type='submit' id='sign-in'>Sign in</button></form>"
            )
        user = USERS.get(request.form.get("username", ""))
        return authorization.create_authorization_response(grant_user=user)

    @app.post("/oidc/token")
    def issue_token():
        return authorization.create_token_response()

    print(issuer, flush=True)
    server_socket.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
