import { fireEvent, render, screen, waitFor } from "@testing-library/preact";
import { App } from "./app";
import { emptyDashboard, fakeBackend, SCENARIOS, scenario } from "./fake";

/** The dashboard on a fresh PC; unless `guide`, past the first-run guide ("Set it up by hand"). */
async function setup({ guide = false } = {}) {
  const backend = fakeBackend(emptyDashboard());
  const view = render(<App backend={backend} />);
  const q = (selector: string) => view.container.querySelector(selector) as HTMLElement;
  if (!guide) {
    await waitFor(() => expect(q('[data-test="guide-manual"]')).not.toBeNull());
    fireEvent.click(q('[data-test="guide-manual"]'));
  }
  return { backend, view, q };
}

const type = (el: HTMLElement, value: string) => fireEvent.input(el, { target: { value } });

/** The element `selector` names, once it is shown. */
const found = (q: (selector: string) => HTMLElement, selector: string) =>
  waitFor(() => {
    const el = q(selector);
    expect(el).not.toBeNull();
    return el;
  });

/** The platform picker, once the presets have loaded into it. */
const presetPicker = (q: (selector: string) => HTMLElement) =>
  waitFor(() => {
    const el = q('select[name="preset"]') as HTMLSelectElement;
    expect(el.options.length).toBeGreaterThan(1);
    return el;
  });

