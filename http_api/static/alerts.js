/* Rows of alerts, in the fleet's list and a vehicle's, and acknowledging them where the API
   offers it. */

import { ApiError, api } from "./api.js";
import { el, when } from "./dom.js";

// Set by app.js from the API's document (loadCapabilities): the path template of acknowledging
// an alert, null while the API has no such endpoint: then no control is drawn at all. `allowed`
// turns false after a 403 (a read token): the buttons go, and a notice says why.
export const acknowledging = {
  path: null,
  allowed: true,
  done: () => {},
  failed: (_text) => {},
};

/** A table row of `alert`, made of `cells`, and its acknowledgement where there can be one: a
    cell of class "ack" (on a phone, style.css puts it on a line of its own). */
export function alertRow(alert, cells) {
  const open = alert.state !== "cleared";
  const row = el("tr", open ? "alert-open" : "alert-cleared", ...cells);
  row.dataset.alert = alert.alertId;
  if (alert.acknowledgedAt) {
    row.append(el("td", "ack acknowledged", "acknowledged " + when(alert.acknowledgedAt)));
  } else if (open && acknowledging.path !== null && acknowledging.allowed) {
    row.append(el("td", "ack", acknowledgeButton(alert)));
  }
  return row;
}

function acknowledgeButton(alert) {
  const button = el("button", "acknowledge", "Acknowledge");
  button.type = "button";
  button.addEventListener("click", async () => {
    button.disabled = true;
    const path = acknowledging.path.replace("{alertId}", encodeURIComponent(alert.alertId));
    try {
      await api(path, null, "POST");
      acknowledging.done();
    } catch (error) {
      button.disabled = false;
      if (error instanceof ApiError && error.status === 403) {
        acknowledging.allowed = false;
        // Redrawn without the buttons, then the notice: a refresh that succeeds hides notices,
        // so one shown before it would be gone at once. It stays until the next refresh.
        await acknowledging.done();
        acknowledging.failed("Acknowledging an alert needs a token of scope write.");
      } else {
        acknowledging.failed("Could not acknowledge the alert: " + error.message);
      }
    }
  });
  return button;
}
