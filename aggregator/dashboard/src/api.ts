// The aggregator's REST API as the dashboard uses it. The token lives in this module's memory
// only: never in a URL, storage or a cookie, so closing or reloading the tab signs out.

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
  granularity: "minute" | "hour" | "day";
  period: Period;
  series: SeriesPoint[];
}
export interface ResourceList { resources: { id: string; name: string }[] }

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

/** GET `path` (with its query) as the signed-in caller. */
export async function get<T>(path: string): Promise<T> {
  let response: Response;
  try {
    response = await fetch(path, {
      headers: { authorization: `Bearer ${token ?? ""}`, accept: "application/json" },
      cache: "no-store",
    });
  } catch {
    throw new ApiFailure(0, "unreachable", "Cannot reach the aggregator. Check that it is running; retrying.");
  }
  const body = await response.json().catch(() => undefined);
  if (!response.ok) {
    const error = body?.error ?? {};
    throw new ApiFailure(response.status, error.code ?? "unknown", error.message ?? response.statusText);
  }
  return body as T;
}

/** The query string of `parameters`, leaving out the absent ones. */
export function query(parameters: Record<string, string | number | undefined>): string {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(parameters)) {
    if (value !== undefined && value !== "") search.set(name, String(value));
  }
  return search.toString();
}
