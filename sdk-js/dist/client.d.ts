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
    period: {
        start_time: string;
        end_time: string;
    };
    series: SeriesPoint[];
    /** Present only while the aggregator's database is unavailable: the counts are the hot tier's
     * (Redis) alone, the last hour; older buckets count 0. */
    stale?: true;
}
export type CountsQuery = {
    window: string;
    granularity?: Granularity;
} | {
    start_time: string | number;
    end_time: string | number;
    granularity?: Granularity;
};
/** A period for the reads across resources: as `CountsQuery`, or neither (the last 24 hours). */
export type PeriodQuery = Partial<{
    window: string;
    start_time: string | number;
    end_time: string | number;
}>;
export interface ResourceTotal {
    resource_id: string;
    count: number;
    uniques: number;
    /** With `series: true`: one point per `granularity` bucket, as `hits.count` answers it. */
    series?: SeriesPoint[];
}
export interface Top {
    period: {
        start_time: string;
        end_time: string;
    };
    granularity: Granularity;
    /** Best first; only resources with hits. */
    resources: ResourceTotal[];
    /** Every resource the prefix selects; `uniques` is their visitors' union, not a sum. */
    total: {
        count: number;
        uniques: number;
    };
    /** As in `Counts`: present only while the aggregator's database is unavailable. */
    stale?: true;
}
export interface Series {
    /** How many resources the series covers. */
    resources: number;
    count: number;
    uniques: number;
    granularity: Granularity;
    period: {
        start_time: string;
        end_time: string;
    };
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
export declare class HitcountError extends Error {
    readonly status: number;
    readonly code: string;
    readonly retryAfterSeconds?: number | undefined;
    constructor(status: number, code: string, message: string, retryAfterSeconds?: number | undefined);
}
export interface ClientOptions {
    /** The aggregator's base URL, e.g. "https://hitcount.example.com". */
    baseUrl: string;
    /** A bearer token with the scopes the calls need. */
    token: string;
    fetch?: typeof fetch;
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
export declare class HitcountClient {
    private readonly baseUrl;
    private readonly token;
    private readonly fetchImpl;
    constructor(options: ClientOptions);
    /** A body is sent as JSON, or as written when it is a `RawBody`. */
    private call;
    private get;
    readonly resources: {
        create: (resource: {
            resource_id?: string;
            name: string;
            retention_days?: number;
        }) => Promise<Resource>;
        list: (page?: {
            limit?: number;
            after?: string;
        }) => Promise<ResourcePage>;
        get: (id: string) => Promise<Resource>;
        delete: (id: string) => Promise<void>;
    };
    readonly hits: {
        /** Sends one hit or up to 1000; resolves with how many were accepted. */
        send: (hits: Hit | Hit[]) => Promise<number>;
        count: (resourceId: string, query: CountsQuery) => Promise<Counts>;
    };
    /** Reads across resources (read scope). */
    readonly stats: {
        /** The top resources under `prefix` (all by default), and their total. */
        top: (query?: PeriodQuery & {
            limit?: number;
            prefix?: string;
            order?: "count" | "uniques";
            granularity?: Granularity;
            series?: boolean;
        }) => Promise<Top>;
        /** One series over the resources under `prefix` and/or listed in `resource_ids`. */
        series: (query?: PeriodQuery & {
            granularity?: Granularity;
            prefix?: string;
            resource_ids?: string[];
        }) => Promise<Series>;
    };
    /**
     * Imports a file (admin scope), once: the lossless export (`ndjson`, what
     * `GET /export?format=ndjson` wrote) or GoatCounter's CSV export (`goatcounter`).
     */
    import(file: string, format?: "ndjson" | "goatcounter"): Promise<ImportReport>;
    readonly tokens: {
        create: (name: string, scopes: Scope[]) => Promise<CreatedToken>;
        list: () => Promise<Token[]>;
        delete: (id: string) => Promise<void>;
    };
}
