// The server list: this PC and every remote agent, with state, lag and progress; adding a
// server (its certificate fingerprint shown to confirm first), renaming and removing one.

import { useState } from "preact/hooks";
import type { Backend } from "./backend";
import { useAsk } from "./dialog";
import { ago, bytes, duration, percent, rate, stateLabel } from "./format";
import type { ActivityView, Dashboard, ServerView, TrashBatch } from "./types";

type Run = (action: () => Promise<unknown>) => Promise<boolean>;

export function ServerList({ dash, backend, run }: { dash: Dashboard; backend: Backend; run: Run }) {
  const [adding, setAdding] = useState(false);
  // After a failover one server is the source of the folder, not this PC.
  const promoted = dash.servers.find((s) => s.remote_role === "source");
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
            <td class="name">
              <strong>{dash.this_pc}</strong> <span class="muted">(this PC)</span>
              <div class="muted address" title={dash.folders.map((f) => f.form.source).join("\n")}>
                {dash.folders.length ? dash.folders.map((f) => f.form.source).join(", ") : "no folder picked"}
              </div>
            </td>
            <td>
              {promoted ? (
                <span class="role" data-test="this-pc-role" title={`${promoted.name} is the source since the failover: bring its folder back, then demote it`}>
                  standing by
                </span>
              ) : (
                <span class="role source" data-test="this-pc-role">
                  source
                </span>
              )}
            </td>
            <td>
              <span class="dot on" /> online
            </td>
            <td>{promoted ? `${promoted.name} is the source` : dash.paused ? "Paused" : dash.running ? "Sending" : "Ready"}</td>
            <td />
            <td />
            <td />
          </tr>
          {dash.servers.map((s) => (
            <ServerRow
              key={s.name}
              server={s}
              others={dash.servers.filter((o) => o.name !== s.name)}
              thisPc={dash.this_pc}
              thisPcNewest={s.this_pc_newest}
              activity={dash.activity}
              stopped={dash.folders.some((f) => f.mass_delete?.server === s.name)}
              backend={backend}
              run={run}
            />
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

function ServerRow({
  server: s,
  others,
  thisPc,
  thisPcNewest,
  activity,
  stopped,
  backend,
  run,
}: {
  server: ServerView;
  activity: ActivityView[];
  /** A sync to it stopped before deleting many files, and waits for an answer. */
  stopped: boolean;
  others: ServerView[];
  thisPc: string;
  thisPcNewest: number | null;
  backend: Backend;
  run: Run;
}) {
  const [renaming, setRenaming] = useState<string | null>(null);
  const [pushing, setPushing] = useState<string[] | null>(null);
  const [repairing, setRepairing] = useState(false);
  const [showHistory, setShowHistory] = useState(false);
  // Its past syncs and failures, from the activity list (the most recent first).
  const history = activity.filter((a) => a.text.startsWith(`${s.name} `) || a.text.startsWith(`${s.name}:`)).slice(0, 20);
  // A server that does not answer, or refuses: it can be retried or paired again in place.
  // Not a server that refused on purpose: a promoted one, or one whose sync stopped before a
  // mass deletion (its folder card asks what to do).
  const failing =
    (s.online === false || s.state === "offline" || s.state === "error") && s.remote_role !== "source" && !stopped;
  const ask = useAsk();
  const bringBack = async () => {
    const newer =
      s.newest_change !== null && thisPcNewest !== null
        ? s.newest_change > thisPcNewest
          ? `${s.name} has the newer data: it changed ${ago(s.newest_change)}, ${thisPc} ${ago(thisPcNewest)}.`
          : `${thisPc} has data as new as ${s.name}'s or newer: it changed ${ago(thisPcNewest)}, ${s.name} ${ago(s.newest_change)}. Bringing ${s.name}'s folder back replaces it.`
        : "";
    const answer = await ask({
      title: `Bring ${s.name}'s folder back to ${thisPc}?`,
      body: (
        <>
          {newer && <p data-test="newer">{newer}</p>}
          <p>
            {thisPc} connects to {s.name} and receives its folder; nothing needs to reach this PC. Syncing from this PC
            pauses until the folder is back, and files it replaces here go to the folder's trash. The activity list says
            when it is done.
          </p>
        </>
      ),
      choices: [{ key: "bring-back", label: "Bring it back", kind: "primary" }],
    });
    if (answer) await run(() => backend.receiveFrom(s.name, null));
  };
  const promote = async () => {
    const answer = await ask({
      title: `Make ${s.name} the source of its folder?`,
      body: (
        <p>
          Do this when you trade on {s.name} because {thisPc} cannot (a failover). {s.name} stops receiving mirrors, so
          nothing from {thisPc} can overwrite what you trade there. When {thisPc} is back, Bring back takes the folder from{" "}
          {s.name}, and Demote makes {s.name} a backup again.
        </p>
      ),
      choices: [{ key: "promote", label: `Promote ${s.name}`, kind: "primary" }],
    });
    if (!answer) return;
    try {
      await backend.setRole(s.name, true, false);
    } catch (e) {
      const err = e as { code?: string; message?: string };
      // A source that may still be writing: the server refuses until asked with force.
      const mayForce = err.code === "busy" || err.code === "recent_source";
      if (!mayForce) {
        await run(() => Promise.reject(e));
        return;
      }
      const force = await ask({
        title: `${s.name} may still be receiving from ${thisPc}`,
        body: (
          <>
            <p>{err.message}</p>
            <p>Promote it anyway only if {thisPc}'s sync to it is stopped or this PC is gone.</p>
          </>
        ),
        choices: [{ key: "force", label: "Promote anyway", kind: "danger" }],
      });
      if (force) await run(() => backend.setRole(s.name, true, true));
    }
  };
  const demote = async () => {
    const answer = await ask({
      title: `Make ${s.name} a backup again?`,
      body: (
        <p>
          {s.name} stops being the source of its folder, and the next sync from {thisPc} replaces what it holds with this
          PC's folder (replaced files go to its trash). Bring its folder back first if it has data this PC lacks.
        </p>
      ),
      choices: [{ key: "demote", label: "Demote", kind: "primary" }],
    });
    if (answer) await run(() => backend.setRole(s.name, false, false));
  };
  const trash = async () => {
    let batches: TrashBatch[] = [];
    if (!(await run(async () => (batches = await backend.trashOf(s.name))))) return;
    const when = (b: TrashBatch) => new Date(b.when * 1000).toLocaleString();
    const answer = await ask({
      title: `${s.name}'s trash`,
      body:
        batches.length === 0 ? (
          <p>It is empty: no sync deleted or replaced anything there in the last week.</p>
        ) : (
          <>
            <p>
              What each sync deleted or replaced on {s.name}, kept for a week. A batch comes back to {thisPc} into a new
              folder beside this PC's folder: nothing here is overwritten, and you move back what you need.
            </p>
            <ul class="batches" data-test="trash-batches">
              {batches.slice(0, 10).map((b) => (
                <li key={b.name}>
                  <strong>{when(b)}</strong>: {b.files} file{b.files === 1 ? "" : "s"}{" "}
                  <span class="muted">
                    ({b.paths.slice(0, 3).join(", ")}
                    {b.files > 3 ? ", …" : ""})
                  </span>
                </li>
              ))}
            </ul>
          </>
        ),
      choices: batches.slice(0, 10).map((b) => ({ key: b.name, label: `Restore ${when(b)} (${b.files})` })),
    });
    if (!answer) return;
    let into = "";
    if (await run(async () => (into = await backend.restoreFrom(s.name, answer)))) {
      await ask({
        title: "Restoring",
        body: (
          <p data-test="restoring-into">
            The files come back into <code>{into}</code>. The activity list says when they are all there.
          </p>
        ),
        choices: [{ key: "ok", label: "OK", kind: "primary" }],
      });
    }
  };
  const remove = async () => {
    const answer = await ask({
      title: `Remove ${s.name}?`,
      body: <p>RainMaker stops mirroring to it. Its files stay where they are.</p>,
      choices: [{ key: "remove", label: "Remove", kind: "danger" }],
    });
    if (answer) await run(() => backend.removeServer(s.name));
  };
  const online = s.online === null ? "checking" : s.online ? "online" : "offline";
  return (
    <>
      <tr data-test={`server-${s.name}`} class={`state-${(s.state ?? "idle").replace(" ", "-")}`}>
        <td class="name">
          {renaming === null ? (
            <>
              <strong>{s.name}</strong>
              <div class="muted address" title={`${s.url}\n${s.fingerprint ?? ""}`}>
                {s.url.replace(/^wss:\/\//, "")}
              </div>
              {s.state === "in sync" && s.remote_role !== "source" && (
                <div class="ready" data-test={`ready-${s.name}`} title="It holds exactly this PC's folder: the platform can start there and open its data">
                  ✓ ready to trade from{s.last_sync ? `, as of ${ago(s.last_sync)}` : ""}
                </div>
              )}
              {s.state !== null && s.state !== "in sync" && s.remote_role !== "source" && (
                <div class="not-ready" data-test={`not-ready-${s.name}`} title={s.reason ?? ""}>
                  not up to date: {stateLabel(s.state).toLowerCase()}
                  {s.lag_seconds > 0 ? `, ${duration(s.lag_seconds)} behind` : ""}
                  {s.last_sync ? `; last in sync ${ago(s.last_sync)}` : "; never in sync yet"}
                </div>
              )}
              {(s.fed_by || s.remote_files !== null) && (
                <div class="muted chain" data-test={`chain-${s.name}`}>
                  {s.fed_by ? `receives from ${s.fed_by}` : ""}
                  {s.fed_by && s.newest_change ? " · " : ""}
                  {s.newest_change ? `newest change ${ago(s.newest_change)}` : ""}
                </div>
              )}
            </>
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
        <td>
          {s.remote_role === "source" ? (
            <span class="role source" data-test={`role-${s.name}`} title="Promoted after a failover: it is the source of its folder and receives nothing">
              source
            </span>
          ) : (
            <span class={`role ${s.role}`} data-test={`role-${s.name}`}>
              {s.role === "target" ? "target" : "not used"}
            </span>
          )}
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
          <div class="row-actions">
          {s.admin && (
            <>
              <button class="link" data-test={`push-from-${s.name}`} title={`Push ${s.name}'s folder to other servers`} onClick={() => setPushing(pushing ? null : [])}>
                Push…
              </button>
              {s.remote_role === "source" && (
                <button class="link" data-test={`bring-back-${s.name}`} title="Failback: bring its folder back to this PC" onClick={bringBack}>
                  Bring back
                </button>
              )}
              {s.remote_role === "source" ? (
                <button class="link" data-test={`demote-${s.name}`} title="Receive mirrors again (after failback)" onClick={demote}>
                  Demote
                </button>
              ) : (
                <button class="link" data-test={`promote-${s.name}`} title="Make it the source (after a failover)" onClick={promote}>
                  Promote
                </button>
              )}
            </>
          )}
          {s.admin && (
            <button class="link" data-test={`trash-${s.name}`} title={`Take back what syncs deleted or replaced on ${s.name}`} onClick={trash}>
              Trash…
            </button>
          )}
          {history.length > 0 && (
            <button class="link" data-test={`history-${s.name}`} title={`Past syncs to ${s.name}`} onClick={() => setShowHistory(!showHistory)}>
              History
            </button>
          )}
          <button class="link" title={`Rename ${s.name}`} aria-label="Rename" onClick={() => setRenaming(s.name)}>
            ✎
          </button>
          <button
            class="link danger"
            data-test={`remove-${s.name}`}
            title={`Remove ${s.name}`}
            aria-label="Remove"
            onClick={remove}
          >
            ✕
          </button>
          </div>
        </td>
      </tr>
      {pushing && (
        <tr class="push-row">
          <td colSpan={7}>
            <div class="push-form" data-test={`push-form-${s.name}`}>
              <span>Push {s.name}'s folder to:</span>
              {others.map((o) => (
                <label class="check" key={o.name}>
                  <input
                    type="checkbox"
                    data-test={`push-to-${o.name}`}
                    checked={pushing.includes(o.name)}
                    onChange={(e) =>
                      setPushing(e.currentTarget.checked ? [...pushing, o.name] : pushing.filter((n) => n !== o.name))
                    }
                  />
                  {o.name}
                </label>
              ))}
              <button
                class="primary"
                data-test={`push-start-${s.name}`}
                disabled={pushing.length === 0}
                onClick={async () => {
                  if (await run(() => backend.remotePush(s.name, pushing))) setPushing(null);
                }}
              >
                Push now
              </button>
              <button onClick={() => setPushing(null)}>Cancel</button>
            </div>
          </td>
        </tr>
      )}
      {s.pushes.map((p) => (
        <tr class="reason-row muted" key={p.id} data-test={`push-${s.name}-${p.id}`}>
          <td colSpan={7}>
            Push {p.id} to {p.to.join(", ")}: <span data-test="push-state">{p.state}</span>
            {p.error && <span>: {p.error}</span>}
            {p.state === "running" && (
              <button class="link" data-test="push-pause" onClick={() => run(() => backend.controlPush(s.name, p.id, "pause"))}>
                Pause
              </button>
            )}
            {p.state === "paused" && (
              <button class="link" data-test="push-resume" onClick={() => run(() => backend.controlPush(s.name, p.id, "resume"))}>
                Resume
              </button>
            )}
            {(p.state === "running" || p.state === "paused") && (
              <button class="link" data-test="push-stop" onClick={() => run(() => backend.controlPush(s.name, p.id, "stop"))}>
                Stop
              </button>
            )}
          </td>
        </tr>
      ))}
      {showHistory && (
        <tr class="history-row" data-test={`history-rows-${s.name}`}>
          <td colSpan={7}>
            <ul>
              {history.map((a, i) => (
                <li key={i} class={a.level}>
                  <time>{new Date(a.at * 1000).toLocaleString()}</time> {a.text}
                </li>
              ))}
            </ul>
          </td>
        </tr>
      )}
      {s.feeds.map((f) => (
        <tr class="reason-row feed-row" key={`${f.once ? "once" : "sub"}-${f.name}`} data-test={`feed-${s.name}-${f.name}`}>
          <td colSpan={7}>
            ↳ <strong>{f.name}</strong> {f.once ? "took" : "receives"} {s.name}'s folder, dialing in from {f.address} (it cannot be
            reached; it connects out):{" "}
            <span data-test="feed-state">
              {f.connected ? "connected" : "not connected"}
              {f.in_sync_at !== null ? `, in sync ${ago(f.in_sync_at)}` : ""}
            </span>
            {f.error && <span>: {f.error}</span>}
          </td>
        </tr>
      ))}
      {s.subscription && (
        <tr class="reason-row" data-test={`subscription-${s.name}`}>
          <td colSpan={7}>
            {s.name} receives its folder from {s.subscription.from} by dialing it:{" "}
            {s.subscription.connected ? "connected" : "not connected"}
            {s.subscription.error && <span>: {s.subscription.error}</span>}
          </td>
        </tr>
      )}
      {s.progress && (
        <tr class="progress-row">
          <td colSpan={7}>
            <Progress p={s.progress} name={s.name} />
          </td>
        </tr>
      )}
      {s.reason && s.state !== "in sync" && (
        <tr class="reason-row" data-test={`reason-${s.name}`}>
          <td colSpan={7}>
            {s.reason}
            {failing && (
              <span class="repair">
                <button class="link" data-test={`retry-${s.name}`} onClick={() => run(() => backend.retryServer(s.name))}>
                  Retry now
                </button>
                <button class="link" data-test={`repair-${s.name}`} onClick={() => setRepairing(true)}>
                  Pair again…
                </button>
              </span>
            )}
          </td>
        </tr>
      )}
      {repairing && (
        <tr class="push-row">
          <td colSpan={7}>
            <AddServer backend={backend} run={run} repair={s.name} onDone={() => setRepairing(false)} />
          </td>
        </tr>
      )}
    </>
  );
}

export function Progress({ p, name }: { p: NonNullable<ServerView["progress"]>; name: string }) {
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

/** Whether the address field holds a pairing code (`rainmaker pair` prints it on the server). */
const isPairingCode = (address: string) => address.trim().toLowerCase().startsWith("rainmaker://");

/**
 * Address and token first (or the server's pairing code, which holds both and the certificate's
 * fingerprint); then the certificate's fingerprint to confirm; then it is added.
 */
/** The form that adds a server; with `repair`, the one that pairs that server again (its new
 * pairing code, or address, token and certificate). */
export function AddServer({
  backend,
  run,
  onDone,
  repair,
}: {
  backend: Backend;
  run: Run;
  onDone: () => void;
  repair?: string;
}) {
  const [name, setName] = useState("");
  const [address, setAddress] = useState("");
  const [token, setToken] = useState("");
  const [adminToken, setAdminToken] = useState("");
  const [fingerprint, setFingerprint] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const code = isPairingCode(address);
  const add = (fp: string) =>
    repair
      ? backend.repairServer(repair, address.trim(), code ? "" : token, fp, adminToken.trim() || undefined)
      : backend.addServer(name.trim(), address.trim(), code ? "" : token, fp, adminToken.trim() || undefined);
  const check = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    if (code) {
      // The code names the certificate, and the server must present it: nothing to compare
      // by eye, and the token is tried before anything is saved.
      const ok = await run(async () => add(await backend.peekServer(address.trim())));
      setBusy(false);
      if (ok) onDone();
      return;
    }
    await run(async () => setFingerprint(await backend.peekServer(address.trim())));
    setBusy(false);
  };
  const trust = async () => {
    setBusy(true);
    const ok = await run(() => add(fingerprint!));
    setBusy(false);
    if (ok) onDone();
  };
  return (
    <form
      class="add-server"
      onSubmit={check}
      onKeyDown={(e) => {
        if (e.key === "Escape") onDone();
      }}
    >
      <h3>{repair ? `Pair ${repair} again` : "Add a backup server"}</h3>
      <label>
        Pairing code
        <input
          name="server-address"
          placeholder="rainmaker://… (run `rainmaker pair` on the server), or its address HOST:PORT"
          value={address}
          onInput={(e) => {
            setAddress(e.currentTarget.value);
            setFingerprint(null);
          }}
          required
        />
      </label>
      {code ? (
        <p class="hint" data-test="code-hint">
          The code holds the server's address, its certificate and its pairing token: nothing else to type.
        </p>
      ) : (
        address.trim() !== "" && (
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
        )
      )}
      {!repair && (
        <label>
          Name (optional: the server's own name)
          <input name="server-name" placeholder="cloud-1" value={name} onInput={(e) => setName(e.currentTarget.value)} />
        </label>
      )}
      <label>
        Admin code (optional: lets this PC make the server push, promote it after a failover, and bring its folder back)
        <input
          name="server-admin-token"
          type="password"
          placeholder="rainmaker-admin://… from `rainmaker pair --admin`, or the admin token"
          value={adminToken}
          onInput={(e) => setAdminToken(e.currentTarget.value)}
        />
      </label>
      {fingerprint === null ? (
        <div class="buttons">
          <button type="submit" class={code ? "primary" : ""} data-test="check-server" disabled={busy}>
            {busy ? "Checking…" : code ? (repair ? "Pair again" : "Add server") : "Check server"}
          </button>
          <button type="button" onClick={onDone}>
            Cancel
          </button>
        </div>
      ) : (
        <div class="confirm">
          <p>
            The server presents this certificate. Compare it with the fingerprint the server printed when RainMaker started
            there (rainmaker serve). Trust it only if they are the same. (A pairing code saves you this step.)
          </p>
          <code data-test="fingerprint" class="fingerprint">
            {fingerprint}
          </code>
          <div class="buttons">
            <button type="button" class="primary" data-test="trust-server" onClick={trust} disabled={busy}>
              {busy ? "Connecting…" : repair ? "They match: pair again" : "They match: add server"}
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
