// Errors in words: a title picked by the error's code, and the backend's message.

import type { UiCode, UiError } from "./types";

const TITLES: Partial<Record<UiCode, string>> = {
  bad_input: "Please check what you entered",
  unreachable: "Server unreachable",
  refused: "The server said no",
  wrong_token: "Wrong token",
  version: "Different RainMaker versions",
  promoted: "The server is the source now",
  busy: "A source is still mirroring there",
  recent_source: "A source mirrored there a moment ago",
  mass_delete: "Stopped before deleting files",
  not_pinned: "Server certificate not confirmed",
  insecure: "Connection not encrypted",
  fingerprint: "Certificate does not match",
  tls: "Secure connection failed",
  timeout: "The server did not answer in time",
  config: "Settings file problem",
  source: "Cannot read the folder",
  io: "Disk problem",
  autostart: "Start at login",
  network: "Connection problem",
};

export function errorTitle(e: UiError): string {
  return TITLES[e.code] ?? "Something went wrong";
}
