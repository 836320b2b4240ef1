import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { deflateSync } from "node:zlib";
import { ESCAPED, asView, concat, fromBase64, inflate, rawDecoder, unshuffle } from "../src/snapshot/blobs.js";
import { StandInModel } from "../src/snapshot/model.js";
import { answer, requestKey } from "../src/snapshot/replies.js";

// Blobs of a page written by attn_widget/snapshot/page.py (fixtures/snapshot_blobs.py).
const fixture = JSON.parse(readFileSync(new URL("fixtures/snapshot_blobs.json", import.meta.url), "utf8"));
const b64bytes = (s) => new Uint8Array(Buffer.from(s, "base64"));
const [noise, weights] = fixture.blobs;

// --------------------------------------------------------------------------- blobs
test("a raw blob read as windows-1252 text decodes to the deflated bytes Python wrote", () => {
  const fromRaw = rawDecoder(fixture.cp1252);
  for (const blob of fixture.blobs) {
    assert.deepEqual(fromRaw(blob.raw_text), b64bytes(blob.base64));
  }
});

test("the raw fixture exercises all four escapes and every byte from 0x80 to 0x9F", () => {
  for (const digit of "0123") assert.ok(noise.raw_text.includes("=" + digit), `no =${digit}`);
  const deflated = new Set(b64bytes(noise.base64));
  for (let b = 0x80; b < 0xa0; b++) assert.ok(deflated.has(b), `no byte ${b}`);
});

test("escapes stand for NUL, CR, '<' and '=' whatever surrounds them", () => {
  const fromRaw = rawDecoder(fixture.cp1252);
  assert.deepEqual([...fromRaw("=0=1=2=3")], ESCAPED);
  assert.deepEqual([...fromRaw("a=3=3b\u20ac\u0081\u00ff")], [0x61, 0x3d, 0x3d, 0x62, 0x80, 0x81, 0xff]);
});

test("base64 decodes to the same deflated bytes", () => {
  assert.deepEqual(fromBase64(noise.base64), b64bytes(noise.base64));
  assert.deepEqual([...fromBase64("AP8=")], [0x00, 0xff]);
});

test("inflate reads a zlib stream from Python and one from node:zlib", async () => {
  assert.deepEqual(await inflate(b64bytes(noise.base64)), b64bytes(noise.bytes));
  const text = new TextEncoder().encode("attention ".repeat(100));
  assert.deepEqual(await inflate(new Uint8Array(deflateSync(text))), text);
});

test("unshuffle leaves single bytes alone and interleaves the planes of 2-byte items", () => {
  const bytes = Uint8Array.from([1, 2, 3]);
  assert.equal(unshuffle(bytes, 1), bytes);
  assert.deepEqual([...unshuffle(Uint8Array.from([0x01, 0x02, 0x03, 0xa1, 0xa2, 0xa3]), 2)],
    [0x01, 0xa1, 0x02, 0xa2, 0x03, 0xa3]);
});

test("a shuffled float16 blob decodes end to end to the weights Python wrote", async () => {
  assert.equal(weights.shuffle, 2);
  const bytes = unshuffle(await inflate(rawDecoder(fixture.cp1252)(weights.raw_text)), weights.shuffle);
  assert.equal(bytes.length, weights.n);
  assert.deepEqual(bytes, b64bytes(weights.bytes));
});

test("concat joins pieces in order into a new array, and asView keeps the offset", () => {
  const whole = Uint8Array.from([9, 1, 2, 3, 4]);
  const joined = concat([whole.subarray(1, 3), whole.subarray(3)]);
  assert.deepEqual([...joined], [1, 2, 3, 4]);
  assert.notEqual(joined.buffer, whole.buffer);
  const view = asView(whole.subarray(1));
  assert.equal(view.byteLength, 4);
  assert.equal(view.getUint8(0), 1);
});

// --------------------------------------------------------------------------- replies
const manifest = {
  request_fields: ["type", "trace_id", "source", "key"],
  echo_fields: ["id"],
  replies: {
    '["fetch","t1",0,"head/1/2"]': { content: { type: "data", key: "head/1/2" }, buffers: [[[0, 1, 3], [1, 0, 2]]] },
  },
  unanswered: {
    fetch: { content: { type: "error" }, copy: ["trace_id", "source", "key"],
      message: "{key} is not in this snapshot: it was left out" },
    "*": { content: { type: "error" }, copy: [], message: "{type} needs a live kernel; this is an offline snapshot" },
  },
};
const blobs = [Uint8Array.from([10, 11, 12, 13]), Uint8Array.from([20, 21])];
const bytesOf = async (parts) => concat(parts.map(([b, s, e]) => blobs[b].subarray(s, e)));

