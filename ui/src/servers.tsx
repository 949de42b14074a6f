// The server list: this PC and every remote agent, with state, lag and progress; adding a
// server (its certificate fingerprint shown to confirm first), renaming and removing one.

import { useState } from "preact/hooks";
import type { Backend } from "./backend";
import { ago, bytes, duration, percent, rate, stateLabel } from "./format";
import type { Dashboard, ServerView } from "./types";

type Run = (action: () => Promise<unknown>) => Promise<boolean>;

export function ServerList({ dash, backend, run }: { dash: Dashboard; backend: Backend; run: Run }) {
  const [adding, setAdding] = useState(false);
  return (
    <section class="card servers">
      <header>
        <h2>Servers</h2>
        <button data-test="add-server" onClick={() => setAdding(true)} disabled={adding}>
          Add server
        </button>
      </header>
      <table>
        <thead>
          <tr>
            <th>Name</th>
            <th>Address</th>
            <th>Role</th>
            <th>Online</th>
            <th>State</th>
            <th>Last sync</th>
            <th>Lag</th>
            <th />
          </tr>
        </thead>
        <tbody>
          <tr class="this-pc" data-test="server-this-pc">
            <td>
              <strong>{dash.this_pc}</strong> <span class="muted">(this PC)</span>
            </td>
            <td class="muted address" title={dash.folder?.source ?? ""}>
              {dash.folder?.source ?? "no folder picked"}
            </td>
            <td>
              <span class="role source">source</span>
            </td>
            <td>
              <span class="dot on" /> online
            </td>
            <td>{dash.paused ? "Paused" : dash.running ? "Sending" : "Ready"}</td>
            <td />
            <td />
            <td />
          </tr>
          {dash.servers.map((s) => (
            <ServerRow key={s.name} server={s} backend={backend} run={run} />
          ))}
        </tbody>
      </table>
      {dash.servers.length === 0 && !adding && (
        <p class="empty">No backup servers yet. Install RainMaker on a server, then add it here.</p>
      )}
      {adding && <AddServer backend={backend} run={run} onDone={() => setAdding(false)} />}
    </section>
  );
}

function ServerRow({ server: s, backend, run }: { server: ServerView; backend: Backend; run: Run }) {
  const [renaming, setRenaming] = useState<string | null>(null);
  const online = s.online === null ? "checking" : s.online ? "online" : "offline";
  return (
    <>
      <tr data-test={`server-${s.name}`} class={`state-${s.state.replace(" ", "-")}`}>
        <td>
          {renaming === null ? (
            <strong>{s.name}</strong>
          ) : (
            <form
              class="inline"
              onSubmit={async (e) => {
                e.preventDefault();
                if (await run(() => backend.renameServer(s.name, renaming))) setRenaming(null);
              }}
            >
              <input
                name="rename"
                value={renaming}
                onInput={(e) => setRenaming(e.currentTarget.value)}
                aria-label="New name"
              />
              <button type="submit">Save</button>
              <button type="button" onClick={() => setRenaming(null)}>
                Cancel
              </button>
            </form>
          )}
        </td>
        <td class="muted address" title={`${s.url}\n${s.fingerprint ?? ""}`}>
          {s.url.replace(/^wss:\/\//, "")}
        </td>
        <td>
          <span class={`role ${s.role}`}>{s.role === "target" ? "target" : "not used"}</span>
        </td>
        <td title={s.online === false ? s.reason ?? "" : s.remote_name ?? ""}>
          <span class={`dot ${s.online ? "on" : s.online === false ? "off" : ""}`} /> {online}
        </td>
        <td data-test="state" title={s.reason ?? ""}>
          {stateLabel(s.state)}
        </td>
        <td>{s.role === "target" ? ago(s.last_sync) : ""}</td>
        <td>{s.role === "target" && s.lag_seconds > 0 ? duration(s.lag_seconds) : ""}</td>
        <td class="actions">
          <button class="link" title={`Rename ${s.name}`} aria-label="Rename" onClick={() => setRenaming(s.name)}>
            ✎
          </button>
          <button
            class="link danger"
            data-test={`remove-${s.name}`}
            title={`Remove ${s.name}`}
            aria-label="Remove"
            onClick={() => {
              if (confirm(`Remove ${s.name}? RainMaker stops mirroring to it; its files stay.`))
                void run(() => backend.removeServer(s.name));
            }}
          >
            ✕
          </button>
        </td>
      </tr>
      {s.progress && (
        <tr class="progress-row">
          <td colSpan={8}>
            <Progress p={s.progress} name={s.name} />
          </td>
        </tr>
      )}
      {s.reason && s.state !== "in sync" && (
        <tr class="reason-row">
          <td colSpan={8}>{s.reason}</td>
        </tr>
      )}
    </>
  );
}

function Progress({ p, name }: { p: NonNullable<ServerView["progress"]>; name: string }) {
  const share = percent(p.bytes_done, p.bytes_total);
  return (
    <div class="progress" data-test={`progress-${name}`}>
      <div class="bar">
        <div class="fill" style={{ width: `${share}%` }} />
      </div>
      <span>
        {p.files_done} of {p.files_total} files · {bytes(p.bytes_done)} of {bytes(p.bytes_total)} ·{" "}
        {rate(p.rate)} · {p.eta_seconds === null ? "estimating" : `${duration(p.eta_seconds)} left`}
      </span>
    </div>
  );
}

/** Address and token first; then the certificate's fingerprint to confirm; then it is added. */
export function AddServer({ backend, run, onDone }: { backend: Backend; run: Run; onDone: () => void }) {
  const [name, setName] = useState("");
  const [address, setAddress] = useState("");
  const [token, setToken] = useState("");
  const [fingerprint, setFingerprint] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const check = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    await run(async () => setFingerprint(await backend.peekServer(address.trim())));
    setBusy(false);
  };
  const trust = async () => {
    setBusy(true);
    const ok = await run(() => backend.addServer(name.trim() || address.trim(), address.trim(), token, fingerprint!));
    setBusy(false);
    if (ok) onDone();
  };
  return (
    <form class="add-server" onSubmit={check}>
      <h3>Add a backup server</h3>
      <label>
        Name
        <input name="server-name" placeholder="cloud-1" value={name} onInput={(e) => setName(e.currentTarget.value)} />
      </label>
      <label>
        Address
        <input
          name="server-address"
          placeholder="203.0.113.5:7878"
          value={address}
          onInput={(e) => {
            setAddress(e.currentTarget.value);
            setFingerprint(null);
          }}
          required
        />
      </label>
      <label>
        Pairing token
        <input
          name="server-token"
          type="password"
          placeholder="from the server's token file"
          value={token}
          onInput={(e) => setToken(e.currentTarget.value)}
          required
        />
      </label>
      {fingerprint === null ? (
        <div class="buttons">
          <button type="submit" data-test="check-server" disabled={busy}>
            {busy ? "Checking…" : "Check server"}
          </button>
          <button type="button" onClick={onDone}>
            Cancel
          </button>
        </div>
      ) : (
        <div class="confirm">
          <p>
            The server presents this certificate. Compare it with the fingerprint the server printed when RainMaker
            started there (<code>rainmaker serve</code>). Trust it only if they are the same.
          </p>
          <code data-test="fingerprint" class="fingerprint">
            {fingerprint}
          </code>
          <div class="buttons">
            <button type="button" class="primary" data-test="trust-server" onClick={trust} disabled={busy}>
              {busy ? "Connecting…" : "They match: add server"}
            </button>
            <button type="button" onClick={onDone}>
              Cancel
            </button>
          </div>
        </div>
      )}
    </form>
  );
}
