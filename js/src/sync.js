// The one place the front end writes back to Python (PROTOCOL.md): the traits the user changes,
// saved after the frame that paints them and set again over stale echoes from the kernel; the
// custom requests (`fetch` through the section store, `bokeh`, `run`), with ids unique on the
// page; and the replies, routed back. The parts never hold the model: the entry point hands
// them `get`, `set` and the store's reads from here.

import { markTime } from "./dom.js";
import { asBytes } from "./payload.js";
import { SectionStore } from "./store.js";

let viewCounter = 0;

export class Sync {
  /**
   * model: the anywidget model. onData(source, key): a fetched key arrived. onNotice(message):
   * show it (a `notice`, an `error` with no id). onFailed(source, key, message): a fetch the view
   * waited for could not be answered (the store does not ask again). onRun(msg): progress of a
   * `run` this view asked for.
   */
  constructor(model, { onData = () => {}, onNotice = () => {}, onFailed = (s, k, m) => onNotice(m), onRun = () => {} } = {}) {
    this.model = model;
    this.viewId = `v${++viewCounter}-${Math.random().toString(36).slice(2, 8)}`;
    this.requestCount = 0;
    this.disposers = [];
    this.unsaved = new Map(); // traits set here and not yet sent to the kernel
    this.onNotice = onNotice;
    this.onRun = onRun;
    this.store = new SectionStore({
      send: (msg) => this.send(msg),
      newId: () => this.newId(),
      onData,
      onError: (message, source, key) => (key === undefined ? onNotice(message) : onFailed(source, key, message)),
    });
  }

  // ------------------------------------------------------------------ traits
  get(name) {
    return this.model.get(name);
  }

  /** Listen to a model event until dispose(). */
  listen(event, fn) {
    this.model.on(event, fn);
    this.disposers.push(() => this.model.off(event, fn));
  }

  /** Call fn() on every change of trait `name`, except a stale echo of a value set here. */
  follow(name, fn) {
    this.listen(`change:${name}`, (m, value) => this.staleEcho(name, m, value) || fn());
  }

  /** The user's change: the view follows at once (from the change event), the kernel after the paint. */
  set(name, value) {
    if (this.model.get(name) === value) return;
    this.model.set(name, value);
    this.unsaved.set(name, value);
    this.saveAfterPaint();
  }

  /**
   * True (and the user's value set again) when a change from the kernel would undo a value set
   * here and not yet sent: the kernel's echo of an earlier move (ipywidgets applies the echo of
   * the last message sent, whatever was set since). Fast key presses on a slider otherwise lose
   * moves. `m` is the Backbone model; `_state_lock` is set while it applies kernel state.
   */
  staleEcho(name, m, value) {
    const mine = this.unsaved.get(name);
    if (mine === undefined || mine === value || !m || m._state_lock == null) return false;
    queueMicrotask(() => {
      if (this.disposed || this.unsaved.get(name) !== mine) return;
      this.model.set(name, mine);
      this.saveAfterPaint();
    });
    return true;
  }

  /**
   * Tell the kernel after the frame that paints the change: sent at once, the kernel's reply
   * traffic (the echo, busy/idle status and JupyterLab's toolbar updates, ~5–10 ms of main
   * thread) lands before Bokeh's paint and delays it. The timer covers hidden pages (no frames).
   */
  saveAfterPaint() {
    if (this.saveQueued) return;
    this.saveQueued = true;
    const flush = () => {
      if (!this.saveQueued) return;
      this.saveQueued = false;
      clearTimeout(timer);
      this.model.save_changes();
      this.unsaved.clear();
    };
    const timer = setTimeout(flush, 100);
    requestAnimationFrame(() => setTimeout(flush));
  }

  // ------------------------------------------------------------------ messages
  newId() {
    return `${this.viewId}-${++this.requestCount}`;
  }

  /** Send a request; ids are unique per page, since every view of a model sees every reply. */
  send(msg) {
    const full = { ...msg, id: msg.id ?? this.newId() };
    this.model.send(full);
    return full.id;
  }

  /** Start listening for the host's messages. */
  connect() {
    this.listen("msg:custom", (msg, buffers) => this.receive(msg, buffers));
  }

  /** Route a host message: notices, this view's run progress, fetch replies to the store. */
  receive(msg, buffers) {
    if (!msg || typeof msg !== "object") return;
    if (msg.type === "notice") return this.onNotice(msg.message);
    if (msg.type === "run") {
      if (typeof msg.id === "string" && !msg.id.startsWith(`${this.viewId}-`)) return;
      return this.onRun(msg);
    }
    this.store.receive(msg, buffers);
  }

  /** Ask the kernel to capture `prompt` again (live kernels only). */
  run(prompt) {
    return this.send({ type: "run", prompt });
  }

  /** BokehJS source: sent with the widget, or asked for. */
  bokehSource(version) {
    return bokehSource(this.model, version);
  }

  // ------------------------------------------------------------------ sections
  /** Start over with a new decoded payload. */
  reset(payload) {
    this.store.reset(payload);
  }

  /** A section already in the browser, or undefined; never asks the host. */
  section(source, key) {
    return this.store.get(source, key);
  }

  /**
   * The section now, or undefined after asking the host (onData fires when it arrives); `slot`
   * as for SectionStore.want (`view`, `detail`, `row`, `grid`).
   */
  want(source, key, slot) {
    return this.store.want(source, key, slot);
  }

  /** The host's message when it could not send `key`, or undefined. */
  failure(source, key) {
    return this.store.failure(source, key);
  }

  prefetch(source, keys) {
    this.store.prefetch(source, keys);
  }

  /** While a source's grid fills in: its `progress` ({thumbs, metrics}); null once complete. */
  gridProgress(source) {
    return this.store.progress.get(source) ?? null;
  }

  /** Names of the `metric/*` sections of a source in the browser (the grid's badges), of a
   * weighting (`metric/<name>` or, value-weighted, `metric/<name>/norm`). */
  metricNames(source, weighting = "attention") {
    const norm = weighting === "norm";
    return [...this.store.base.values()]
      .filter((s) => s.source === source && s.key.startsWith("metric/") && s.key.endsWith("/norm") === norm)
      .map((s) => s.key.slice(7, norm ? -5 : undefined));
  }

  /**
   * Stop listening and let go of the sections (the payload's and up to CACHE_BYTES fetched):
   * replies still on their way are ignored, nothing more is asked. A save already queued
   * still goes out.
   */
  dispose() {
    this.disposed = true;
    for (const d of this.disposers.splice(0)) d();
    this.store.reset(null);
  }
}

/** BokehJS sent with the widget (the first of a kernel), or else asked for. */
export function bokehSource(model, version) {
  const pushed = model.get("_bokeh_js");
  return pushed?.byteLength ? Promise.resolve(asBytes(pushed)) : requestBokeh(model, version);
}

/** BokehJS source text from the host (PROTOCOL.md: the `bokeh` request). */
function requestBokeh(model, version) {
  return new Promise((resolve, reject) => {
    const id = `bokeh-${Math.random().toString(36).slice(2)}-${++viewCounter}`;
    const onMessage = (msg, buffers) => {
      if (!msg || msg.id !== id) return;
      markTime("aw:bokeh-received");
      model.off("msg:custom", onMessage);
      if (msg.type === "bokeh" && buffers?.length) resolve(asBytes(buffers[0]));
      else reject(new Error(msg.message || "the host sent no BokehJS"));
    };
    model.on("msg:custom", onMessage);
    markTime("aw:bokeh-request");
    model.send({ type: "bokeh", id, version });
  });
}
