// The aggregator's REST API as the dashboard uses it: the typed client of `sdk-js`, bundled in.
// The token lives in this module's memory only: never in a URL, storage or a cookie, so closing
// or reloading the tab signs out.
import { HitcountClient, HitcountError } from "../../../sdk-js/src/client";

export type { Counts, CountsQuery, Granularity, Resource, SeriesPoint, Series, Top, Token } from "../../../sdk-js/src/client";
export { HitcountError };

let client: HitcountClient | undefined;

export function signIn(token: string): void {
  client = new HitcountClient({ baseUrl: window.location.origin, token });
}

export function signOut(): void {
  client = undefined;
}

export function signedIn(): boolean {
  return client !== undefined;
}

/**
 * Runs `call` with the signed-in client. A request that got no answer becomes a
 * `HitcountError` of status 0 (`unreachable`), so every failure is one type.
 */
export async function api<T>(call: (client: HitcountClient) => Promise<T>): Promise<T> {
  if (client === undefined) throw new HitcountError(401, "signed_out", "Sign in first.");
  try {
    return await call(client);
  } catch (error) {
    if (error instanceof HitcountError) throw error;
    throw new HitcountError(0, "unreachable", "Cannot reach the aggregator. Check that it is running; retrying.");
  }
}
