/* The fleet view: tiles of the fleet now, the efficiency table (worst first, by pages), and the
   active alerts. */

import { alertRow } from "./alerts.js";
import { api, refreshDelayS } from "./api.js";
import { $, badge, el, kwh, percent, setText, vehicleLink, when } from "./dom.js";

const ALERTS_FETCHED = 1000; // active alerts counted by the tile (the API's largest page)
const ALERTS_LISTED = 25;

// The table's page: below "" is the API's default (EFFICIENCY_GOOD); cursors, those of the pages
// before this one.
export const fleetPages = { below: "", cursors: [], cursor: null, next: null };

/** Fetch the fleet view's data; returns when to refresh and how to draw it. `openState`: what
    the API calls an alert not cleared yet. */
export async function loadFleet(openState) {
  const [overview, fleet, alerts] = await Promise.all([
    api("/v1/status/overview"),
    // Without parameters (the first page, default threshold) the API serves its cached view.
    api("/v1/analytics/fleet", { below: fleetPages.below, cursor: fleetPages.cursor }),
    api("/v1/alerts", { state: openState, limit: ALERTS_FETCHED }),
  ]);
  return {
    delayS: refreshDelayS(fleet.headers),
    draw: () => {
      drawTiles(overview.body, fleet.body, alerts.body);
      drawFleetTable(fleet.body);
      drawActiveAlerts(alerts.body);
    },
  };
}

function drawTiles(overview, fleet, alerts) {
  const { meters, vehicles } = overview;
  setText("tile-online", String(meters.online + vehicles.online));
  setText("tile-online-detail", `${vehicles.online} vehicles, ${meters.online} meters`);
  setText("tile-offline", String(meters.offline + vehicles.offline));
  setText("tile-offline-detail", `${vehicles.offline} vehicles, ${meters.offline} meters`);
  setText("tile-charging", String(vehicles.charging));
  setText(
    "tile-charging-detail",
    `of ${vehicles.online} online; ${vehicles.batteryTempWarning} battery too warm`,
  );
  $("tile-charging-detail").classList.toggle("warn", vehicles.batteryTempWarning > 0);
  setText("tile-power", overview.fleetPowerKw.toFixed(3) + " kW");
  const totals = fleet.totals;
  setText("tile-efficiency", totals.efficiency === null ? "no data" : percent(totals.efficiency));
  setText(
    "tile-efficiency-detail",
    `DC ${kwh(totals.matchedDc)} of AC ${kwh(totals.matchedAc)} kWh, ${totals.vehicles} vehicles`,
  );
  const more = alerts.nextCursor !== null;
  setText("tile-alerts", String(alerts.alerts.length) + (more ? "+" : ""));
  $("tile-alerts").classList.toggle("warn", alerts.alerts.length > 0);
  const byRule = new Map();
  for (const alert of alerts.alerts) byRule.set(alert.rule, (byRule.get(alert.rule) || 0) + 1);
  const rules = [...byRule].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
  $("tile-alert-rules").replaceChildren(
    ...rules.map(([rule, count]) => {
      const item = el("li", "", el("span", "rule", rule), " ", el("b", "", String(count)));
      item.dataset.rule = rule;
      return item;
    }),
  );
}

function drawFleetTable(fleet) {
  const rows = fleet.vehicles.map((vehicle) => {
    const row = el(
      "tr",
      "status-" + vehicle.efficiencyStatus,
      el("td", "", vehicleLink(vehicle.vehicleId)),
      el("td", "num", percent(vehicle.efficiency)),
      el("td", "", badge(vehicle.efficiencyStatus)),
      el("td", "num wide", kwh(vehicle.totalAc)), // "wide": not on a phone
      el("td", "num wide", kwh(vehicle.dcWhileLinked)),
      el("td", "num", percent(vehicle.coverage.ac)),
      el("td", "num wide", percent(vehicle.coverage.dc)),
    );
    row.dataset.vehicle = vehicle.vehicleId;
    return row;
  });
  $("fleet-table").tBodies[0].replaceChildren(...rows);
  $("fleet-empty").hidden = rows.length > 0;
  setText(
    "fleet-empty",
    fleetPages.below === ""
      ? `No vehicle below ${percent(fleet.below)}: choose every vehicle with data to list them all.`
      : "No vehicle has efficiency figures over the last 24 h.",
  );
  const statuses = Object.entries(fleet.totals.byStatus);
  $("fleet-summary").replaceChildren(
    `${fleet.totals.vehicles} vehicles`,
    ...statuses.flatMap(([status, count]) => [" ", badge(status), " " + count]),
    `. Figures computed at ${when(fleet.computedAt)}` +
      (fleetPages.below === "" ? `, listing those below ${percent(fleet.below)}.` : "."),
  );
  fleetPages.next = fleet.nextCursor;
  $("page-next").disabled = fleet.nextCursor === null;
  $("page-previous").disabled = fleetPages.cursors.length === 0;
  setText("page-number", "page " + (fleetPages.cursors.length + 1));
}

function drawActiveAlerts(alerts) {
  const listed = alerts.alerts.slice(0, ALERTS_LISTED);
  $("alert-table").tBodies[0].replaceChildren(
    ...listed.map((alert) =>
      alertRow(alert, [
        el("td", "", when(alert.raisedAt)),
        el("td", "", alert.rule),
        el("td", "", alert.deviceKind === "vehicle" ? vehicleLink(alert.deviceId) : alert.deviceId),
        el("td", "wide", alert.message),
      ]),
    ),
  );
  $("alerts-empty").hidden = listed.length > 0;
  const hidden = alerts.alerts.length - listed.length;
  $("alerts-more").hidden = hidden === 0 && alerts.nextCursor === null;
  setText("alerts-more", `and ${hidden}${alerts.nextCursor === null ? "" : "+"} more.`);
}
