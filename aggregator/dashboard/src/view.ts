// What every view needs of the page: a place to draw, the live refresh, and what a failure does.
import { HitcountError } from "./api";
import { forgetChart } from "./chart";
import { clearError, say, shownNotice } from "./dom";
import { RANGES } from "./range";

/** How often a live view refreshes itself (the read-after-write bound is about a second). */
export const LIVE_REFRESH_MS = 5_000;

/** What a view says above numbers the API marked `stale`. */
const STALE_MESSAGE = "The aggregator's database is unavailable: these numbers are the last hour's from the hot tier (Redis) alone, and older buckets show 0 until it is back.";

/** What a view says to a 503: the store is down or busy, and the hot tier could not answer. */
const UNAVAILABLE_MESSAGE = "The aggregator's store is unavailable or busy; retry shortly. The last hour (live) still shows what its hot tier (Redis) holds, if it has one.";

export class View {
  private timer: number | undefined;

  constructor(private readonly main: HTMLElement, private readonly onSessionEnded: (message: string) => void) {}

  /** Replaces the page's content (and stops the previous view's refresh). */
  show(...children: Node[]): void {
    this.stopLive();
    forgetChart();
    this.main.replaceChildren(...children);
  }

  /** Whether `element` is still on the page (the view that drew it is still shown). */
  current(element: Node): boolean {
    return this.main.contains(element);
  }

  /**
   * After a refresh of the view `form` belongs to: when its range is live, marks it so and
   * schedules the next refresh. Nothing when a failure signed out or the user navigated away.
   */
  afterRefresh(form: HTMLFormElement, refresh: () => void): void {
    const mark = document.getElementById("live");
    if (mark === null || !this.current(form)) return;
    const isLive = RANGES[form.range.value]?.live === true;
    mark.hidden = !isLive;
    if (!isLive) return;
    mark.textContent = `Live · updated ${new Date().toLocaleTimeString()}`;
    this.stopLive();
    this.timer = window.setTimeout(refresh, LIVE_REFRESH_MS);
  }

  /** After a load: its numbers came from the hot tier alone (the API's `stale`), or not. */
  loaded(stale: boolean | undefined): void {
    // A confirmation ("Deleted home.") stays, as `clearError` keeps it.
    if (stale === true && shownNotice() !== "info") say(STALE_MESSAGE, "warning");
    else clearError();
  }

  stopLive(): void {
    window.clearTimeout(this.timer);
    this.timer = undefined;
  }

  /**
   * A 401 ends the session (the token was revoked); anything else is said and kept. A 503
   * `stale_read_too_wide` is said as the server words it (narrow the read with a prefix): the
   * last hour does not answer it either.
   */
  failed(error: unknown): void {
    if (error instanceof HitcountError && error.status === 401) {
      this.onSessionEnded("Your session ended: the token was revoked. Sign in again.");
    } else if (error instanceof HitcountError && error.code === "unavailable") {
      say(UNAVAILABLE_MESSAGE);
    } else {
      say(error instanceof Error ? error.message : String(error));
    }
  }
}
