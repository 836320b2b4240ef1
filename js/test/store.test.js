import { test } from "node:test";
import assert from "node:assert/strict";
import { decodePayload } from "../src/payload.js";
import { ImageCache, SectionStore, matrixKey, neighbourKeys, regionKey } from "../src/store.js";
import { encodePayload, f16array } from "./helpers.js";

const sec = (key, values = [1, 0.5, 0.5]) => ({ key, dtype: "float16", layout: "tril", shape: [2], data: f16array(values) });

function setup({ complete = false, sections = [sec("mean/0")], maxBytes } = {}) {
  const sent = [];
  const arrived = [];
  const errors = [];
  const store = new SectionStore({
    send: (m) => sent.push(m), onData: (s, k) => arrived.push(`${s}:${k}`), onError: (m) => errors.push(m), maxBytes,
  });
  store.reset(decode(encodePayload({ trace_id: "t1", complete }, sections)));
  return { store, sent, arrived, errors };
}

const decode = (bytes) => decodePayload(bytes);
const reply = (req, key = req.key, trace_id = "t1") => [
  { type: "data", id: req.id, trace_id, source: req.source, key },
  [encodePayload({ trace_id }, [{ ...sec(key), source: req.source }])],
];

test("matrix keys: head/L/H, or mean/L for the mean of heads", () => {
  assert.equal(matrixKey(3, 2), "head/3/2");
  assert.equal(matrixKey(3, -1), "mean/3");
});

test("neighbours are heads ±1, layers ±1 and their means, only captured ones", () => {
  assert.deepEqual(neighbourKeys(0, 0, [0, 1], [0, 1]), ["head/0/1", "head/1/0", "mean/1"]);
  assert.deepEqual(neighbourKeys(1, -1, [0, 1, 2], [0]), ["mean/2", "mean/0"]);
});

test("a key in the payload is served at once without a request", () => {
  const { store, sent } = setup();
  assert.ok(store.want(0, "mean/0"));
  assert.equal(sent.length, 0);
});

test("a missing key is fetched once, then served from the cache", () => {
  const { store, sent, arrived } = setup();
  assert.equal(store.want(0, "head/0/1"), undefined);
  assert.equal(store.want(0, "head/0/1"), undefined);
  assert.equal(sent.length, 1);
  assert.deepEqual({ ...sent[0], id: 0 }, { type: "fetch", id: 0, trace_id: "t1", source: 0, key: "head/0/1" });
  assert.ok(store.receive(...reply(sent[0])));
  assert.deepEqual(arrived, ["0:head/0/1"]);
  assert.ok(store.want(0, "head/0/1"));
});

test("a complete payload never fetches", () => {
  const { store, sent } = setup({ complete: true });
  assert.equal(store.want(0, "head/9/9"), undefined);
  store.prefetch(0, ["head/1/1"]);
  assert.equal(sent.length, 0);
});

test("while a wanted fetch is in flight, only the newest wish waits and is sent next", () => {
  const { store, sent } = setup();
  store.want(0, "head/0/1");
  store.want(0, "head/0/2");
  store.want(0, "head/0/3");
  assert.equal(sent.length, 1);
  store.receive(...reply(sent[0]));
  assert.deepEqual(sent.map((m) => m.key), ["head/0/1", "head/0/3"]);
});

test("prefetch keeps at most two requests in flight", () => {
  const { store, sent } = setup();
  store.prefetch(0, ["head/0/1", "head/0/2", "head/0/3"]);
  assert.deepEqual(sent.map((m) => m.key), ["head/0/1", "head/0/2"]);
});

test("a reply for a replaced trace is dropped", () => {
  const { store, sent, arrived } = setup();
  store.want(0, "head/0/1");
  store.receive(...reply(sent[0], "head/0/1", "old"));
  assert.deepEqual(arrived, []);
  assert.equal(store.get(0, "head/0/1"), undefined);
});

test("an error reply to a wanted fetch is shown; one to a prefetch is not", () => {
  const { store, sent, errors } = setup();
  store.want(0, "head/0/9");
  store.prefetch(0, ["head/0/8"]);
  for (const m of sent) store.receive({ type: "error", id: m.id, trace_id: "t1", message: `cannot send ${m.key}` }, []);
  assert.deepEqual(errors, ["cannot send head/0/9"]);
});

test("replies to other views' ids are ignored", () => {
  const { store, arrived } = setup();
  assert.equal(store.receive({ type: "data", id: "someone-else", trace_id: "t1", key: "head/0/1", source: 0 }, []), false);
  assert.deepEqual(arrived, []);
});

