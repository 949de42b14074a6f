// Errors in words: a title picked by the error's code, and the backend's message.

import type { UiError } from "./types";

const TITLES: Record<string, string> = {
  bad_input: "Please check what you entered",
  unreachable: "Server unreachable",
  refused: "The server said no",
  fingerprint: "Certificate does not match",
  tls: "Secure connection failed",
  timeout: "The server did not answer in time",
  config: "Settings file problem",
  source: "Cannot read the folder",
  io: "Disk problem",
  autostart: "Start at login",
};

export function errorTitle(e: UiError): string {
  return TITLES[e.code] ?? "Something went wrong";
}
