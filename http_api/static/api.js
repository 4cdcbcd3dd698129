/* The public HTTP API, with the token its user gave: from the login field or the URL fragment,
   kept in this tab's sessionStorage only, sent only in the Authorization header. */

const TOKEN_KEY = "fleetgate.token";
const REQUEST_TIMEOUT_MS = 10000; // then the API counts as unreachable
// Refresh by itself when the API's cached fleet view expires (Cache-Control: max-age minus Age),
// never sooner than REFRESH_MIN_S nor later than REFRESH_MAX_S.
export const REFRESH_MIN_S = 10;
const REFRESH_MAX_S = 30;
export const REFRESH_DEFAULT_S = 15; // where the API says nothing of its cache

export const token = () => sessionStorage.getItem(TOKEN_KEY);
export const keepToken = (given) => sessionStorage.setItem(TOKEN_KEY, given);
export const forgetToken = () => sessionStorage.removeItem(TOKEN_KEY);

/** `#token=...` (never sent to the server: a fragment) into sessionStorage, and out of the
    address bar and the history. */
export function takeTokenFromFragment() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const given = fragment.get("token");
  if (given === null) return;
  fragment.delete("token");
  const rest = fragment.toString();
  // Replaces the entry: neither the address bar nor the history keeps the token.
  history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
  if (given.trim()) keepToken(given.trim());
}

export class ApiError extends Error {
  constructor(status, message, retryAfterS) {
    super(message);
    this.status = status; // 0: no answer
    this.retryAfterS = retryAfterS;
  }
}

/** The API's answer to `path` with `query`: its JSON body and headers, or an ApiError. */
export async function api(path, query, method) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== null && value !== undefined && value !== "") url.searchParams.set(name, value);
  }
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
  let response;
  let body = null;
  try {
    response = await fetch(url, {
      method: method || "GET",
      headers: { Authorization: "Bearer " + token(), Accept: "application/json" },
      credentials: "omit",
      cache: "no-store", // the API caches what is costly (the fleet view) and says how long
      signal: controller.signal,
    });
    body = await response.json().catch(() => null);
  } catch (error) {
    const seconds = REQUEST_TIMEOUT_MS / 1000;
    throw new ApiError(0, error.name === "AbortError" ? `no answer in ${seconds} s` : "no answer");
  } finally {
    clearTimeout(timer);
  }
  if (!response.ok) {
    const message = body && body.error ? body.error.message : response.statusText;
    const retryAfter = Number.parseInt(response.headers.get("Retry-After") || "", 10);
    throw new ApiError(response.status, message, Number.isNaN(retryAfter) ? null : retryAfter);
  }
  return { body, headers: response.headers };
}

/** The answer, or null for a 404 (a device the API does not know). */
export async function orNotFound(request) {
  try {
    return await request;
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return null;
    throw error;
  }
}

/** Seconds until the answer's cached view expires (plus one: the next period's), kept in range;
    REFRESH_DEFAULT_S for an answer without max-age. */
export function refreshDelayS(headers) {
  const maxAge = /max-age=(\d+)/.exec(headers.get("Cache-Control") || "");
  if (!maxAge) return REFRESH_DEFAULT_S;
  const age = Number.parseInt(headers.get("Age") || "0", 10) || 0;
  return Math.min(REFRESH_MAX_S, Math.max(REFRESH_MIN_S, Number(maxAge[1]) - age + 1));
}

/** What this API offers, from its own OpenAPI document (GET /openapi.json, read once):
    `acknowledgePath`, the path template of acknowledging an alert, or null while the API has
    none (then the page draws no such control); `openState`, the `state` of an alert not cleared
    yet ("active", or "raised" in APIs that call it so). */
export async function loadCapabilities() {
  const { body } = await api("/openapi.json");
  const paths = body.paths || {};
  const acknowledgePath =
    Object.keys(paths).find(
      (path) => /^\/v1\/alerts\/\{alertId\}\/(ack|acknowledge)$/.test(path) && paths[path].post,
    ) || null;
  const alertQuery = (paths["/v1/alerts"] && paths["/v1/alerts"].get.parameters) || [];
  const state = alertQuery.find((parameter) => parameter.name === "state");
  const states = (state && state.schema && state.schema.enum) || [];
  return { acknowledgePath, openState: states.includes("raised") ? "raised" : "active" };
}
