// The dashboard: status and the Sync button on top, banners for pauses and errors, the
// servers with their progress, the folders mirrored, the machine's health, and recent activity.

import { useCallback, useEffect, useRef, useState } from "preact/hooks";
import { Activity } from "./activity";
import { toUiError, type Backend } from "./backend";
import { DialogHost } from "./dialog";
import { errorTitle } from "./errors";
import { Folders } from "./folder";
import { duration, overallLabel } from "./format";
import { Guide } from "./guide";
import { Gauges, GuardForm } from "./health";
import { Progress, ServerList } from "./servers";
import type { Dashboard, UiError } from "./types";

export function App({ backend }: { backend: Backend }) {
  const [dash, setDash] = useState<Dashboard | null>(null);
  const [error, setError] = useState<UiError | null>(null);
  const [autostart, setAutostart] = useState<boolean | null>(null);
  // The first-run guide, on a PC with nothing set up yet, until a folder is saved or the user
  // would rather use the forms (decided on the first snapshot: removing the last folder later
  // does not bring it back over the servers).
  const [manualSetup, setManualSetup] = useState(false);
  const [fresh, setFresh] = useState<boolean | null>(null);
  useEffect(() => {
    if (dash && fresh === null) setFresh(dash.folders.length === 0 && dash.servers.length === 0);
  }, [dash, fresh]);
  const [next, setNext] = useState<string | null>(null);

  useEffect(() => {
    backend.watch(setDash).catch((e) => setError(toUiError(e)));
    backend.getAutostart().then(setAutostart, () => setAutostart(null));
  }, [backend]);

  /** Runs an action; a failure is shown in words. Returns whether it succeeded. */
  const run = useCallback(async (action: () => Promise<unknown>) => {
    try {
      await action();
      setError(null);
      return true;
    } catch (e) {
      setError(toUiError(e));
      return false;
    }
  }, []);

  // Forms with changes not saved yet: Sync mirrors what is saved, so it says so first.
  const unsaved = useRef(new Set<string>());
  const onUnsaved = useCallback((form: string, dirty: boolean) => {
    if (dirty) unsaved.current.add(form);
    else unsaved.current.delete(form);
  }, []);
  const sync = () => {
    if (unsaved.current.size > 0) {
      setError({
        code: "bad_input",
        message: "A folder has changes that are not saved yet: press its Save first, then Sync (Sync mirrors what is saved).",
      });
      return;
    }
    run(() => backend.syncNow());
  };

  if (!dash) return <main class="loading">Starting RainMaker…</main>;
  const userPaused = dash.paused?.by === "you";
  const guardPaused = dash.paused?.by === "guard";
  // Sync's own pushes under way: Stop ends them (a continuous folder goes on; Pause stops it).
  const syncing = dash.folders.some((f) => f.pushing);
  return (
    <DialogHost>
    <main>
      <header class={`top overall-${dash.overall}`}>
        <div class="brand">
          <img src="/icon.png" alt="" width={28} height={28} />
          <h1>RainMaker</h1>
        </div>
        <div class="status" data-test="overall" data-state={dash.overall}>
          <span class={`pill ${dash.overall}`}>{overallLabel(dash.overall)}</span>
          <span class="summary">{dash.summary.replace(/^RainMaker: /, "")}</span>
        </div>
        <div class="actions">
          {syncing ? (
            <button class="big" data-test="stop-sync" onClick={() => run(() => backend.stopSyncs())}>
              Stop
            </button>
          ) : (
            <button class="primary big" data-test="sync" onClick={sync}>
              Sync
            </button>
          )}
          {/* While the guard pauses, Pause would only turn its pause into yours. */}
          {!guardPaused && (
            <button data-test="pause" onClick={() => run(() => (userPaused ? backend.resume() : backend.pause()))}>
              {userPaused ? "Resume" : "Pause"}
            </button>
          )}
        </div>
      </header>

      {error && (
        <div class="banner error" role="alert" data-test="error">
          <strong>{errorTitle(error)}.</strong> {error.message}
          <button class="link" onClick={() => setError(null)} aria-label="Dismiss">
            ×
          </button>
        </div>
      )}
      {dash.paused && (
        <div class="banner paused" data-test="paused-banner">
          <span>
            <strong>Paused{guardPaused ? " to leave this PC to trading" : " by you"}:</strong> {dash.paused.reason}
            {guardPaused && (
              <span data-test="resumes">
                {" "}
                Sync resumes by itself once this PC has been below its limits for {duration(dash.guard.resume_after_seconds)}.
              </span>
            )}
          </span>
          {guardPaused && (
            <button data-test="sync-anyway" onClick={() => run(() => backend.syncAnyway())}>
              Sync anyway
            </button>
          )}
        </div>
      )}

      {dash.bringing_back && (
        <div class="banner paused bringing-back" data-test="bringing-back">
          <div>
            <strong>Bringing {dash.bringing_back.from}'s folder back to this PC…</strong> Syncing from this PC waits until it
            is back; the activity list says how it ended.
            {dash.bringing_back.progress && <Progress p={dash.bringing_back.progress} name={dash.bringing_back.from} />}
          </div>
        </div>
      )}
      {next && (
        <div class="banner next" data-test="next">
          <span>
            <strong>Mirroring is set up.</strong> {next}
          </span>
          <button class="link" onClick={() => setNext(null)} aria-label="Dismiss">
            ×
          </button>
        </div>
      )}

      <div class="grid">
        <div class="left">
          {fresh && dash.folders.length === 0 && !manualSetup ? (
            <Guide dash={dash} backend={backend} run={run} onManual={() => setManualSetup(true)} onStarted={setNext} />
          ) : (
            <>
              <ServerList dash={dash} backend={backend} run={run} />
              <Folders dash={dash} backend={backend} run={run} onUnsaved={onUnsaved} />
            </>
          )}
        </div>
        <div class="right">
          <section class="card health">
            <header>
              <h2>This PC</h2>
            </header>
            <Gauges dash={dash} />
            <GuardForm dash={dash} backend={backend} run={run} />
            {autostart !== null && (
              <label class="check">
                <input
                  type="checkbox"
                  checked={autostart}
                  onChange={async (e) => {
                    const on = e.currentTarget.checked;
                    if (await run(() => backend.setAutostart(on))) setAutostart(on);
                  }}
                />
                Start RainMaker when I log in
              </label>
            )}
          </section>
          <Activity items={dash.activity} />
          <p class="muted small">Settings: {dash.config_path}</p>
        </div>
      </div>
    </main>
    </DialogHost>
  );
}
