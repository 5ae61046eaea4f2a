// An OpenID Connect provider of the tests' own, over real HTTP on a port-0 listener: discovery,
// its key set, an authorization endpoint that signs the user in at once (as a provider with a
// live session does) and a token endpoint that redeems a code only with the PKCE verifier of its
// challenge. Keys are made per start and tokens signed by jose.
import { createServer } from "node:http";
import { createHash, randomBytes } from "node:crypto";
import { SignJWT, exportJWK, generateKeyPair } from "jose";

const KEY_ID = "test-key-1";
const TOKEN_LIFETIME_S = 600;

const base64url = (bytes) => Buffer.from(bytes).toString("base64url");

/**
 * Starts the provider. Its access tokens carry `roles` (which a test may change between sign-ins)
 * and `aud` = `audience` (the aggregator's --oidc-audience); `requests` lists the query of every
 * authorization request it saw.
 */
export async function startIssuer({ audience, roles }) {
  const { publicKey, privateKey } = await generateKeyPair("RS256");
  const jwk = { ...(await exportJWK(publicKey)), kid: KEY_ID, alg: "RS256", use: "sig" };
  const codes = new Map();
  const provider = { issuer: "", roles, requests: [], stop: () => server.close() };
  let issuer = "";

  const sign = (claims) => new SignJWT(claims)
    .setProtectedHeader({ alg: "RS256", kid: KEY_ID, typ: "JWT" })
    .setIssuer(issuer)
    .setIssuedAt()
    .setExpirationTime(`${TOKEN_LIFETIME_S}s`)
    .sign(privateKey);

  const json = (response, status, body) => {
    response.writeHead(status, {
      "content-type": "application/json",
      "cache-control": "no-store",
      // Browsers fetch discovery and redeem codes from the dashboard's origin.
      "access-control-allow-origin": "*",
    });
    response.end(JSON.stringify(body));
  };

  const authorize = (url, response) => {
    const query = url.searchParams;
    provider.requests.push(Object.fromEntries(query));
    if (query.get("response_type") !== "code" || query.get("code_challenge_method") !== "S256" || !query.get("code_challenge")) {
      const back = new URL(query.get("redirect_uri"));
      back.searchParams.set("error", "invalid_request");
      back.searchParams.set("error_description", "PKCE with S256 is required");
      back.searchParams.set("state", query.get("state") ?? "");
      response.writeHead(302, { location: back.href });
      return response.end();
    }
    const code = base64url(randomBytes(24));
    codes.set(code, {
      clientId: query.get("client_id"),
      redirectUri: query.get("redirect_uri"),
      challenge: query.get("code_challenge"),
      nonce: query.get("nonce"),
      scope: query.get("scope"),
    });
    const back = new URL(query.get("redirect_uri"));
    back.searchParams.set("code", code);
    back.searchParams.set("state", query.get("state") ?? "");
    response.writeHead(302, { location: back.href });
    response.end();
  };

  const redeem = async (body, response) => {
    const form = new URLSearchParams(body);
    const grant = codes.get(form.get("code") ?? "");
    codes.delete(form.get("code") ?? "");
    const verifier = form.get("code_verifier") ?? "";
    const challenge = base64url(createHash("sha256").update(verifier).digest());
    if (form.get("grant_type") !== "authorization_code" || grant === undefined
      || grant.clientId !== form.get("client_id") || grant.redirectUri !== form.get("redirect_uri")) {
      return json(response, 400, { error: "invalid_grant", error_description: "unknown or used code" });
    }
    if (grant.challenge !== challenge) {
      return json(response, 400, { error: "invalid_grant", error_description: "the PKCE verifier does not match" });
    }
    const subject = "ada";
    const accessToken = await sign({ sub: subject, aud: audience, roles: provider.roles, scp: grant.scope });
    const idToken = await sign({ sub: subject, aud: grant.clientId, nonce: grant.nonce });
    json(response, 200, {
      access_token: accessToken,
      token_type: "Bearer",
      expires_in: TOKEN_LIFETIME_S,
      id_token: idToken,
      scope: grant.scope,
    });
  };

  const server = createServer((request, response) => {
    const url = new URL(request.url, issuer);
    if (request.method === "OPTIONS") {
      response.writeHead(204, {
        "access-control-allow-origin": "*",
        "access-control-allow-methods": "GET, POST",
        "access-control-allow-headers": "content-type, accept, authorization",
      });
      return response.end();
    }
    if (url.pathname === "/.well-known/openid-configuration") {
      return json(response, 200, {
        issuer,
        authorization_endpoint: `${issuer}/authorize`,
        token_endpoint: `${issuer}/token`,
        jwks_uri: `${issuer}/keys`,
        response_types_supported: ["code"],
        subject_types_supported: ["public"],
        id_token_signing_alg_values_supported: ["RS256"],
        code_challenge_methods_supported: ["S256"],
      });
    }
    if (url.pathname === "/keys") return json(response, 200, { keys: [jwk] });
    if (url.pathname === "/authorize") return authorize(url, response);
    if (url.pathname === "/token" && request.method === "POST") {
      let body = "";
      request.on("data", (chunk) => { body += chunk; });
      request.on("end", () => void redeem(body, response));
      return undefined;
    }
    json(response, 404, { error: "not_found" });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  issuer = `http://127.0.0.1:${server.address().port}`;
  provider.issuer = issuer;
  return provider;
}
