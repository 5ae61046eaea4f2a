// Signing in through the organisation's identity provider (the aggregator's --oidc-client-id):
// the authorization code flow with PKCE, the dashboard a public client, by oauth4webapi. The
// access token then lives in memory like a pasted API token (api.ts). Only the flow's
// single-use values (state, PKCE verifier, nonce) wait in sessionStorage across the round trip
// to the provider's sign-in page, and are removed as the page comes back.
import * as oauth from "oauth4webapi";

/** What `GET /dashboard/config.json` says of the provider. */
export interface Provider {
  issuer: string;
  client_id: string;
  scope: string;
}

/** The flow's values kept across the redirect, and the view to come back to. */
interface Pending {
  verifier: string;
  state: string;
  nonce: string;
  hash: string;
}

const PENDING_KEY = "hitcount.sign-in";

/** The provider this aggregator lets the dashboard sign in through; undefined: tokens only. */
export async function configuredProvider(): Promise<Provider | undefined> {
  const response = await fetch("/dashboard/config.json");
  if (!response.ok) return undefined;
  const config = (await response.json()) as { oidc: Provider | null };
  return config.oidc ?? undefined;
}

/** The dashboard's own address: the redirect URI registered with the provider. */
function redirectUri(): string {
  return `${window.location.origin}/`;
}

/** http:// is for a provider on the aggregator's own machine, which alone the aggregator allows. */
function requestOptions(provider: Provider): { [oauth.allowInsecureRequests]: boolean } {
  return { [oauth.allowInsecureRequests]: new URL(provider.issuer).protocol === "http:" };
}

async function discover(provider: Provider): Promise<oauth.AuthorizationServer> {
  const issuer = new URL(provider.issuer);
  const response = await oauth.discoveryRequest(issuer, { ...requestOptions(provider), algorithm: "oidc" });
  return oauth.processDiscoveryResponse(issuer, response);
}

/** Leaves for the provider's sign-in page; it sends the browser back to the dashboard. */
export async function leaveForProvider(provider: Provider): Promise<void> {
  const server = await discover(provider);
  if (server.authorization_endpoint === undefined) {
    throw new Error("The identity provider's discovery document names no authorization endpoint.");
  }
  const pending: Pending = {
    verifier: oauth.generateRandomCodeVerifier(),
    state: oauth.generateRandomState(),
    nonce: oauth.generateRandomNonce(),
    hash: window.location.hash,
  };
  sessionStorage.setItem(PENDING_KEY, JSON.stringify(pending));
  const url = new URL(server.authorization_endpoint);
  url.searchParams.set("client_id", provider.client_id);
  url.searchParams.set("redirect_uri", redirectUri());
  url.searchParams.set("response_type", "code");
  url.searchParams.set("scope", provider.scope);
  url.searchParams.set("code_challenge", await oauth.calculatePKCECodeChallenge(pending.verifier));
  url.searchParams.set("code_challenge_method", "S256");
  url.searchParams.set("state", pending.state);
  url.searchParams.set("nonce", pending.nonce);
  window.location.assign(url.href);
}

/** Whether this load is the provider sending the browser back with its answer. */
export function backFromProvider(): boolean {
  const answer = new URLSearchParams(window.location.search);
  return (answer.has("code") || answer.has("error")) && sessionStorage.getItem(PENDING_KEY) !== null;
}

/**
 * Redeems the code the provider sent back (with the PKCE verifier) for an access token. The
 * answer leaves the address first, for the view the sign-in started from: a code is single-use,
 * and a reload must not try it again.
 */
export async function tokenFromProvider(provider: Provider): Promise<{ token: string }> {
  const pending = JSON.parse(sessionStorage.getItem(PENDING_KEY) ?? "null") as Pending | null;
  sessionStorage.removeItem(PENDING_KEY);
  const answer = new URL(window.location.href);
  window.history.replaceState(null, "", `${answer.pathname}${pending?.hash ?? ""}`);
  if (pending === null) throw new Error("No sign-in was under way; sign in again.");
  const server = await discover(provider);
  const client: oauth.Client = { client_id: provider.client_id };
  const parameters = oauth.validateAuthResponse(server, client, answer, pending.state);
  const response = await oauth.authorizationCodeGrantRequest(
    server, client, oauth.None(), parameters, redirectUri(), pending.verifier, requestOptions(provider));
  const result = await oauth.processAuthorizationCodeResponse(server, client, response, { expectedNonce: pending.nonce });
  return { token: result.access_token };
}

/** A failed sign-in through the provider, in words. */
export function providerRefusal(error: unknown): string {
  if (error instanceof oauth.AuthorizationResponseError) {
    return `The identity provider refused the sign-in: ${error.error_description ?? error.error}.`;
  }
  if (error instanceof oauth.ResponseBodyError) {
    return `The identity provider refused the code: ${error.error_description ?? error.error}.`;
  }
  return `Signing in through the identity provider failed: ${error instanceof Error ? error.message : String(error)}`;
}