describe("the dashboard", () => {
  it("adds a server only after showing its fingerprint", async () => {
    const { backend, q } = await setup();
    await screen.findByText("Servers");
    fireEvent.click(q('[data-test="add-server"]'));
    type(q('input[name="server-name"]'), "cloud-1");
    type(q('input[name="server-address"]'), "203.0.113.5:7878");
    type(q('input[name="server-token"]'), "s3cret");
    fireEvent.click(q('[data-test="check-server"]'));
    const fingerprint = await waitFor(() => {
      const el = q('[data-test="fingerprint"]');
      expect(el).not.toBeNull();
      return el;
    });
    expect(fingerprint.textContent).toMatch(/^SHA256:(ab){32}$/);
    expect(backend.calls.some((c) => c.startsWith("add"))).toBe(false);
    fireEvent.click(q('[data-test="trust-server"]'));
    await waitFor(() => expect(q('[data-test="server-cloud-1"]')).not.toBeNull());
    expect(backend.calls).toContain(`add cloud-1 203.0.113.5:7878 SHA256:${"ab".repeat(32)}`);
  });

  it("adds a server from its pairing code alone: no token, no fingerprint to compare, its own name", async () => {
    const { backend, q } = await setup();
    await screen.findByText("Servers");
    fireEvent.click(q('[data-test="add-server"]'));
    const pin = "SHA256:" + "cd".repeat(32);
    type(q('input[name="server-address"]'), `rainmaker://203.0.113.6:7878#${pin}/s3cret`);
    expect(q('input[name="server-token"]')).toBeNull();
    expect(q('[data-test="code-hint"]')).not.toBeNull();
    expect(q('[data-test="check-server"]').textContent).toBe("Add server");
    fireEvent.click(q('[data-test="check-server"]'));
    await waitFor(() => expect(q('[data-test="server-backup-7878"]')).not.toBeNull());
    expect(q('[data-test="fingerprint"]')).toBeNull();
    expect(backend.calls).toContain(`add  rainmaker://203.0.113.6:7878#${pin}/s3cret ${pin}`);
    await waitFor(() => expect(q(".add-server")).toBeNull());
  });

  it("closes the add-server form on Escape", async () => {
    const { q } = await setup();
    await screen.findByText("Servers");
    fireEvent.click(q('[data-test="add-server"]'));
    fireEvent.keyDown(q('input[name="server-address"]'), { key: "Escape" });
    await waitFor(() => expect(q(".add-server")).toBeNull());
  });

  it("shows a refused token in words and keeps the form", async () => {
    const { q } = await setup();
    await screen.findByText("Servers");
    fireEvent.click(q('[data-test="add-server"]'));
    type(q('input[name="server-address"]'), "203.0.113.5:7878");
    type(q('input[name="server-token"]'), "wrong");
    fireEvent.click(q('[data-test="check-server"]'));
    await waitFor(() => expect(q('[data-test="trust-server"]')).not.toBeNull());
    fireEvent.click(q('[data-test="trust-server"]'));
    const error = await waitFor(() => {
      expect(q('[data-test="error"]')).not.toBeNull();
      return q('[data-test="error"]');
    });
    expect(error.textContent).toContain("Wrong token");
    expect(error.textContent).toContain("refused the pairing token");
    expect(q('[data-test="trust-server"]')).not.toBeNull();
  });

  it("an address without a port is refused before anything is trusted", async () => {
    const { q } = await setup();
    await screen.findByText("Servers");
    fireEvent.click(q('[data-test="add-server"]'));
    type(q('input[name="server-address"]'), "cloud.example.com");
    type(q('input[name="server-token"]'), "t");
    fireEvent.click(q('[data-test="check-server"]'));
    await waitFor(() => expect(q('[data-test="error"]').textContent).toContain("Please check what you entered"));
    expect(q('[data-test="fingerprint"]')).toBeNull();
  });

  it("picks a preset, a folder and a target, then syncs and shows progress", async () => {
    const { backend, q } = await setup();
    await backend.addServer("cloud-1", "203.0.113.5:7878", "t", "SHA256:" + "ab".repeat(32));
    await screen.findByText("Servers");
    const preset = await presetPicker(q);
    fireEvent.change(preset, { target: { value: "ninjatrader8" } });
    await waitFor(() => expect((q('textarea[name="exclude"]') as HTMLTextAreaElement).value).toContain("cache"));
    expect((q('input[name="source"]') as HTMLInputElement).value).toContain("NinjaTrader 8");
    fireEvent.click(q('[data-test="target-cloud-1"]'));
    fireEvent.click(q('[data-test="save-folder"]'));
    await waitFor(() => expect(backend.state.folders[0]?.form.targets).toEqual(["cloud-1"]));
    expect(backend.state.folders[0].form.exclude).toEqual(["cache", "log", "trace", "tmp", "*.lock"]);
    fireEvent.click(q('[data-test="sync"]'));
    await waitFor(() => expect(q('[data-test="progress-cloud-1"]')).not.toBeNull());
    expect(q('[data-test="progress-cloud-1"]').textContent).toContain("1 of 4 files");
    expect(q('[data-test="overall"]').dataset.state).toBe("syncing");
  });

  it("a platform's suggested folder gives way to the next platform's; a folder picked by hand stays", async () => {
    const { q } = await setup();
    await screen.findByText("Servers");
    const preset = await presetPicker(q);
    const source = () => q('input[name="source"]') as HTMLInputElement;
    fireEvent.change(preset, { target: { value: "ninjatrader8" } });
    await waitFor(() => expect(source().value).toContain("NinjaTrader 8"));
    fireEvent.change(preset, { target: { value: "metatrader5" } });
    await waitFor(() => expect(source().value).toBe(""));
    expect((q('textarea[name="exclude"]') as HTMLTextAreaElement).value).toContain("MQL5/Logs");
    type(source(), "D:\\MT5 data");
    fireEvent.change(preset, { target: { value: "ninjatrader8" } });
    await waitFor(() => expect((q('textarea[name="exclude"]') as HTMLTextAreaElement).value).toContain("cache"));
    expect(source().value).toBe("D:\\MT5 data");
  });

  it("says to save first when Sync is pressed over unsaved changes", async () => {
    const { backend, q } = await setup();
    await backend.addServer("cloud-1", "203.0.113.5:7878", "t", "SHA256:" + "ab".repeat(32));
    await screen.findByText("Servers");
    type(q('input[name="source"]'), "C:\\NT8");
    fireEvent.click(await found(q, '[data-test="target-cloud-1"]'));
    fireEvent.click(q('[data-test="sync"]'));
    await waitFor(() => expect(q('[data-test="error"]').textContent).toContain("not saved yet"));
    expect(backend.calls).not.toContain("sync");
    fireEvent.click(q('[data-test="save-folder"]'));
    await waitFor(() => expect(backend.state.folders.length).toBe(1));
    fireEvent.click(q('[data-test="sync"]'));
    await waitFor(() => expect(backend.calls).toContain("sync"));
  });

  it("warns below five minutes and explains a guard pause", async () => {
    const { backend, q } = await setup();
    await screen.findByText("Servers");
    fireEvent.change(q('select[name="mode"]'), { target: { value: "every" } });
    await waitFor(() => expect(q('input[name="every"]')).not.toBeNull());
    type(q('input[name="every"]'), "1");
    await waitFor(() => expect(q('[data-test="interval-warning"]').textContent).toContain("5 minutes"));
    backend.update((d) => {
      d.paused = { by: "guard", reason: "CPU 93% above 85% for 10 s" };
      d.overall = "paused";
      d.resources = { cpu_percent: 93, available_memory_mb: 8000, total_memory_mb: 16000, other_traffic_mbit: 1 };
    });
    await waitFor(() => expect(q('[data-test="paused-banner"]').textContent).toContain("CPU 93% above 85% for 10 s"));
    expect(q('[data-test="gauge-cpu"]').className).toContain("over");
    backend.update((d) => {
      d.paused = null;
      d.overall = "idle";
    });
    await waitFor(() => expect(q('[data-test="paused-banner"]')).toBeNull());
  });

  it("shows what a sync stopped by the mass-delete guard would delete, and asks before deleting", async () => {
    const { backend, q } = await setup();
    await backend.saveFolder(null, { source: "C:\\NT8", preset: null, exclude: [], targets: [], mode: "manual", every_minutes: null, bwlimit_mbit: null });
    await backend.saveFolder(null, { source: "C:\\MT5", preset: null, exclude: [], targets: [], mode: "manual", every_minutes: null, bwlimit_mbit: null });
    const paths = Array.from({ length: 50 }, (_, i) => `bases/Default/history/EURUSD/${2000 + i}.hcc`);
    const stop = { server: "cloud-2", reason: "this sync would delete 1900 of 2000 files", doomed: 1900, paths };
    backend.update((d) => {
      d.folders[1].mass_delete = stop;
    });
    const banner = '[data-test="folder-1"] [data-test="mass-delete"]';
    await waitFor(() => expect(q(banner)).not.toBeNull());
    expect(q('[data-test="folder-0"] [data-test="mass-delete"]')).toBeNull();
    // The first files by name, and how many more.
    expect(q(`${banner} [data-test="doomed"]`).textContent).toContain("bases/Default/history/EURUSD/2000.hcc");
    expect(q(`${banner} [data-test="doomed"]`).querySelectorAll("li").length).toBe(50);
    expect(q(`${banner} [data-test="doomed-more"]`).textContent).toBe("and 1850 more");
    // Delete asks first, with Cancel focused (Enter never deletes); cancelled, nothing is deleted.
    fireEvent.click(q(`${banner} [data-test="allow-mass-delete"]`));
    await waitFor(() => expect(q('[data-test="dialog"]')).not.toBeNull());
    await waitFor(() => expect(document.activeElement).toBe(q('[data-test="dialog-cancel"]')));
    expect(q('[data-test="dialog"]').textContent).toContain("Delete 1900 files on cloud-2?");
    fireEvent.click(q('[data-test="dialog-cancel"]'));
    await waitFor(() => expect(q('[data-test="dialog"]')).toBeNull());
    expect(backend.calls).not.toContain("allow mass delete 1");
    // Confirmed, it is allowed.
    fireEvent.click(q(`${banner} [data-test="allow-mass-delete"]`));
    fireEvent.click(await found(q, '[data-test="dialog-delete"]'));
    await waitFor(() => expect(q('[data-test="mass-delete"]')).toBeNull());
    expect(backend.calls).toContain("allow mass delete 1");
    // Keeping the backup instead stops the folder's mirroring and says so.
    backend.update((d) => {
      d.folders[0].mass_delete = { ...stop, server: "cloud-1" };
    });
    fireEvent.click(await found(q, '[data-test="folder-0"] [data-test="keep-backup"]'));
    await waitFor(() => expect(q('[data-test="folder-0"] [data-test="kept"]')).not.toBeNull());
    expect(backend.calls).toContain("keep backup 0");
    expect(q('[data-test="dialog"]')).toBeNull();
  });

  it("adds a second folder with its own targets; a server receives one folder", async () => {
    const { backend, q } = await setup();
    await backend.addServer("cloud-1", "203.0.113.5:7878", "t", "SHA256:" + "ab".repeat(32));
    await backend.addServer("cloud-2", "203.0.113.6:7878", "t", "SHA256:" + "cd".repeat(32));
    await backend.saveFolder(null, { source: "C:\\NT8", preset: "ninjatrader8", exclude: [], targets: ["cloud-1"], mode: "watch", every_minutes: null, bwlimit_mbit: null });
    await waitFor(() => expect(q('[data-test="folder-0"]')).not.toBeNull());
    expect(q('[data-test="folder-new"]')).toBeNull();
    fireEvent.click(q('[data-test="add-folder"]'));
    const added = await waitFor(() => {
      expect(q('[data-test="folder-new"]')).not.toBeNull();
      return q('[data-test="folder-new"]');
    });
    expect((added.querySelector('[data-test="target-cloud-1"]') as HTMLInputElement).disabled).toBe(true);
    type(added.querySelector('input[name="source"]') as HTMLElement, "C:\\MT5");
    fireEvent.click(added.querySelector('[data-test="target-cloud-2"]') as HTMLElement);
    fireEvent.click(added.querySelector('[data-test="save-folder"]') as HTMLElement);
    await waitFor(() => expect(backend.state.folders.length).toBe(2));
    expect(backend.state.folders[1].form).toMatchObject({ source: "C:\\MT5", targets: ["cloud-2"] });
    await waitFor(() => expect(q('[data-test="folder-1"]')).not.toBeNull());
    expect(q('[data-test="folder-new"]')).toBeNull();
  });

  it("pauses and resumes from the button", async () => {
    const { backend, q } = await setup();
    await screen.findByText("Servers");
    fireEvent.click(q('[data-test="pause"]'));
    await waitFor(() => expect(q('[data-test="pause"]').textContent).toBe("Resume"));
    fireEvent.click(q('[data-test="pause"]'));
    await waitFor(() => expect(q('[data-test="pause"]').textContent).toBe("Pause"));
    expect(backend.calls).toEqual(["pause", "resume"]);
  });

  it("offers Sync anyway during the guard's pause, saying when sync resumes, and Stop during a sync", async () => {
    const { backend, q } = await setup();
    await backend.saveFolder(null, { source: "C:\\NT8", preset: null, exclude: [], targets: [], mode: "manual", every_minutes: null, bwlimit_mbit: null });
    backend.update((d) => {
      d.paused = { by: "guard", reason: "CPU 93% above 85% for 10 s" };
      d.overall = "paused";
    });
    await waitFor(() => expect(q('[data-test="sync-anyway"]')).not.toBeNull());
    expect(q('[data-test="pause"]')).toBeNull();
    expect(q('[data-test="resumes"]').textContent).toContain(`below its limits for 15 s`);
    fireEvent.click(q('[data-test="sync-anyway"]'));
    await waitFor(() => expect(q('[data-test="stop-sync"]')).not.toBeNull());
    expect(q('[data-test="sync"]')).toBeNull();
    fireEvent.click(q('[data-test="stop-sync"]'));
    await waitFor(() => expect(q('[data-test="sync"]')).not.toBeNull());
    expect(backend.calls).toEqual(expect.arrayContaining(["sync anyway", "stop syncs"]));
  });
});

