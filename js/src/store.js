// Where the front end's matrices come from: the payload, an LRU cache, or a fetch from the
// host (PROTOCOL.md, "What the front end fetches"). Pure: the host is reached only through
// the injected `send(msg)` function.

import { decodePayload, sectionId } from "./payload.js";

export const CACHE_BYTES = 256 * 2 ** 20;
export const MAX_PREFETCH = 2;

/** The `head` trait's value for the mean of the captured heads of a layer. */
export const MEAN = -1;

/** What the keys of a weighting end in: "" for the attention weights, "/norm" value-weighted. */
export const weightingSuffix = (weighting) => (weighting === "norm" ? "/norm" : "");

/** Whether a key is value-weighted (PROTOCOL.md: a complete payload covers the weights only). */
export const isWeighted = (key) => key.endsWith("/norm");

/** The grid's key (`grid`, `grid/norm`), and its thumbnails' section key (`thumbs`, `thumbs/norm`). */
export const gridKey = (weighting) => `grid${weightingSuffix(weighting)}`;
export const thumbsKey = (weighting) => `thumbs${weightingSuffix(weighting)}`;

/**
 * The key of the matrix shown for a layer and head (head MEAN = mean of heads): the whole head
 * (`head/L/H`, `mean/L`), or with `poolSide` > 0 (a long trace) its pooled image
 * (`pool/L/H/side`, `pool/L/mean/side`); value-weighted (`weighting` "norm"), with `/norm` after.
 */
export function matrixKey(layer, head, poolSide = 0, weighting = "attention") {
  const end = weightingSuffix(weighting);
  if (poolSide > 0) return `pool/${layer}/${headName(head)}/${poolSide}${end}`;
  return (head === MEAN ? `mean/${layer}` : `head/${layer}/${head}`) + end;
}

/** A head as `pool/` and `region/` keys name it: its index, or `mean`. */
export const headName = (head) => (head === MEAN ? "mean" : `${head}`);

/** The key of a full-resolution region: query rows q0…q1-1 and keys k0…k1-1 of a layer and head. */
export const regionKey = (layer, head, { q0, q1, k0, k1 }, weighting = "attention") =>
  `region/${layer}/${headName(head)}/${q0}/${q1}/${k0}/${k1}${weightingSuffix(weighting)}`;

/**
 * Keys worth prefetching around the one shown: heads ±1 in the same layer, the same head in
 * layers ±1, and the means of layers ±1 (only captured layers and heads). Pooled (a long trace,
 * where each costs the kernel a pass over the head): the layer's own mean first, then heads ±1
 * and the same head in layers ±1.
 */
export function neighbourKeys(layer, head, layers, heads, poolSide = 0, weighting = "attention") {
  const li = layers.indexOf(layer);
  const hi = heads.indexOf(head);
  const keys = [];
  const key = (l, x, side = poolSide) => matrixKey(l, x, side, weighting);
  if (poolSide > 0 && head !== MEAN) keys.push(key(layer, MEAN));
  if (head !== MEAN) {
    for (const d of [1, -1]) if (heads[hi + d] !== undefined) keys.push(key(layer, heads[hi + d]));
  }
  for (const d of [1, -1]) {
    const l = layers[li + d];
    if (l === undefined) continue;
    keys.push(key(l, head));
    if (head !== MEAN && !poolSide) keys.push(key(l, MEAN, 0));
  }
  return keys;
}

/** Whether a payload whose header is `header` holds every key like `key` (never fetch it). */
export const completeFor = (header, key) => !!header?.complete && !isWeighted(key);

export class SectionStore {
  /**
   * send(msg): deliver a request to the host; newId(): a request id unique on the page.
   * onData(source, key): a fetched key arrived (redraw if it is wanted).
   * onError(message): a request failed; show the message.
   */
  constructor({ send, newId, onData = () => {}, onError = () => {}, maxBytes = CACHE_BYTES }) {
    this.send = send;
    let n = 0;
    this.newId = newId ?? (() => ++n);
    this.onData = onData;
    this.onError = onError;
    this.maxBytes = maxBytes;
    this.reset(null);
  }

  /** Start over with a new decoded payload ({header, sections}); drops cache and requests. */
  reset(payload) {
    this.header = payload ? payload.header : null;
    this.base = payload ? payload.sections : new Map();
    this.cache = new Map(); // id -> section, in least- to most-recently used order
    this.cacheBytes = 0;
    this.pending = new Map(); // request id -> {source, key, prefetch, slot}
    this.inFlight = new Set(); // section ids requested and not answered
    this.queued = new Map(); // "source|slot" -> key wanted while another of the slot was in flight
    this.progress = new Map(); // source -> the `progress` of a grid still filling in
    this.failed = new Map(); // section id -> the host's message: a key it could not send (not asked again)
  }

  get traceId() {
    return this.header ? this.header.trace_id : null;
  }

  /** A section already here (payload or cache), or undefined. */
  get(source, key) {
    const id = sectionId(source, key);
    if (this.base.has(id)) return this.base.get(id);
    const s = this.cache.get(id);
    if (s) {
      this.cache.delete(id);
      this.cache.set(id, s);
    }
    return s;
  }

  /** The host's message when it could not send `key` (a snapshot left it out), or undefined. */
  failure(source, key) {
    return this.failed.get(sectionId(source, key));
  }

