// Questions the dashboard asks in itself, never in a browser prompt: a title, what the choice
// means, and its buttons. `useAsk()` gives `ask(question)`, which resolves with the key of the
// button pressed, or null for Cancel, Escape, a click outside, or another question asked first.

import { createContext, type ComponentChildren } from "preact";
import { useCallback, useContext, useEffect, useRef, useState } from "preact/hooks";

export type Choice = { key: string; label: string; kind?: "primary" | "danger" };
export type Question = { title: string; body: ComponentChildren; choices: Choice[] };
type Ask = (question: Question) => Promise<string | null>;

const AskContext = createContext<Ask>(async () => null);

/** The `ask` of the dashboard's dialog. */
export function useAsk(): Ask {
  return useContext(AskContext);
}

/** Provides `ask` to `children` and shows the question asked, one at a time. */
export function DialogHost({ children }: { children: ComponentChildren }) {
  const [open, setOpen] = useState<{ question: Question; answer: (key: string | null) => void } | null>(null);
  // The question shown: a new one answers the one before with null (it was left open), so
  // no caller waits for good.
  const current = useRef<((key: string | null) => void) | null>(null);
  const ask = useCallback<Ask>(
    (question) =>
      new Promise((resolve) => {
        current.current?.(null);
        const answer = (key: string | null) => {
          if (current.current !== answer) return;
          current.current = null;
          setOpen(null);
          resolve(key);
        };
        current.current = answer;
        setOpen({ question, answer });
      }),
    [],
  );
  // Cancel has the focus: Enter never confirms a choice by accident.
  const cancel = useRef<HTMLButtonElement>(null);
  useEffect(() => {
    if (!open) return;
    cancel.current?.focus();
    const onKey = (e: KeyboardEvent) => {
      if (e.key === "Escape") open.answer(null);
    };
    document.addEventListener("keydown", onKey);
    return () => document.removeEventListener("keydown", onKey);
  }, [open]);
  return (
    <AskContext.Provider value={ask}>
      {children}
      {open && (
        <div class="overlay" onClick={(e) => e.target === e.currentTarget && open.answer(null)}>
          <div class="dialog" role="dialog" aria-modal="true" aria-labelledby="dialog-title" data-test="dialog">
            <h2 id="dialog-title">{open.question.title}</h2>
            <div class="dialog-body">{open.question.body}</div>
            <div class="buttons">
              {open.question.choices.map((c) => (
                <button
                  key={c.key}
                  class={c.kind ?? ""}
                  data-test={`dialog-${c.key}`}
                  onClick={() => open.answer(c.key)}
                >
                  {c.label}
                </button>
              ))}
              <button data-test="dialog-cancel" ref={cancel} onClick={() => open.answer(null)}>
                Cancel
              </button>
            </div>
          </div>
        </div>
      )}
    </AskContext.Provider>
  );
}
