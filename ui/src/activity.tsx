// The recent-activity log, newest first.

import { clock } from "./format";
import type { ActivityView } from "./types";

export function Activity({ items }: { items: ActivityView[] }) {
  return (
    <section class="card activity">
      <header>
        <h2>Recent activity</h2>
      </header>
      {items.length === 0 ? (
        <p class="muted">Nothing yet.</p>
      ) : (
        <ul data-test="activity">
          {items.slice(0, 60).map((a, i) => (
            <li key={`${a.at}-${i}`} class={a.level}>
              <time>{clock(a.at)}</time> {a.text}
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}