describe("a server in sync", () => {
  it("says it is ready to trade from, keeps its past syncs, and shows a failback under way", async () => {
    const { backend, q } = await setup();
    await backend.addServer("cloud-1", "203.0.113.5:7878", "t", "SHA256:" + "ab".repeat(32));
    const now = Date.now() / 1000;
    backend.update((d) => {
      d.servers = d.servers.map((s) => ({ ...s, role: "target", state: "in sync", last_sync: now - 60 }));
      d.activity = [
        { at: now - 60, level: "info", text: "cloud-1 is in sync: 3 files, 1.2 MB sent in 0.4 s" },
        { at: now - 3600, level: "error", text: "cloud-1: Cannot reach 203.0.113.5:7878." },
        { at: now - 3700, level: "info", text: "cloud-10 is in sync: 1 files, 2 kB sent in 0.1 s" },
      ];
    });
    await found(q, '[data-test="ready-cloud-1"]');
    expect(q('[data-test="ready-cloud-1"]').textContent).toContain("ready to trade from");
    expect(q('[data-test="not-ready-cloud-1"]')).toBeNull();
    fireEvent.click(q('[data-test="history-cloud-1"]'));
    const rows = await found(q, '[data-test="history-rows-cloud-1"]');
    expect(rows.querySelectorAll("li").length).toBe(2);
    expect(rows.textContent).toContain("3 files, 1.2 MB sent");
    expect(rows.textContent).not.toContain("cloud-10");
    // Behind: how far, and since when.
    backend.update((d) => {
      d.servers = d.servers.map((s) => ({ ...s, state: "offline", lag_seconds: 240 }));
    });
    await found(q, '[data-test="not-ready-cloud-1"]');
    expect(q('[data-test="not-ready-cloud-1"]').textContent).toMatch(/^not up to date: offline, 4 min behind; last in sync/);
    expect(q('[data-test="ready-cloud-1"]')).toBeNull();
    backend.update((d) => {
      d.bringing_back = {
        from: "cloud-1",
        progress: { files_done: 3, files_total: 10, bytes_done: 50_000_000, bytes_total: 200_000_000, rate: 10_000_000, eta_seconds: 15 },
      };
    });
    await found(q, '[data-test="bringing-back"]');
    expect(q('[data-test="bringing-back"]').textContent).toContain("Bringing cloud-1's folder back to this PC");
    expect(q('[data-test="bringing-back"] .bar')).not.toBeNull();
  });
});

