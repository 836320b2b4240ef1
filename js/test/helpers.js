// Test helpers: build payloads the way PROTOCOL.md lays them out, float16 encoding.

/** float16 bit pattern of a number (round to nearest, normal and subnormal range). */
export function f16bits(x) {
  if (Number.isNaN(x)) return 0x7e00;
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  let a = Math.abs(x);
  if (a >= 65520) return sign | 0x7c00;
  if (a < 2 ** -14) return sign | Math.round(a / 2 ** -24);
  let e = Math.floor(Math.log2(a));
  let m = Math.round((a / 2 ** e - 1) * 1024);
  if (m === 1024) { m = 0; e += 1; }
  return sign | ((e + 15) << 10) | m;
}

export function f16array(values) {
  return Uint16Array.from(values, f16bits);
}

/** Payload bytes: "AWP1", u32 header length, JSON header, sections 8-byte aligned. */
export function encodePayload(header, sections, { misalign = 0 } = {}) {
  let offset = 0;
  const table = sections.map((s) => {
    const bytes = new Uint8Array(s.data.buffer, s.data.byteOffset, s.data.byteLength);
    const entry = { key: s.key, source: s.source ?? 0, dtype: s.dtype, layout: s.layout, shape: s.shape, offset, nbytes: bytes.length };
    offset += Math.ceil(bytes.length / 8) * 8;
    return [entry, bytes];
  });
  const json = new TextEncoder().encode(JSON.stringify({ ...header, sections: table.map((t) => t[0]) }));
  const start = Math.ceil((8 + json.length) / 8) * 8;
  const out = new Uint8Array(misalign + start + offset);
  const body = out.subarray(misalign);
  body.set([65, 87, 80, 49]);
  new DataView(body.buffer, body.byteOffset).setUint32(4, json.length, true);
  body.set(json, 8);
  for (const [entry, bytes] of table) body.set(bytes, start + entry.offset);
  return misalign ? new DataView(out.buffer, misalign) : body;
}

/** Packed lower triangle (row i at i*(i+1)/2) of a dense row-major T×T matrix. */
export function packTril(dense, t) {
  const out = [];
  for (let i = 0; i < t; i++) for (let k = 0; k <= i; k++) out.push(dense[i * t + k]);
  return out;
}

/**
 * A stand-in anywidget model: traits, change events (`change:<name>` with the model and the new
 * value, as Backbone sends them), custom messages. `fromKernel(name, value)` applies a value the
 * way ipywidgets applies kernel state (under `_state_lock`); `reply(msg, buffers)` delivers a
 * host message; `sent` and `saves` record what the front end wrote.
 */
export function fakeModel(traits = {}) {
  const listeners = new Map();
  const emit = (name, ...args) => (listeners.get(name) ?? []).slice().forEach((fn) => fn(...args));
  const model = {
    traits: { ...traits },
    sent: [],
    saves: 0,
    _state_lock: null,
    get: (k) => model.traits[k],
    set: (k, v) => {
      const old = model.traits[k];
      model.traits[k] = v;
      if (old !== v) emit(`change:${k}`, model, v);
    },
    save_changes: () => model.saves++,
    on: (name, fn) => listeners.set(name, [...(listeners.get(name) ?? []), fn]),
    off: (name, fn) => listeners.set(name, (listeners.get(name) ?? []).filter((f) => f !== fn)),
    send: (msg) => model.sent.push(msg),
    fromKernel: (k, v) => {
      model._state_lock = { [k]: v };
      model.set(k, v);
      model._state_lock = null;
    },
    reply: (msg, buffers = []) => emit("msg:custom", msg, buffers),
    listening: () => [...listeners.values()].reduce((n, fns) => n + fns.length, 0),
  };
  return model;
}

/** Frames on demand: installs requestAnimationFrame; `run()` runs the frame's callbacks. */
export function manualFrames() {
  const queue = [];
  globalThis.requestAnimationFrame = (fn) => queue.push(fn);
  return { run: () => queue.splice(0).forEach((fn) => fn(performance.now())), get pending() { return queue.length; } };
}

/** Let timers of 0 ms (and microtasks) run. */
export const tick = (ms = 0) => new Promise((resolve) => setTimeout(resolve, ms));

/** Token lists of a payload source (PROTOCOL.md): texts, raw forms, ids, special flags. */
export const tokens = (text) => ({ text, raw: text, ids: text.map((_, i) => i), special: text.map(() => false) });

/** A payload header's source: `n` tokens " t0"… of which the first `prompt` are the prompt. */
export function source({ label = "A", name = "smollm2", n = 5, prompt = 3, layers = [0, 1, 2], heads = [0, 1], ...rest } = {}) {
  const text = Array.from({ length: n }, (_, i) => ` t${i}`);
  return { label, model: { name }, tokens: tokens(text), spans: { prompt: [0, prompt], generated: [prompt, n] }, layers, heads, ...rest };
}
