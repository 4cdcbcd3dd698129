/* A vehicle's hourly chart, as inline SVG drawn here (no chart library): the AC billed and the
   DC delivered as bars (kWh, left axis), efficiency as a line (right axis) with a point per
   hour coloured by the API's status for that hour. */

import { STATUS_LABELS, el, hourOnly, hourTick, kwh, percent, svgEl } from "./dom.js";

const SIZE = { width: 720, height: 260, left: 52, right: 64, top: 14, bottom: 34 };
const HOUR_LABEL_EVERY = 3;

/** The smallest of 1, 2, 2.5, 5 times a power of ten at or above `value`. */
function niceCeiling(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

function axisLabel(value) {
  return value >= 10 || value === 0 ? String(Math.round(value)) : value.toPrecision(2);
}

/** The trend's hours (GET /v1/analytics/trend) drawn into the element `box`. */
export function drawTrend(box, trend) {
  const hours = trend ? trend.hours : [];
  if (hours.length === 0) {
    box.replaceChildren(el("p", "empty", "No hour to show."));
    return;
  }
  const { width, height, left, right, top, bottom } = SIZE;
  const plotH = height - top - bottom;
  const ratios = hours.map((h) => h.efficiency).filter((e) => e !== null);
  const scale = {
    slot: (width - left - right) / hours.length,
    kwhMax: niceCeiling(Math.max(...hours.map((h) => Math.max(h.totalAc, h.totalDc)))),
    ratioMax: Math.max(1, Math.ceil(Math.max(0, ...ratios) * 10) / 10), // "suspect" is above 1
  };
  scale.x = (i) => left + scale.slot * (i + 0.5);
  scale.yKwh = (v) => top + plotH * (1 - v / scale.kwhMax);
  scale.yRatio = (v) => top + plotH * (1 - v / scale.ratioMax);

  const chart = svgEl("svg", {
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": "AC, DC and efficiency per hour",
    class: "trend",
  });
  drawAxes(chart, scale);
  hours.forEach((hour, i) => drawHour(chart, scale, hour, i));
  drawEfficiency(chart, scale, hours);
  const base = top + plotH;
  chart.append(svgEl("line", { x1: left, x2: width - right, y1: base, y2: base, class: "axis" }));
  box.replaceChildren(chart);
}

function drawAxes(chart, scale) {
  const { width, height, left, right, top, bottom } = SIZE;
  for (const fraction of [0, 0.25, 0.5, 0.75, 1]) {
    const y = top + (height - top - bottom) * (1 - fraction);
    const kwhTick = axisLabel(scale.kwhMax * fraction);
    const ratioTick = Math.round(scale.ratioMax * fraction * 100) + " %";
    chart.append(
      svgEl("line", { x1: left, x2: width - right, y1: y, y2: y, class: "grid" }),
      svgEl("text", { x: left - 6, y: y + 4, class: "tick tick-left" }, kwhTick),
      svgEl("text", { x: width - right + 6, y: y + 4, class: "tick tick-right" }, ratioTick),
    );
  }
}

function drawHour(chart, scale, hour, i) {
  const { height, bottom } = SIZE;
  const at = new Date(hour.hour);
  const barW = Math.max(1, scale.slot * 0.36);
  for (const [value, kind, offset] of [
    [hour.totalAc, "ac", -barW],
    [hour.totalDc, "dc", 0],
  ]) {
    if (value <= 0) continue;
    const y = scale.yKwh(value);
    const bar = svgEl("rect", {
      x: scale.x(i) + offset,
      y,
      width: barW,
      height: height - bottom - y,
      class: "bar bar-" + kind,
    });
    bar.append(
      svgEl("title", {}, `${hourOnly.format(at)}: ${kind.toUpperCase()} ${kwh(value)} kWh`),
    );
    chart.append(bar);
  }
  if (i % HOUR_LABEL_EVERY === 0) {
    const label = { x: scale.x(i), y: height - bottom + 20, class: "tick tick-hour" };
    chart.append(svgEl("text", label, hourTick.format(at)));
  }
}

function drawEfficiency(chart, scale, hours) {
  // A line through the hours that have an efficiency, broken where one has none.
  let run = [];
  const runs = [run];
  hours.forEach((hour, i) => {
    if (hour.efficiency === null) {
      run = [];
      runs.push(run);
    } else {
      run.push(`${scale.x(i).toFixed(1)},${scale.yRatio(hour.efficiency).toFixed(1)}`);
    }
  });
  for (const points of runs.filter((r) => r.length > 1)) {
    chart.append(svgEl("polyline", { points: points.join(" "), class: "efficiency" }));
  }
  hours.forEach((hour, i) => {
    if (hour.efficiency === null) return;
    const point = svgEl("circle", {
      cx: scale.x(i),
      cy: scale.yRatio(hour.efficiency),
      r: 4,
      class: "point status-" + hour.efficiencyStatus,
    });
    const label = STATUS_LABELS[hour.efficiencyStatus];
    const at = hourOnly.format(new Date(hour.hour));
    point.append(svgEl("title", {}, `${at}: ${percent(hour.efficiency)} (${label})`));
    chart.append(point);
  });
}
