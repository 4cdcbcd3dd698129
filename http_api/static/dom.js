/* Building the page's DOM, and showing the API's numbers and times. Text from the API only ever
   goes in as text nodes (never as markup), so an id or a message cannot become HTML. */

export const NOTHING = "\u2013"; // shown for a figure the API does not have (null)
export const STATUS_LABELS = {
  excellent: "excellent",
  good: "good",
  warning: "warning",
  critical: "critical",
  suspect: "suspect",
  noData: "no data",
};
const SVG_NS = "http://www.w3.org/2000/svg";

export const $ = (id) => document.getElementById(id);

/** An element of class `className` holding `children`: strings become text nodes. */
export function el(tag, className, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

/** An SVG element with `attrs` (numbers and class names computed here) and a text. */
export function svgEl(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

export function setText(id, text) {
  $(id).textContent = text;
}

export function vehicleLink(vehicleId) {
  const link = el("a", "", vehicleId);
  link.href = "#vehicle=" + encodeURIComponent(vehicleId);
  return link;
}

/** The API's efficiencyStatus, coloured by style.css. */
export function badge(status) {
  return el("span", "badge status-" + status, STATUS_LABELS[status] || status);
}

/* Numbers as the API rounds them: kWh and kW to 3 decimals, ratios to 4 (2 as a percentage). */
export const kwh = (value) => (value === null ? NOTHING : value.toFixed(3));
export const percent = (ratio) => (ratio === null ? NOTHING : (ratio * 100).toFixed(2) + " %");

export const clock = new Intl.DateTimeFormat(undefined, {
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
});
export const hourOnly = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
export const hourTick = new Intl.DateTimeFormat(undefined, { hour: "numeric" });
const dateTime = new Intl.DateTimeFormat(undefined, {
  month: "short",
  day: "numeric",
  hour: "2-digit",
  minute: "2-digit",
});

/** An RFC 3339 time of the API in the browser's zone: the clock time if recent, else the date. */
export function when(iso) {
  if (iso === null) return NOTHING;
  const at = new Date(iso);
  return Date.now() - at.getTime() < 20 * 3600 * 1000 ? clock.format(at) : dateTime.format(at);
}