describe("a server's trash", () => {
  it("lists what syncs deleted or replaced, and restores a batch into a new folder", async () => {
    const { backend, q } = await setup();
    await backend.addServer("cloud-1", "203.0.113.5:7878", "t", "SHA256:" + "ab".repeat(32), "admin");
    fireEvent.click(await found(q, '[data-test="trash-cloud-1"]'));
    await found(q, '[data-test="trash-batches"]');
    expect(q('[data-test="trash-batches"]').textContent).toContain("1900 files");
    expect(q('[data-test="dialog"]').textContent).toContain("nothing here is overwritten");
    fireEvent.click(q('[data-test="dialog-1796191200-5"]'));
    await found(q, '[data-test="restoring-into"]');
    expect(backend.calls).toContain("restore 1796191200-5 from cloud-1");
    expect(q('[data-test="restoring-into"]').textContent).toContain("(restored from cloud-1)");
    fireEvent.click(q('[data-test="dialog-ok"]'));
    await waitFor(() => expect(q('[data-test="dialog"]')).toBeNull());
  });
});

describe("a failing server", () => {
  it("can be retried now or paired again in place", async () => {
    const { backend, q } = await setup();
    await backend.addServer("cloud-1", "offline.example:7878", "t", "SHA256:" + "ab".repeat(32));
    backend.update((d) => {
      d.servers = d.servers.map((s) => ({ ...s, online: false, state: "offline", reason: "Cannot reach offline.example:7878." }));
    });
    await found(q, '[data-test="retry-cloud-1"]');
    fireEvent.click(q('[data-test="retry-cloud-1"]'));
    await waitFor(() => expect(q('[data-test="error"]').textContent).toContain("still does not answer"));
    // The server moved and was given a new token: its new pairing code replaces the old.
    fireEvent.click(q('[data-test="repair-cloud-1"]'));
    await found(q, ".add-server");
    expect(q(".add-server h3").textContent).toBe("Pair cloud-1 again");
    expect(q('input[name="server-name"]')).toBeNull();
    const pin = "SHA256:" + "ef".repeat(32);
    type(q('input[name="server-address"]'), `rainmaker://198.51.100.9:7878#${pin}/n3w`);
    fireEvent.click(q('[data-test="check-server"]'));
    await waitFor(() => expect(q('[data-test="retry-cloud-1"]')).toBeNull());
    expect(backend.calls).toContain(`repair cloud-1 rainmaker://198.51.100.9:7878#${pin}/n3w ${pin}`);
    expect(q('[data-test="server-cloud-1"] .address').textContent).toBe("198.51.100.9:7878");
    await waitFor(() => expect(q(".add-server")).toBeNull());
  });
});

