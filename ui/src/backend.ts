// The one module that talks to the tray app. Everything else gets a `Backend`, so the
// dashboard also runs in a plain browser against the fake one (fake.ts).

import type { Dashboard, FolderForm, GuardView, Preset, PushAction, TrashBatch, UiError } from "./types";

export interface Backend {
  /** Calls `onUpdate` with the dashboard now and whenever it changes. */
  watch(onUpdate: (d: Dashboard) => void): Promise<void>;
  presets(): Promise<Preset[]>;
  /** The certificate fingerprint the server presents, for the user to confirm. */
  peekServer(url: string): Promise<string>;
  addServer(name: string, url: string, token: string, fingerprint: string, adminToken?: string): Promise<void>;
  /** Tells server `from` to push its folder to the servers `to`. */
  remotePush(from: string, to: string[]): Promise<void>;
  /** Pauses, resumes or stops push `job` of server `name`. */
  controlPush(name: string, job: number, action: PushAction): Promise<void>;
  /** Makes a server the source of its folder (failover), or a target again (failback). */
  setRole(name: string, source: boolean, force: boolean): Promise<void>;
  /** Failback: this PC receives its folder from server `from`; `address` is this PC as it
   *  reaches it. */
  receiveFrom(from: string, address: string | null): Promise<void>;
  renameServer(old: string, name: string): Promise<void>;
  removeServer(name: string): Promise<void>;
  /** Pairs server `name` again: its new address or pairing code, certificate and tokens. */
  repairServer(name: string, url: string, token: string, fingerprint: string, adminToken?: string): Promise<void>;
  /** Checks a failing server again now, and syncs to it if it answers. */
  retryServer(name: string): Promise<void>;
  /** The batches of a server's trash (what sessions deleted or replaced there), newest first. */
  trashOf(name: string): Promise<TrashBatch[]>;
  /** Takes a trash batch of a server back to this PC, into a new folder; resolves with it. */
  restoreFrom(name: string, batch: string): Promise<string>;
  /** Saves folder `index`, or adds a folder when `index` is null. */
  saveFolder(index: number | null, folder: FolderForm): Promise<void>;
  /** Stops mirroring folder `index` (nothing on its servers is touched). */
  removeFolder(index: number): Promise<void>;
  saveGuard(guard: GuardView): Promise<void>;
  syncNow(): Promise<void>;
  /** Syncs every folder once now, past the resource guard's pause. */
  syncAnyway(): Promise<void>;
  /** Stops the syncs Sync started (each server keeps what arrived whole). */
  stopSyncs(): Promise<void>;
  /** Confirms the sync of folder `index` that stopped before deleting many files. */
  allowMassDelete(index: number): Promise<void>;
  /** Keeps the backups of folder `index` as they are after such a stop (it is not mirrored
   * until the next Sync). */
  keepBackup(index: number): Promise<void>;
  pause(): Promise<void>;
  resume(): Promise<void>;
  getAutostart(): Promise<boolean>;
  setAutostart(enabled: boolean): Promise<void>;
  /** Asks the user for a folder; null when cancelled or not available. */
  pickFolder(start?: string): Promise<string | null>;
}

/** Whether the page runs inside the tray app. */
export function inTauri(): boolean {
  return typeof window !== "undefined" && "__TAURI_INTERNALS__" in window;
}

/** Turns whatever a call threw into `{code, message}`. */
export function toUiError(e: unknown): UiError {
  if (e && typeof e === "object" && "code" in e && "message" in e) {
    return { code: (e as UiError).code, message: String((e as UiError).message) };
  }
  // Not from the backend (a bug in the dashboard itself).
  return { code: "engine", message: String(e) };
}

/** The backend of the real app. */
export async function tauriBackend(): Promise<Backend> {
  const { invoke, Channel } = await import("@tauri-apps/api/core");
  const call = async <T>(cmd: string, args?: Record<string, unknown>): Promise<T> => {
    try {
      return await invoke<T>(cmd, args);
    } catch (e) {
      throw toUiError(e);
    }
  };
  return {
    async watch(onUpdate) {
      const channel = new Channel<Dashboard>();
      channel.onmessage = onUpdate;
      await call("watch", { onUpdate: channel });
    },
    presets: () => call("presets"),
    peekServer: (url) => call("peek_server", { url }),
    addServer: (name, url, token, fingerprint, adminToken) =>
      call("add_server", { name, url, token, fingerprint, adminToken: adminToken || null }),
    remotePush: (from, to) => call("remote_push", { from, to }),
    controlPush: (name, job, action) => call("control_push", { name, job, action }),
    setRole: (name, source, force) => call("set_role", { name, source, force }),
    receiveFrom: (from, address) => call("receive_from", { from, address }),
    renameServer: (old, name) => call("rename_server", { old, new: name }),
    removeServer: (name) => call("remove_server", { name }),
    repairServer: (name, url, token, fingerprint, adminToken) =>
      call("repair_server", { name, url, token, fingerprint, adminToken: adminToken ?? null }),
    retryServer: (name) => call("retry_server", { name }),
    trashOf: (name) => call("trash_of", { name }),
    restoreFrom: (name, batch) => call("restore_from", { name, batch }),
    saveFolder: (index, folder) => call("save_folder", { index, folder }),
    removeFolder: (index) => call("remove_folder", { index }),
    saveGuard: (guard) => call("save_guard", { guard }),
    syncNow: () => call("sync_now"),
    syncAnyway: () => call("sync_anyway"),
    stopSyncs: () => call("stop_syncs"),
    allowMassDelete: (index) => call("allow_mass_delete", { index }),
    keepBackup: (index) => call("keep_backup", { index }),
    pause: () => call("pause"),
    resume: () => call("resume"),
    getAutostart: () => call("get_autostart"),
    setAutostart: (enabled) => call("set_autostart", { enabled }),
    async pickFolder(start) {
      const { open } = await import("@tauri-apps/plugin-dialog");
      const picked = await open({ directory: true, multiple: false, defaultPath: start });
      return typeof picked === "string" ? picked : null;
    },
  };
}
