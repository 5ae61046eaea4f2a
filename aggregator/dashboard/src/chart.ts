// Charts: the series as a uPlot chart (axes in the viewer's time zone, values on hover), and
// the top table's sparklines as a few lines of SVG (uPlot per table row would be ten canvases).
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import type { SeriesPoint } from "./api";

const CHART_HEIGHT_PX = 260;
const SPARKLINE_WIDTH_PX = 96;
const SPARKLINE_HEIGHT_PX = 24;

let chart: uPlot | undefined;

function chartWidth(box: HTMLElement): number {
  return Math.max(280, box.clientWidth - 32);
}

/** Draws `points` (hits and visitors) into `box`, replacing the chart drawn before. */
export function drawChart(box: HTMLElement, points: SeriesPoint[]): void {
  forgetChart();
  const times = points.map((point) => Date.parse(point.start_time) / 1000);
  const data: uPlot.AlignedData = [times, points.map((p) => p.count), points.map((p) => p.uniques)];
  chart = new uPlot({
    width: chartWidth(box),
    height: CHART_HEIGHT_PX,
    series: [
      {},
      { label: "Hits", stroke: "#2f6fde", width: 2, fill: "rgba(47,111,222,0.08)" },
      { label: "Visitors", stroke: "#e0782f", width: 2 },
    ],
    axes: [{}, { size: 60 }],
    scales: { y: { range: (_u, _min, max) => [0, Math.max(1, max)] } },
  }, data, box);
  box.setAttribute("data-points", String(times.length));
}

export function forgetChart(): void {
  chart?.destroy();
  chart = undefined;
}

window.addEventListener("resize", () => {
  const box = chart?.root.parentElement;
  if (chart && box) chart.setSize({ width: chartWidth(box), height: CHART_HEIGHT_PX });
});

/** A small line of the hits of `points`, labelled for screen readers with its range. */
export function sparkline(points: SeriesPoint[]): SVGSVGElement {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${SPARKLINE_WIDTH_PX} ${SPARKLINE_HEIGHT_PX}`);
  svg.setAttribute("width", String(SPARKLINE_WIDTH_PX));
  svg.setAttribute("height", String(SPARKLINE_HEIGHT_PX));
  svg.setAttribute("class", "sparkline");
  const counts = points.map((point) => point.count);
  const most = Math.max(1, ...counts);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `hits per ${points.length > 1 ? "bucket" : "period"}: from 0 to ${most}`);
  const step = counts.length > 1 ? SPARKLINE_WIDTH_PX / (counts.length - 1) : 0;
  const line = counts
    .map((count, index) => `${(index * step).toFixed(1)},${(SPARKLINE_HEIGHT_PX - 2 - (count / most) * (SPARKLINE_HEIGHT_PX - 4)).toFixed(1)}`)
    .join(" ");
  const polyline = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  polyline.setAttribute("points", line);
  polyline.setAttribute("class", "spark");
  svg.append(polyline);
  return svg;
}