describe("the first-run guide", () => {
  it("finds the platforms' folders, adds a server from its code, and says what happens next", async () => {
    const { backend, q } = await setup({ guide: true });
    await found(q, '[data-test="guide"]');
    // Every installation found is offered: NinjaTrader 8, and both MetaTrader 4 terminals by
    // their install folders.
    await found(q, '[data-test="guide-found-2"]');
    expect(q('[data-test="guide"]').textContent).toContain("installed at C:\\Program Files (x86)\\FXCM MT4");
    expect((q('[data-test="guide-start"]') as HTMLButtonElement).disabled).toBe(true);
    fireEvent.click(q('[data-test="guide-found-2"]'));
    // A server from its pairing code, inside the guide.
    fireEvent.click(q('[data-test="guide-add-server"]'));
    const pin = "SHA256:" + "cd".repeat(32);
    type(q('input[name="server-address"]'), `rainmaker://203.0.113.6:7878#${pin}/s3cret`);
    fireEvent.click(q('[data-test="check-server"]'));
    await found(q, '[data-test="guide-server-backup-7878"]');
    expect((q('[data-test="guide-server-backup-7878"]') as HTMLInputElement).checked).toBe(true);
    fireEvent.click(q('[data-test="guide-mode-every"]'));
    fireEvent.click(q('[data-test="guide-start"]'));
    await found(q, '[data-test="next"]');
    expect(backend.state.folders[0].form).toMatchObject({
      source: "C:\\Users\\trader\\AppData\\Roaming\\MetaQuotes\\Terminal\\9D15457EC01AD10E06A932AAC616DC32",
      preset: "metatrader4",
      exclude: ["logs", "MQL4/Logs", "tester", "*.lock"],
      targets: ["backup-7878"],
      mode: "every",
      every_minutes: 5,
    });
    expect(q('[data-test="next"]').textContent).toContain("every 5 minutes");
    expect(q('[data-test="next"]').textContent).toContain("ready to trade from when its row says In sync");
    // The guide gives way to the dashboard.
    expect(q('[data-test="guide"]')).toBeNull();
    expect(q('[data-test="server-backup-7878"]')).not.toBeNull();
  });
});

