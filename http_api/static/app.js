/* fleetgate's dashboard (docs/dashboard.md): signing in, which view the fragment asks for, and
   refreshing it by itself; it says when the data is stale or the API out of reach. The page is
   served with a Content-Security-Policy that allows no inline script or style: there are no
   handler or style attributes, everything is wired up here. */

import { acknowledging } from "./alerts.js";
import {
  ApiError,
  REFRESH_DEFAULT_S,
  REFRESH_MIN_S,
  forgetToken,
  keepToken,
  loadCapabilities,
  takeTokenFromFragment,
  token,
} from "./api.js";
import { $, clock, setText } from "./dom.js";
import { fleetPages, loadFleet } from "./fleet.js";
import { loadVehicle } from "./vehicle.js";

const REFUSED =
  "The API refused this token: it is unknown or has been revoked. " +
  "Enter a valid token (scope read).";

// generation: bumped by each refresh, so that one overtaken by a newer (navigation) draws nothing.
const state = {
  timer: null,
  generation: 0,
  lastSuccess: null,
  delayS: REFRESH_DEFAULT_S,
  failing: null,
  capabilities: null, // what the API offers, read once a sign-in (loadCapabilities)
};

/** The vehicle the fragment names (#vehicle=ID), or null: the fleet. */
function routedVehicle() {
  return new URLSearchParams(location.hash.slice(1)).get("vehicle");
}

async function refresh() {
  clearTimeout(state.timer);
  if (!token()) return;
  const mine = ++state.generation;
  const vehicle = routedVehicle();
  $("fleet-view").hidden = vehicle !== null;
  $("vehicle-view").hidden = vehicle === null;
  let delayS = state.delayS;
  try {
    if (state.capabilities === null) {
      state.capabilities = await loadCapabilities();
      Object.assign(acknowledging, { path: state.capabilities.acknowledgePath, allowed: true });
    }
    const { openState } = state.capabilities;
    const loaded = vehicle === null ? await loadFleet(openState) : await loadVehicle(vehicle);
    if (mine !== state.generation) return;
    loaded.draw();
    delayS = loaded.delayS;
    state.lastSuccess = Date.now();
    state.failing = null;
    hideNotice();
  } catch (error) {
    if (mine !== state.generation) return;
    if (!(error instanceof ApiError)) {
      showNotice("The page failed: " + error.message);
      throw error; // a bug: the console has it
    }
    if (error.status === 401) {
      signOut(REFUSED);
      return;
    }
    state.failing = error;
    if (error.retryAfterS !== null) delayS = Math.max(REFRESH_MIN_S, error.retryAfterS);
    showNotice(failureText(error, delayS));
  } finally {
    if (mine === state.generation && token()) {
      state.delayS = delayS;
      state.timer = setTimeout(refresh, delayS * 1000);
      drawFreshness();
    }
  }
}

function failureText(error, delayS) {
  const since = state.lastSuccess;
  const shown = since === null ? "" : ` Showing the data of ${clock.format(since)}.`;
  const retry = ` Trying again in ${delayS} s.`;
  if (error.status === 0) return `The API is unreachable: ${error.message}.${shown}${retry}`;
  if (error.status === 403) return `This token may not read this: ${error.message}${shown}`;
  if (error.status === 429) return `The API asks to slow down: ${error.message}${shown}${retry}`;
  return `The API answered ${error.status}: ${error.message}.${shown}${retry}`;
}

function drawFreshness() {
  const target = $("freshness");
  if (state.lastSuccess === null) {
    target.textContent = state.failing ? "no data yet" : "loading\u2026";
    target.classList.toggle("stale", state.failing !== null);
    return;
  }
  const ageS = Math.round((Date.now() - state.lastSuccess) / 1000);
  // Stale: the last refresh failed, or one that should have come has not.
  const stale = state.failing !== null || ageS > state.delayS + REFRESH_MIN_S;
  const updated = `updated ${clock.format(state.lastSuccess)} (${ageS} s ago)`;
  target.textContent = stale ? "stale: " + updated : updated;
  target.classList.toggle("stale", stale);
  target.dataset.refreshS = String(state.delayS);
}

function showNotice(text) {
  $("notice").textContent = text;
  $("notice").hidden = false;
}

function hideNotice() {
  $("notice").hidden = true;
  $("notice").textContent = "";
}

function showApp() {
  $("login").hidden = true;
  $("refresh").hidden = false;
  $("sign-out").hidden = false;
}

function signOut(message) {
  forgetToken();
  clearTimeout(state.timer);
  state.generation += 1;
  Object.assign(state, {
    lastSuccess: null,
    failing: null,
    delayS: REFRESH_DEFAULT_S,
    capabilities: null,
  });
  hideNotice();
  for (const id of ["fleet-view", "vehicle-view", "refresh", "sign-out"]) $(id).hidden = true;
  $("freshness").textContent = "";
  $("freshness").classList.remove("stale");
  setText("login-message", message);
  $("login").hidden = false;
  $("token-input").focus();
}

function signIn() {
  const given = $("token-input").value.trim();
  if (!given) {
    setText("login-message", "Enter a token.");
    return;
  }
  $("token-input").value = "";
  setText("login-message", "");
  keepToken(given);
  showApp();
  refresh();
}

function wireFleetTable() {
  $("fleet-below").addEventListener("change", (event) => {
    Object.assign(fleetPages, { below: event.target.value, cursors: [], cursor: null });
    refresh();
  });
  $("page-next").addEventListener("click", () => {
    if (fleetPages.next === null) return;
    fleetPages.cursors.push(fleetPages.cursor);
    fleetPages.cursor = fleetPages.next;
    refresh();
  });
  $("page-previous").addEventListener("click", () => {
    if (fleetPages.cursors.length === 0) return;
    fleetPages.cursor = fleetPages.cursors.pop();
    refresh();
  });
  // A click anywhere on a row opens its vehicle (the link in it does so by itself).
  $("fleet-table").addEventListener("click", (event) => {
    const row = event.target.closest("tr[data-vehicle]");
    if (row && !event.target.closest("a")) {
      location.hash = "vehicle=" + encodeURIComponent(row.dataset.vehicle);
    }
  });
}

function start() {
  takeTokenFromFragment();
  $("sign-in").addEventListener("click", signIn);
  $("token-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter") signIn();
  });
  $("sign-out").addEventListener("click", () => signOut("Signed out."));
  $("refresh").addEventListener("click", () => refresh());
  wireFleetTable();
  Object.assign(acknowledging, { done: refresh, failed: showNotice });
  window.addEventListener("hashchange", () => {
    takeTokenFromFragment(); // a #token= pasted into this tab's address bar
    if (token()) {
      showApp();
      refresh();
      window.scrollTo(0, 0);
    }
  });
  setInterval(() => {
    if (token()) drawFreshness();
  }, 1000);
  if (token()) {
    showApp();
    refresh();
  } else {
    signOut("");
  }
}

start();
