// A typed client for the hitcount aggregator's REST API. Works wherever `fetch` does (Node 20+,
// browsers). Every non-2xx answer becomes a HitcountError carrying the API's error code.

export type Scope = "ingest" | "read" | "admin";
export type Granularity = "minute" | "hour" | "day";

export interface Resource {
  resource_id: string;
  name: string;
  retention_days: number | null;
  created_at: string;
}

export interface ResourcePage {
  resources: Resource[];
  /** Pass as `after` for the next page; absent on the last one. */
  next_after?: string | null;
}

export interface Hit {
  resource_id: string;
  /** RFC 3339 or Unix milliseconds; the server's clock if absent. */
  timestamp?: string | number;
  /** Hashed on arrival, never stored. */
  visitor_id?: string;
}

export interface SeriesPoint {
  start_time: string;
  count: number;
  uniques: number;
}

export interface Counts {
  resource_id: string;
  count: number;
  uniques: number;
  granularity: Granularity;
  period: { start_time: string; end_time: string };
  series: SeriesPoint[];
  /** Present only while the aggregator's database is unavailable: the counts are the hot tier's
   * (Redis) alone, the last hour; older buckets count 0. */
  stale?: true;
}

export type CountsQuery =
  | { window: string; granularity?: Granularity }
  | { start_time: string | number; end_time: string | number; granularity?: Granularity };

/** A period for the reads across resources: as `CountsQuery`, or neither (the last 24 hours). */
export type PeriodQuery = Partial<{ window: string; start_time: string | number; end_time: string | number }>;

export interface ResourceTotal {
  resource_id: string;
  count: number;
  uniques: number;
  /** With `series: true`: one point per `granularity` bucket, as `hits.count` answers it. */
  series?: SeriesPoint[];
}

export interface Top {
  period: { start_time: string; end_time: string };
  granularity: Granularity;
  /** Best first; only resources with hits. */
  resources: ResourceTotal[];
  /** Every resource the prefix selects; `uniques` is their visitors' union, not a sum. */
  total: { count: number; uniques: number };
  /** As in `Counts`: present only while the aggregator's database is unavailable. */
  stale?: true;
}

export interface Series {
  /** How many resources the series covers. */
  resources: number;
  count: number;
  uniques: number;
  granularity: Granularity;
  period: { start_time: string; end_time: string };
  series: SeriesPoint[];
  /** As in `Counts`: present only while the aggregator's database is unavailable. */
  stale?: true;
}

export interface Token {
  id: string;
  name: string;
  scopes: Scope[];
  created_at: string;
}

export interface CreatedToken extends Token {
  /** Shown once. */
  token: string;
}

/** An answer other than 2xx, with the API's machine-readable code ("not_found", "invalid_query"...). */
export class HitcountError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly retryAfterSeconds?: number,
  ) {
    super(message);
    this.name = "HitcountError";
  }
}

export interface ClientOptions {
  /** The aggregator's base URL, e.g. "https://hitcount.example.com". */
  baseUrl: string;
  /** A bearer token with the scopes the calls need. */
  token: string;
  fetch?: typeof fetch;
}

/** A request body sent as written, not as JSON. */
class RawBody {
  constructor(readonly text: string, readonly contentType: string) {}
}

/** What `POST /import` did. */
export interface ImportReport {
  /** `duplicate` when this very file was imported before: nothing changed. */
  status: "imported" | "duplicate";
  resources_created: number;
  cells: number;
  hits: number;
  expired_cells: number;
  skipped_rows: number;
}

export class HitcountClient {
  private readonly baseUrl: string;
  private readonly token: string;
  private readonly fetchImpl: typeof fetch;

  constructor(options: ClientOptions) {
    this.baseUrl = options.baseUrl.replace(/\/$/, "");
    this.token = options.token;
    // Bound: a browser's `fetch` called as a method of another object throws "Illegal invocation".
    this.fetchImpl = options.fetch ?? fetch.bind(globalThis);
  }

  /** A body is sent as JSON, or as written when it is a `RawBody`. */
  private async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const raw = body instanceof RawBody ? body : undefined;
    const response = await this.fetchImpl(this.baseUrl + path, {
      method,
      headers: {
        authorization: `Bearer ${this.token}`,
        ...(body === undefined ? {} : { "content-type": raw?.contentType ?? "application/json" }),
      },
      body: body === undefined ? undefined : raw ? raw.text : JSON.stringify(body),
    });
    const text = await response.text();
    const value = text ? JSON.parse(text) : undefined;
    if (!response.ok) {
      const retry = response.headers.get("retry-after");
      throw new HitcountError(
        response.status,
        value?.error?.code ?? "unknown",
        value?.error?.message ?? response.statusText,
        retry ? Number(retry) : undefined,
      );
    }
    return value as T;
  }

  private get<T>(path: string, query: object): Promise<T> {
    const parameters = new URLSearchParams();
    for (const [key, value] of Object.entries(query)) {
      if (value !== undefined && value !== "") parameters.set(key, String(value));
    }
    const suffix = parameters.toString() ? `?${parameters}` : "";
    return this.call<T>("GET", `${path}${suffix}`);
  }

  readonly resources = {
    create: (resource: { resource_id?: string; name: string; retention_days?: number }) =>
      this.call<Resource>("POST", "/resources", resource),
    list: (page: { limit?: number; after?: string } = {}) => this.get<ResourcePage>("/resources", page),
    get: (id: string) => this.call<Resource>("GET", `/resources/${encodeURIComponent(id)}`),
    delete: (id: string) => this.call<void>("DELETE", `/resources/${encodeURIComponent(id)}`),
  };

  readonly hits = {
    /** Sends one hit or up to 1000; resolves with how many were accepted. */
    send: async (hits: Hit | Hit[]) => {
      const body = Array.isArray(hits) ? { hits } : hits;
      return (await this.call<{ accepted: number }>("POST", "/hits", body)).accepted;
    },
    count: (resourceId: string, query: CountsQuery) =>
      this.get<Counts>(`/hits/${encodeURIComponent(resourceId)}`, query),
  };

  /** Reads across resources (read scope). */
  readonly stats = {
    /** The top resources under `prefix` (all by default), and their total. */
    top: (
      query: PeriodQuery & {
        limit?: number;
        prefix?: string;
        order?: "count" | "uniques";
        granularity?: Granularity;
        series?: boolean;
      } = {},
    ) =>
      this.get<Top>("/stats/top", query),
    /** One series over the resources under `prefix` and/or listed in `resource_ids`. */
    series: (query: PeriodQuery & { granularity?: Granularity; prefix?: string; resource_ids?: string[] } = {}) =>
      this.get<Series>("/stats/series", { ...query, resource_ids: query.resource_ids?.join(",") }),
  };

  /**
   * Imports a file (admin scope), once: the lossless export (`ndjson`, what
   * `GET /export?format=ndjson` wrote) or GoatCounter's CSV export (`goatcounter`).
   */
  import(file: string, format: "ndjson" | "goatcounter" = "ndjson"): Promise<ImportReport> {
    const contentType = format === "ndjson" ? "application/x-ndjson" : "text/csv";
    return this.call<ImportReport>("POST", `/import?format=${format}`, new RawBody(file, contentType));
  }

  readonly tokens = {
    create: (name: string, scopes: Scope[]) => this.call<CreatedToken>("POST", "/tokens", { name, scopes }),
    list: async () => (await this.call<{ tokens: Token[] }>("GET", "/tokens")).tokens,
    delete: (id: string) => this.call<void>("DELETE", `/tokens/${encodeURIComponent(id)}`),
  };
}