test("a request's key is its request fields in order, missing ones null", () => {
  assert.equal(requestKey({ key: "grid", type: "fetch", id: 4 }, manifest.request_fields), '["fetch",null,null,"grid"]');
});

test("a recorded reply comes back with the request's id and its buffers as DataViews", async () => {
  const [content, buffers] = await answer(manifest,
    { type: "fetch", id: 7, trace_id: "t1", source: 0, key: "head/1/2" }, bytesOf);
  assert.deepEqual(content, { type: "data", key: "head/1/2", id: 7 });
  assert.equal(buffers.length, 1);
  assert.ok(buffers[0] instanceof DataView);
  assert.deepEqual([...new Uint8Array(buffers[0].buffer, buffers[0].byteOffset, buffers[0].byteLength)], [11, 12, 20, 21]);
});

test("a fetch of a head left out gets an error naming it, with the request's fields copied", async () => {
  const [content, buffers] = await answer(manifest,
    { type: "fetch", id: 8, trace_id: "t1", source: 1, key: "head/5/0" }, bytesOf);
  assert.deepEqual(content, { type: "error", trace_id: "t1", source: 1, key: "head/5/0", id: 8,
    message: "head/5/0 is not in this snapshot: it was left out" });
  assert.deepEqual(buffers, []);
});

test("a request of an unknown type gets the catch-all message", async () => {
  const [content, buffers] = await answer(manifest, { type: "run", id: 9, prompt: "Hi" }, bytesOf);
  assert.deepEqual(content, { type: "error", id: 9, message: "run needs a live kernel; this is an offline snapshot" });
  assert.deepEqual(buffers, []);
});

// --------------------------------------------------------------------------- stand-in model
const noReply = () => Promise.reject(new Error("no kernel"));

test("the stand-in model gets and sets traits, emitting change:name then change", () => {
  const model = new StandInModel({ layer: 1 }, noReply, () => {});
  const events = [];
  model.on("change:layer", (m, value) => events.push(["change:layer", m === model, value]));
  model.on("change", (m) => events.push(["change", m === model]));
  model.set("layer", 3);
  assert.equal(model.get("layer"), 3);
  assert.deepEqual(events, [["change:layer", true, 3], ["change", true]]);
});

test("setting the same value emits nothing", () => {
  const model = new StandInModel({ layer: 1, scale: NaN }, noReply, () => {});
  let calls = 0;
  model.on("change", () => calls++);
  model.set("layer", 1);
  model.set("scale", NaN);
  assert.equal(calls, 0);
});

test("on takes several names; off removes one handler, one name's handlers or all", () => {
  const model = new StandInModel({}, noReply, () => {});
  const seen = [];
  const a = (_, v) => seen.push(["a", v]);
  const b = (_, v) => seen.push(["b", v]);
  model.on("change:layer change:head", a);
  model.on("change:layer", b);
  model.set("head", 1);
  model.off("change:layer", a);
  model.set("layer", 2);
  model.off("change:layer");
  model.set("layer", 3);
  model.off();
  model.set("head", 4);
  assert.deepEqual(seen, [["a", 1], ["b", 2]]);
});

test("a handler that throws does not stop the others", () => {
  const model = new StandInModel({}, noReply, () => {});
  const seen = [];
  const error = console.error;
  console.error = () => {};
  try {
    model.on("change:layer", () => { throw new Error("broken view"); });
    model.on("change:layer", (_, v) => seen.push(v));
    model.set("layer", 5);
  } finally {
    console.error = error;
  }
  assert.deepEqual(seen, [5]);
});

test("send delivers the reply as msg:custom, and a failed reply goes to the error handler", async () => {
  const errors = [];
  const model = new StandInModel({}, (msg) => answer(manifest, msg, bytesOf), (err) => errors.push(err));
  const got = new Promise((done) => model.on("msg:custom", (content, buffers) => done([content, buffers])));
  model.send({ type: "fetch", id: 3, trace_id: "t1", source: 1, key: "grid" });
  const [content, buffers] = await got;
  assert.equal(content.id, 3);
  assert.match(content.message, /^grid is not in this snapshot/);
  assert.deepEqual(buffers, []);

  const failing = new StandInModel({}, noReply, (err) => errors.push(err.message));
  failing.send({ type: "fetch" });
  await new Promise((done) => setTimeout(done, 0));
  assert.deepEqual(errors, ["no kernel"]);
});
