// src/client.ts
var HitcountError = class extends Error {
  constructor(status, code, message, retryAfterSeconds) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfterSeconds = retryAfterSeconds;
    this.name = "HitcountError";
  }
};
var RawBody = class {
  constructor(text, contentType) {
    this.text = text;
    this.contentType = contentType;
  }
};
var HitcountClient = class {
  constructor(options) {
    this.resources = {
      create: (resource) => this.call("POST", "/resources", resource),
      list: (page = {}) => this.get("/resources", page),
      get: (id) => this.call("GET", `/resources/${encodeURIComponent(id)}`),
      delete: (id) => this.call("DELETE", `/resources/${encodeURIComponent(id)}`)
    };
    this.hits = {
      /** Sends one hit or up to 1000; resolves with how many were accepted. */
      send: async (hits) => {
        const body = Array.isArray(hits) ? { hits } : hits;
        return (await this.call("POST", "/hits", body)).accepted;
      },
      count: (resourceId, query) => this.get(`/hits/${encodeURIComponent(resourceId)}`, query)
    };
    /** Reads across resources (read scope). */
    this.stats = {
      /** The top resources under `prefix` (all by default), and their total. */
      top: (query = {}) => this.get("/stats/top", query),
      /** One series over the resources under `prefix` and/or listed in `resource_ids`. */
      series: (query = {}) => this.get("/stats/series", { ...query, resource_ids: query.resource_ids?.join(",") })
    };
    this.tokens = {
      create: (name, scopes) => this.call("POST", "/tokens", { name, scopes }),
      list: async () => (await this.call("GET", "/tokens")).tokens,
      delete: (id) => this.call("DELETE", `/tokens/${encodeURIComponent(id)}`)
    };
    this.baseUrl = options.baseUrl.replace(/\/$/, "");
    this.token = options.token;
    this.fetchImpl = options.fetch ?? fetch.bind(globalThis);
  }
  /** A body is sent as JSON, or as written when it is a `RawBody`. */
  async call(method, path, body) {
    const raw = body instanceof RawBody ? body : void 0;
    const response = await this.fetchImpl(this.baseUrl + path, {
      method,
      headers: {
        authorization: `Bearer ${this.token}`,
        ...body === void 0 ? {} : { "content-type": raw?.contentType ?? "application/json" }
      },
      body: body === void 0 ? void 0 : raw ? raw.text : JSON.stringify(body)
    });
    const text = await response.text();
    const value = text ? JSON.parse(text) : void 0;
    if (!response.ok) {
      const retry = response.headers.get("retry-after");
      throw new HitcountError(
        response.status,
        value?.error?.code ?? "unknown",
        value?.error?.message ?? response.statusText,
        retry ? Number(retry) : void 0
      );
    }
    return value;
  }
  get(path, query) {
    const parameters = new URLSearchParams();
    for (const [key, value] of Object.entries(query)) {
      if (value !== void 0 && value !== "") parameters.set(key, String(value));
    }
    const suffix = parameters.toString() ? `?${parameters}` : "";
    return this.call("GET", `${path}${suffix}`);
  }
  /**
   * Imports a file (admin scope), once: the lossless export (`ndjson`, what
   * `GET /export?format=ndjson` wrote) or GoatCounter's CSV export (`goatcounter`).
   */
  import(file, format = "ndjson") {
    const contentType = format === "ndjson" ? "application/x-ndjson" : "text/csv";
    return this.call("POST", `/import?format=${format}`, new RawBody(file, contentType));
  }
};
export {
  HitcountClient,
  HitcountError
};