test("the cache evicts the least recently used section past its byte limit", () => {
  const { store, sent } = setup({ maxBytes: 12 });
  for (const key of ["head/0/1", "head/0/2", "head/0/3"]) {
    store.prefetch(0, [key]);
    store.receive(...reply(sent.at(-1)));
  }
  assert.equal(store.get(0, "head/0/1"), undefined);
  assert.ok(store.get(0, "head/0/2"));
  assert.ok(store.get(0, "head/0/3"));
  assert.ok(store.get(0, "mean/0"), "payload sections are never evicted");
});

test("ImageCache: hits only for the same sections, evicts least recently used past its bytes", () => {
  const a = { key: "head/0/0" };
  const b = { key: "head/0/1" };
  const cache = new ImageCache(10);
  cache.set("x", [a], "img-a", 4);
  assert.equal(cache.get("x", [a]), "img-a");
  assert.equal(cache.get("x", [{ key: "head/0/0" }]), null, "a refetched section is another object");
  assert.equal(cache.get("x", [a, b]), null);
  cache.set("y", [b], "img-b", 4);
  cache.get("x", [a]); // x is now the most recent
  cache.set("z", [a, b], "img-ab", 4); // 12 bytes > 10: y goes
  assert.equal(cache.get("y", [b]), null);
  assert.equal(cache.get("x", [a]), "img-a");
  assert.equal(cache.get("z", [a, b]), "img-ab");
  assert.equal(cache.bytes, 8);
  cache.set("big", [a], "too big", 11);
  assert.equal(cache.get("big", [a]), null);
  cache.clear();
  assert.equal(cache.get("x", [a]), null);
  assert.equal(cache.bytes, 0);
});

test("long traces: pooled keys name the side; the layer mean is prefetched first", () => {
  assert.equal(matrixKey(3, 2, 16), "pool/3/2/16");
  assert.equal(matrixKey(3, -1, 16), "pool/3/mean/16");
  assert.equal(regionKey(3, -1, { q0: 64, q1: 128, k0: 0, k1: 128 }), "region/3/mean/64/128/0/128");
  assert.deepEqual(neighbourKeys(1, 0, [0, 1, 2], [0, 1], 16), ["pool/1/mean/16", "pool/1/1/16", "pool/2/0/16", "pool/0/0/16"]);
});

test("each purpose has its own wanted fetch in flight: the view never waits behind the grid", () => {
  const { store, sent } = setup();
  store.want(0, "grid", "grid");
  store.want(0, "pool/0/1/16");
  store.want(0, "region/0/1/0/64/0/64", "detail");
  assert.deepEqual(sent.map((m) => m.key), ["grid", "pool/0/1/16", "region/0/1/0/64/0/64"]);
  store.want(0, "pool/0/2/16");
  store.want(0, "region/0/2/0/64/0/64", "detail");
  assert.equal(sent.length, 3, "a second wish of a slot waits for the first");
  store.receive(...reply(sent[2]));
  assert.equal(sent.at(-1).key, "region/0/2/0/64/0/64");
});

test("prefetches say so, so that the host answers them last", () => {
  const { store, sent } = setup();
  store.want(0, "pool/0/1/16");
  store.prefetch(0, ["pool/0/2/16"]);
  assert.deepEqual(sent.map((m) => m.prefetch), [undefined, true]);
});

test("a grid filling in: each part is used and shown, the request stays open until the last", () => {
  const { store, sent, arrived } = setup();
  store.want(0, "grid", "grid");
  const thumbs = (v) => ({ key: "thumbs", dtype: "uint8", layout: "dense", shape: [1, 2, 1, 1], data: Uint8Array.from([v, 0]) });
  const part = (progress, v, partial = true) => [{ type: "data", id: sent[0].id, trace_id: "t1", source: 0, key: "grid", ...(partial ? { partial } : {}) },
    [encodePayload({ trace_id: "t1", key: "grid", ...(progress ? { progress } : {}) }, [thumbs(v)])]];
  store.receive(...part({ thumbs: 1, metrics: 0 }, 9));
  assert.deepEqual(store.progress.get(0), { thumbs: 1, metrics: 0 });
  assert.equal(store.get(0, "thumbs").data[0], 9);
  assert.equal(store.want(0, "grid", "grid"), undefined);
  assert.equal(sent.length, 1, "still in flight: not asked again");
  store.receive(...part(null, 7, false));
  assert.equal(store.progress.get(0), undefined);
  assert.equal(store.get(0, "thumbs").data[0], 7);
  assert.deepEqual(arrived, ["0:grid", "0:grid"]);
  assert.equal(store.pending.size, 0);
});