describe("any server to any servers", () => {
  it("makes a server push to another, and promotes it after a failover", async () => {
    const { backend, q } = await setup();
    await backend.addServer("cloud-a", "203.0.113.5:7878", "t", "SHA256:" + "ab".repeat(32), "admin");
    await backend.addServer("cloud-b", "203.0.113.6:7878", "t", "SHA256:" + "cd".repeat(32));
    await waitFor(() => expect(q('[data-test="push-from-cloud-a"]')).not.toBeNull());
    expect(q('[data-test="push-from-cloud-b"]')).toBeNull();
    fireEvent.click(q('[data-test="push-from-cloud-a"]'));
    fireEvent.click(await found(q, '[data-test="push-to-cloud-b"]'));
    fireEvent.click(q('[data-test="push-start-cloud-a"]'));
    await waitFor(() => expect(q('[data-test="chain-cloud-b"]').textContent).toContain("receives from cloud-a"));
    expect(backend.calls).toContain("push from cloud-a to cloud-b");
    const push = '[data-test="push-cloud-a-1"]';
    await waitFor(() => expect(q(`${push} [data-test="push-state"]`).textContent).toBe("running"));
    fireEvent.click(q(`${push} [data-test="push-pause"]`));
    await waitFor(() => expect(q(`${push} [data-test="push-state"]`).textContent).toBe("paused"));
    expect(q(`${push} [data-test="push-pause"]`)).toBeNull();
    fireEvent.click(q(`${push} [data-test="push-resume"]`));
    await waitFor(() => expect(q(`${push} [data-test="push-state"]`).textContent).toBe("running"));
    fireEvent.click(q(`${push} [data-test="push-stop"]`));
    await waitFor(() => expect(q(`${push} [data-test="push-state"]`).textContent).toBe("stopped"));
    expect(q(`${push} [data-test="push-stop"]`)).toBeNull();
    expect(backend.calls).toEqual(expect.arrayContaining(["pause push 1 of cloud-a", "resume push 1 of cloud-a", "stop push 1 of cloud-a"]));

    // Failover, asked in the dashboard itself (never a browser prompt): what Promote means,
    // then, as the server may still be receiving, whether to promote anyway.
    const confirm = vi.spyOn(window, "confirm");
    const prompt = vi.spyOn(window, "prompt");
    backend.update((d) => {
      d.servers = d.servers.map((s) => (s.name === "cloud-a" ? { ...s, fed_by: "TRADING-PC" } : s));
    });
    fireEvent.click(await found(q, '[data-test="promote-cloud-a"]'));
    await waitFor(() => expect(q('[data-test="dialog"]')).not.toBeNull());
    expect(q('[data-test="dialog"]').textContent).toContain("stops receiving mirrors");
    fireEvent.click(q('[data-test="dialog-promote"]'));
    await waitFor(() => expect(q('[data-test="dialog-force"]')).not.toBeNull());
    expect(q('[data-test="dialog"]').textContent).toContain("may still be the source");
    fireEvent.click(q('[data-test="dialog-force"]'));
    await waitFor(() => expect(q('[data-test="demote-cloud-a"]')).not.toBeNull());
    expect(backend.calls).toContain("role cloud-a source force");
    expect(q('[data-test="dialog"]')).toBeNull();
    // The roles agree everywhere: cloud-a is the source, this PC stands by.
    expect(q('[data-test="role-cloud-a"]').textContent).toBe("source");
    expect(q('[data-test="this-pc-role"]').textContent?.trim()).toBe("standing by");
    // A server behind NAT that dials in for cloud-a's folder is listed under it, as one that
    // connects out and cannot be reached.
    backend.update((d) => {
      d.servers = d.servers.map((s) =>
        s.name === "cloud-a"
          ? {
              ...s,
              feeds: [{ name: "offcloud-b", address: "192.0.2.2:40112", once: false, connected: true, in_sync_at: Date.now() / 1000 - 5, error: null }],
            }
          : s,
      );
    });
    await waitFor(() => expect(q('[data-test="feed-cloud-a-offcloud-b"]')).not.toBeNull());
    const feed = q('[data-test="feed-cloud-a-offcloud-b"]');
    expect(feed.textContent).toContain("offcloud-b receives cloud-a's folder, dialing in from 192.0.2.2:40112");
    expect(feed.textContent).toContain("it cannot be reached");
    expect(q('[data-test="feed-cloud-a-offcloud-b"] [data-test="feed-state"]').textContent).toMatch(/^connected, in sync/);
    fireEvent.click(q('[data-test="bring-back-cloud-a"]'));
    await waitFor(() => expect(q('[data-test="dialog-bring-back"]')).not.toBeNull());
    expect(q('[data-test="dialog"] [data-test="newer"]').textContent).toContain("cloud-a has the newer data");
    expect(q('[data-test="dialog"]').textContent).toContain("nothing needs to reach this PC");
    fireEvent.click(q('[data-test="dialog-bring-back"]'));
    await waitFor(() => expect(backend.calls).toContain("receive from cloud-a"));
    // Demote asks first: Escape leaves everything as it was; confirmed, a target again.
    fireEvent.click(q('[data-test="demote-cloud-a"]'));
    await waitFor(() => expect(q('[data-test="dialog"]')).not.toBeNull());
    expect(q('[data-test="dialog"]').textContent).toContain("a backup again");
    fireEvent.keyDown(document, { key: "Escape" });
    await waitFor(() => expect(q('[data-test="dialog"]')).toBeNull());
    expect(backend.calls).not.toContain("role cloud-a target");
    fireEvent.click(q('[data-test="demote-cloud-a"]'));
    fireEvent.click(await found(q, '[data-test="dialog-demote"]'));
    await waitFor(() => expect(q('[data-test="promote-cloud-a"]')).not.toBeNull());
    expect(backend.calls).toContain("role cloud-a target");
    expect(confirm).not.toHaveBeenCalled();
    expect(prompt).not.toHaveBeenCalled();
    confirm.mockRestore();
    prompt.mockRestore();
  });
});

describe("every state of the fake", () => {
  // What each state must show: the element a trader reads it by.
  const hallmark: Record<(typeof SCENARIOS)[number], string> = {
    fresh: '[data-test="guide"]',
    synced: '[data-test="ready-cloud-1"]',
    "guard-pause": '[data-test="sync-anyway"]',
    offline: '[data-test="retry-cloud-1"]',
    "mass-delete": '[data-test="keep-backup"]',
    failover: '[data-test="bring-back-cloud-1"]',
    "bringing-back": '[data-test="bringing-back"]',
  };
  for (const name of SCENARIOS) {
    it(`shows ${name}`, async () => {
      const backend = fakeBackend(scenario(name));
      const view = render(<App backend={backend} />);
      const q = (selector: string) => view.container.querySelector(selector) as HTMLElement;
      await found(q, hallmark[name]);
      expect(q('[data-test="error"]')).toBeNull();
    });
  }
});
