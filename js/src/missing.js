// What the heatmap shows in place of a matrix the host could not send (a snapshot that left a
// head out to fit its size budget): a message over the plots saying what is missing, what the
// file does hold and how to get the rest, with a way back to a view it has. Never a stale image
// under "loading…".

import { h } from "./dom.js";
import { MEAN } from "./store.js";

/**
 * The message's parts for `layer`/`head` (MEAN: the mean of heads), `message` (the host's
 * words) and `snapshot` (an offline page): {title, detail, how, meanButton}.
 */
export function missingText(layer, head, message, snapshot) {
  const what = head === MEAN ? `The mean of layer ${layer}'s heads` : `Layer ${layer}, head ${head}`;
  return {
    title: `${what} is not in this ${snapshot ? "file" : "view"}.`,
    detail: String(message ?? ""),
    how: snapshot
      ? "To see it: save the snapshot again with a bigger budget_mb (aw.save_snapshot(…, budget_mb=…) or " +
        "w.static(budget_mb=…)), or choose it with heads=…; or open the trace in the live widget."
      : "",
    meanButton: head !== MEAN,
  };
}

export class MissingNote {
  /** onMean(): show the layer mean instead. */
  constructor(onMean) {
    this.onMean = onMean;
    this.el = h("div", { class: "aw-missing", role: "status", hidden: "" });
  }

  /** Show the note for {layer, head, message}, or hide it (null). */
  show(what) {
    this.el.hidden = !what;
    this.el.parentElement?.classList.toggle("aw-has-missing", !!what);
    if (!what) return;
    const snapshot = !!globalThis.document?.getElementById("aw-manifest");
    const t = missingText(what.layer, what.head, what.message, snapshot);
    this.el.replaceChildren(
      h("strong", { class: "aw-missing-title", text: t.title }),
      h("p", { class: "aw-missing-detail", text: t.detail }),
      t.how ? h("p", { class: "aw-missing-how", text: t.how }) : null,
      t.meanButton ? h("button", { type: "button", class: "aw-missing-mean", text: `Show layer ${what.layer}'s mean of heads`, onclick: () => this.onMean() }) : null);
  }
}
