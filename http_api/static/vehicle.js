/* A vehicle's view: its live status, the meter linked to its charger, its efficiency over 24 h,
   its hourly chart and its alerts. */

import { alertRow } from "./alerts.js";
import { REFRESH_DEFAULT_S, api, orNotFound } from "./api.js";
import { drawTrend } from "./chart.js";
import { $, NOTHING, badge, el, kwh, percent, setText, when } from "./dom.js";

const VEHICLE_ALERTS = 50;

/** Fetch what the view of `vehicleId` shows; returns when to refresh and how to draw it. */
export async function loadVehicle(vehicleId) {
  const id = encodeURIComponent(vehicleId);
  const [status, links, performance, trend, alerts] = await Promise.all([
    orNotFound(api("/v1/status/vehicle/" + id)),
    orNotFound(api("/v1/links/" + id)),
    orNotFound(api("/v1/analytics/performance/" + id)),
    orNotFound(api("/v1/analytics/trend/" + id)),
    api("/v1/alerts", { deviceId: vehicleId, limit: VEHICLE_ALERTS }),
  ]);
  const meterId = status && status.body.meterId;
  const meter = meterId
    ? await orNotFound(api("/v1/status/meter/" + encodeURIComponent(meterId)))
    : null;
  const body = (answer) => (answer === null ? null : answer.body);
  return {
    delayS: REFRESH_DEFAULT_S,
    draw: () =>
      drawVehicle(vehicleId, {
        status: body(status),
        link: links && body(links).current,
        meter: body(meter),
        performance: body(performance),
        trend: body(trend),
        alerts: alerts.body,
      }),
  };
}

function drawVehicle(vehicleId, data) {
  setText("vehicle-title", vehicleId);
  const known = data.status !== null;
  $("vehicle-missing").hidden = known;
  setText("vehicle-missing", known ? "" : `The API knows no vehicle ${vehicleId}.`);
  $("vehicle-tiles").hidden = !known;
  if (known) {
    drawStatus(data.status);
    drawMeter(data.link, data.meter);
    drawEfficiency(data.performance);
  }
  drawTrend($("trend-chart"), data.trend);
  $("vehicle-alert-table").tBodies[0].replaceChildren(
    ...data.alerts.alerts.map((alert) =>
      alertRow(alert, [
        el("td", "", when(alert.raisedAt)),
        el("td", "", alert.rule),
        el("td", "", alert.state),
        el("td", "wide", alert.message),
      ]),
    ),
  );
  $("vehicle-alerts-empty").hidden = data.alerts.alerts.length > 0;
}

function drawStatus(status) {
  const online = (status.online ? "online" : "offline") + (status.charging ? ", charging" : "");
  setText("vehicle-online", online);
  $("vehicle-online").classList.toggle("muted", !status.online);
  const seen =
    status.takenAt === null ? "no reading yet" : "latest reading " + when(status.takenAt);
  setText("vehicle-seen", seen);
  setText("vehicle-soc", status.soc === null ? NOTHING : `${status.soc} %`);
  const warm = status.batteryTempWarning ? ", too warm" : "";
  setText("vehicle-temp", status.batteryTemp === null ? "" : `${status.batteryTemp} °C${warm}`);
  $("vehicle-temp").classList.toggle("warn", status.batteryTempWarning);
}

function drawMeter(link, meter) {
  if (!link) {
    setText("vehicle-meter", "not linked");
    setText("vehicle-meter-detail", "no meter feeds its charger now");
    return;
  }
  setText("vehicle-meter", link.meterId);
  const parts = ["linked since " + when(link.validFrom)];
  if (meter) {
    parts.push(meter.online ? "online" : "offline");
    if (meter.voltage !== null) parts.push(`${meter.voltage} V`);
  }
  setText("vehicle-meter-detail", parts.join(", "));
}

function drawEfficiency(performance) {
  const target = $("vehicle-efficiency");
  if (performance === null) {
    target.replaceChildren(NOTHING);
    return;
  }
  target.replaceChildren(
    performance.efficiency === null ? "no data" : percent(performance.efficiency),
    " ",
    badge(performance.efficiencyStatus),
  );
  const { coverage } = performance;
  setText(
    "vehicle-efficiency-detail",
    `DC ${kwh(performance.dcWhileLinked)} of AC ${kwh(performance.totalAc)} kWh; coverage ` +
      `AC ${percent(coverage.ac)}, DC ${percent(coverage.dc)}`,
  );
}
