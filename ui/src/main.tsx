// Starts the dashboard: inside the tray app it talks to Rust; in a plain browser (`npm run
// dev`) it runs against the fake backend.

import { render } from "preact";
import { App } from "./app";
import { inTauri, tauriBackend, type Backend } from "./backend";
import { fakeBackend } from "./fake";
import "./style.css";

async function start() {
  const backend: Backend = inTauri() ? await tauriBackend() : fakeBackend();
  render(<App backend={backend} />, document.getElementById("app")!);
}

void start();