  /**
   * The section now, or undefined after asking the host for it (onData fires on arrival).
   * `slot` names what the key is for (`view`: the matrix shown; `detail`: a zoomed region;
   * `row`: a generation step's row; `grid`): each slot has at most one wanted fetch in flight
   * per source, and while it does only its newest wish waits, so the matrix shown never waits
   * behind a grid being prepared.
   */
  want(source, key, slot = "view") {
    const s = this.get(source, key);
    if (s || !this.header || completeFor(this.header, key)) return s;
    const id = sectionId(source, key);
    if (this.inFlight.has(id) || this.failed.has(id)) return undefined;
    const busy = [...this.pending.values()].some((p) => p.source === source && p.slot === slot && !p.prefetch);
    if (busy) this.queued.set(`${source}|${slot}`, key);
    else this._request(source, key, false, slot);
    return undefined;
  }

  /** Ask for keys in the background, at most MAX_PREFETCH requests in flight. */
  prefetch(source, keys) {
    if (!this.header) return;
    for (const key of keys) {
      if (completeFor(this.header, key)) continue;
      const inFlight = [...this.pending.values()].filter((p) => p.prefetch).length;
      if (inFlight >= MAX_PREFETCH) return;
      const id = sectionId(source, key);
      if (!this.base.has(id) && !this.cache.has(id) && !this.inFlight.has(id)) this._request(source, key, true, "prefetch");
    }
  }

  _request(source, key, prefetch, slot) {
    const id = this.newId();
    this.pending.set(id, { source, key, prefetch, slot });
    this.inFlight.add(sectionId(source, key));
    // The host answers prefetches after what the view waits for (PROTOCOL.md).
    this.send({ type: "fetch", id, trace_id: this.traceId, source, key, ...(prefetch ? { prefetch: true } : {}) });
  }

  /**
   * Handle a `data` or `error` reply; returns true when it answered one of our requests.
   * An error with no id (not a reply) is shown too; replies to other views are ignored. A
   * `partial` reply (a grid filling in) is used and its request stays open for the next part.
   */
  receive(msg, buffers) {
    if (!msg || (msg.type !== "data" && msg.type !== "error")) return false;
    const req = this.pending.get(msg.id);
    if (!req) {
      if (msg.type === "error" && msg.id == null) this.onError(msg.message);
      return false;
    }
    const partial = msg.type === "data" && msg.partial === true;
    if (!partial) {
      this.pending.delete(msg.id);
      this.inFlight.delete(sectionId(req.source, req.key));
    }
    if (msg.trace_id !== undefined && msg.trace_id !== this.traceId) return true; // stale
    if (msg.type === "error") {
      if (!req.prefetch) {
        this.failed.set(sectionId(req.source, req.key), String(msg.message ?? "the host could not send it"));
        this.onError(msg.message, req.source, req.key);
      }
    } else {
      const { header, sections } = decodePayload(buffers[0]);
      if (header.metrics) this.header.metrics = { ...this.header.metrics, ...header.metrics };
      if (req.key === "grid") { // (a value-weighted grid comes whole: no parts)
        if (header.progress) this.progress.set(req.source, header.progress);
        else this.progress.delete(req.source);
      }
      for (const [id, s] of sections) {
        if (s.key.startsWith("thumbs") || s.key.startsWith("metric/")) this.base.set(id, s);
        else this._cache(id, s);
      }
      this.onData(req.source, req.key);
    }
    const slot = `${req.source}|${req.slot}`;
    const next = this.queued.get(slot);
    if (!partial && !req.prefetch && next !== undefined) {
      this.queued.delete(slot);
      this.want(req.source, next, req.slot);
    }
    return true;
  }

  _cache(id, section) {
    if (this.cache.has(id)) this.cacheBytes -= this.cache.get(id).data.byteLength;
    this.cache.set(id, section);
    this.cacheBytes += section.data.byteLength;
    for (const [old, s] of this.cache) {
      if (this.cacheBytes <= this.maxBytes || old === id) break;
      this.cache.delete(old);
      this.cacheBytes -= s.data.byteLength;
    }
  }
}

/**
 * Coloured images already pooled, most recently used last, so that revisiting a head (slider
 * back and forth) skips pooling and colouring. An entry is valid only for the very sections it
 * was made from: a new payload or a refetched section misses.
 */
export class ImageCache {
  constructor(maxBytes) {
    this.maxBytes = maxBytes;
    this.bytes = 0;
    this.entries = new Map();
  }

  get(key, sections) {
    const e = this.entries.get(key);
    if (!e || e.sections.length !== sections.length || e.sections.some((s, i) => s !== sections[i])) return null;
    this.entries.delete(key);
    this.entries.set(key, e);
    return e.value;
  }

  set(key, sections, value, bytes) {
    const old = this.entries.get(key);
    if (old) {
      this.bytes -= old.bytes;
      this.entries.delete(key);
    }
    if (bytes > this.maxBytes) return;
    this.entries.set(key, { sections, value, bytes });
    this.bytes += bytes;
    for (const [k, e] of this.entries) {
      if (this.bytes <= this.maxBytes) break;
      this.entries.delete(k);
      this.bytes -= e.bytes;
    }
  }

  clear() {
    this.entries.clear();
    this.bytes = 0;
  }
}
