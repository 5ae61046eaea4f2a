// The aggregator's REST API as the dashboard uses it. The token lives in this module's memory
// only: never in a URL, storage or a cookie, so closing or reloading the tab signs out.

export type Granularity = "minute" | "hour" | "day";
export interface Period { start_time: string; end_time: string }
export interface ResourceTotal { resource_id: string; count: number; uniques: number }
export interface TopResponse {
  period: Period;
  resources: ResourceTotal[];
  total: { count: number; uniques: number };
}
export interface SeriesPoint { start_time: string; count: number; uniques: number }
export interface SeriesResponse {
  resources: number;
  count: number;
  uniques: number;
  granularity: Granularity;
  period: Period;
  series: SeriesPoint[];
}
export interface HitsResponse {
  resource_id: string;
  count: number;
  uniques: number;
  granularity: Granularity;
  period: Period;
  series: SeriesPoint[];
}
export interface Resource { resource_id: string; name: string; retention_days: number | null; created_at: string }
export interface ResourceList { resources: Resource[]; next_after?: string | null }
export interface Token { id: string; name: string; scopes: string[]; created_at: string }
export interface TokenList { tokens: Token[] }
export interface TokenCreated extends Token { token: string }

/** An answer other than 2xx, with the API's error code, or `unreachable` when none came. */
export class ApiFailure extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
  }
}

let token: string | undefined;

export function signIn(value: string): void {
  token = value;
}

export function signOut(): void {
  token = undefined;
}

export function signedIn(): boolean {
  return token !== undefined;
}

async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { authorization: `Bearer ${token ?? ""}`, accept: "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  let response: Response;
  try {
    response = await fetch(path, { method, headers, cache: "no-store", body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new ApiFailure(0, "unreachable", "Cannot reach the aggregator. Check that it is running; retrying.");
  }
  const answer = await response.json().catch(() => undefined);
  if (!response.ok) {
    const error = answer?.error ?? {};
    throw new ApiFailure(response.status, error.code ?? "unknown", error.message ?? response.statusText);
  }
  return answer as T;
}

/** GET `path` (with its query) as the signed-in caller. */
export const get = <T>(path: string): Promise<T> => call<T>("GET", path);
export const post = <T>(path: string, body: unknown): Promise<T> => call<T>("POST", path, body);
export const remove = (path: string): Promise<void> => call<void>("DELETE", path);

/** The query string of `parameters`, leaving out the absent ones. */
export function query(parameters: Record<string, string | number | undefined>): string {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(parameters)) {
    if (value !== undefined && value !== "") search.set(name, String(value));
  }
  return search.toString();
}
