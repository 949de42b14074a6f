// Starts the dashboard: inside the tray app it talks to Rust; in a plain browser (`npm run
// dev`) it runs against the fake backend.

import { render } from "preact";
import { App } from "./app";
import { inTauri, tauriBackend, type Backend } from "./backend";
import { fakeBackend, SCENARIOS, scenario, type Scenario } from "./fake";
import "./style.css";

async function start() {
  // In a browser, `?state=NAME` shows one of the fake's states (see SCENARIOS).
  const asked = new URLSearchParams(location.search).get("state") as Scenario | null;
  const state = asked && SCENARIOS.includes(asked) ? asked : "fresh";
  const backend: Backend = inTauri() ? await tauriBackend() : fakeBackend(scenario(state));
  render(<App backend={backend} />, document.getElementById("app")!);
}

void start();
