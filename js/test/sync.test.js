import { test } from "node:test";
import assert from "node:assert/strict";
import { decodePayload } from "../src/payload.js";
import { Sync, bokehSource } from "../src/sync.js";
import { encodePayload, f16array, fakeModel, manualFrames, tick } from "./helpers.js";

const sec = (key, source = 0) => ({ key, source, dtype: "float16", layout: "tril", shape: [2], data: f16array([1, 0.5, 0.5]) });
const payload = (sections = [sec("mean/0")], complete = false) => decodePayload(encodePayload({ trace_id: "t1", complete }, sections));

function setup(traits = { layer: 0, head: 0, step: 0 }) {
  const model = fakeModel(traits);
  const seen = { data: [], notices: [], runs: [], changes: [] };
  const sync = new Sync(model, {
    onData: (source, key) => seen.data.push(`${source}:${key}`),
    onNotice: (m) => seen.notices.push(m),
    onRun: (msg) => seen.runs.push(msg.state),
  });
  sync.connect();
  for (const name of Object.keys(traits)) sync.follow(name, () => seen.changes.push(`${name}=${model.get(name)}`));
  return { model, sync, seen, frames: manualFrames() };
}

test("a move sets the trait at once and saves it after the next frame, once for several moves", async () => {
  const { model, sync, seen, frames } = setup();
  sync.set("head", 1);
  sync.set("head", 2);
  sync.set("layer", 3);
  assert.deepEqual(seen.changes, ["head=1", "head=2", "layer=3"], "the view follows each move at once");
  assert.equal(model.saves, 0, "nothing sent before the paint");
  frames.run();
  await tick();
  assert.equal(model.saves, 1);
  await tick(120);
  assert.equal(model.saves, 1, "the fallback timer does not save again");
});

test("setting the value a trait already has changes and sends nothing", async () => {
  const { model, sync, seen, frames } = setup();
  sync.set("head", 0);
  frames.run();
  await tick(120);
  assert.deepEqual(seen.changes, []);
  assert.equal(model.saves, 0);
  assert.equal(frames.pending, 0);
});

test("a page with no frames (hidden) still saves within 100 ms", async () => {
  const { model, sync } = setup();
  manualFrames(); // frames that never run
  sync.set("step", 4);
  await tick(50);
  assert.equal(model.saves, 0);
  await tick(80);
  assert.equal(model.saves, 1);
});

test("a stale kernel echo is not followed, and the user's value is set again and saved", async () => {
  const { model, sync, seen, frames } = setup();
  sync.set("head", 1);
  sync.set("head", 2);
  model.fromKernel("head", 1); // the echo of the first move, applied after the second
  assert.deepEqual(seen.changes, ["head=1", "head=2"], "the echo did not move the view back");
  await tick();
  assert.equal(model.get("head"), 2, "the user's value is back");
  frames.run();
  await tick();
  assert.equal(model.saves, 1);
});

test("the kernel's changes are followed: to a trait not set here, and to any once saved", async () => {
  const { model, sync, seen, frames } = setup();
  model.fromKernel("layer", 5); // e.g. a clamped value or a re-run
  sync.set("head", 3);
  frames.run();
  await tick();
  model.fromKernel("head", 2);
  assert.deepEqual(seen.changes, ["layer=5", "head=3", "head=2"]);
  assert.equal(model.get("head"), 2);
});

test("a change event without the kernel's state lock (a stand-in host) is always followed", () => {
  const { model, sync, seen } = setup();
  sync.set("head", 1);
  model.set("head", 3);
  assert.deepEqual(seen.changes, ["head=1", "head=3"]);
});

test("request ids are unique on the page: two views of one model never share one", () => {
  const model = fakeModel();
  const a = new Sync(model);
  const b = new Sync(model);
  const ids = [a.send({ type: "run" }), a.send({ type: "run" }), b.send({ type: "run" })];
  assert.equal(new Set(ids).size, 3);
  assert.ok(ids[0].startsWith(`${a.viewId}-`) && ids[2].startsWith(`${b.viewId}-`));
  assert.deepEqual(model.sent.map((m) => m.id), ids);
});

test("a wanted key is fetched through the model with this view's id, and its reply comes back", () => {
  const { model, sync, seen } = setup();
  sync.reset(payload());
  assert.ok(sync.want(0, "mean/0"), "in the payload: no request");
  assert.equal(sync.want(0, "head/0/1"), undefined);
  const [req] = model.sent;
  assert.deepEqual({ ...req, id: "?" }, { type: "fetch", id: "?", trace_id: "t1", source: 0, key: "head/0/1" });
  assert.ok(req.id.startsWith(`${sync.viewId}-`));
  model.reply({ type: "data", id: req.id, trace_id: "t1", source: 0, key: "head/0/1" },
    [encodePayload({ trace_id: "t1" }, [sec("head/0/1")])]);
  assert.deepEqual(seen.data, ["0:head/0/1"]);
  assert.ok(sync.section(0, "head/0/1"));
});

test("a failed wanted fetch and a kernel notice are shown", () => {
  const { model, sync, seen } = setup();
  sync.reset(payload());
  sync.want(0, "head/9/9");
  model.reply({ type: "error", id: model.sent[0].id, trace_id: "t1", message: "head 9 not captured" });
  model.reply({ type: "notice", message: "layer 40 is out of range; showing 29" });
  assert.deepEqual(seen.notices, ["head 9 not captured", "layer 40 is out of range; showing 29"]);
});

test("run progress goes to the view that asked, not to other views of the model", () => {
  const { model, sync, seen } = setup();
  const other = new Sync(model);
  const id = sync.run("The capital of France is");
  assert.deepEqual(model.sent.at(-1), { type: "run", prompt: "The capital of France is", id });
  model.reply({ type: "run", id: other.newId(), state: "running" });
  model.reply({ type: "run", id, state: "running" });
  model.reply({ type: "run", id, state: "done" });
  assert.deepEqual(seen.runs, ["running", "done"]);
});

test("the metric sections present are listed by name", () => {
  const { sync } = setup();
  const metric = (name, source) => ({ key: `metric/${name}`, source, dtype: "float32", layout: "dense", shape: [1, 1], data: new Float32Array([0.5]) });
  sync.reset(payload([sec("mean/0"), metric("sink_score", 0), metric("self_score", 0), metric("sink_score", 1)], true));
  assert.deepEqual(sync.metricNames(0), ["sink_score", "self_score"]);
});

test("after dispose the view stops listening and sets nothing back", async () => {
  const { model, sync, seen } = setup();
  sync.set("head", 2);
  model.fromKernel("head", 1);
  sync.dispose();
  await tick();
  assert.equal(model.get("head"), 1, "no re-assertion after dispose");
  assert.equal(model.listening(), 0);
  model.set("layer", 2);
  model.reply({ type: "notice", message: "ignored" });
  assert.deepEqual(seen.changes, ["head=2"]);
  assert.deepEqual(seen.notices, []);
});

test("BokehJS sent with the widget is used without asking", async () => {
  const model = fakeModel({ _bokeh_js: new TextEncoder().encode("/* bokeh */") });
  const bytes = await bokehSource(model, "3.9.2");
  assert.equal(new TextDecoder().decode(bytes), "/* bokeh */");
  assert.deepEqual(model.sent, []);
});

test("BokehJS not sent with the widget is asked for once, and the reply's buffer is its source", async () => {
  const model = fakeModel({ _bokeh_js: new Uint8Array(0) });
  const source = bokehSource(model, "3.9.2");
  const [req] = model.sent;
  assert.deepEqual({ ...req, id: "?" }, { type: "bokeh", id: "?", version: "3.9.2" });
  model.reply({ type: "bokeh", id: "another request", version: "3.9.2" }, [new TextEncoder().encode("wrong")]);
  model.reply({ type: "bokeh", id: req.id, version: "3.9.2" }, [new TextEncoder().encode("/* bokeh */")]);
  assert.equal(new TextDecoder().decode(await source), "/* bokeh */");
  assert.equal(model.listening(), 0, "the request's listener is gone");
});

test("a host that cannot send BokehJS fails the request with its message", async () => {
  const model = fakeModel({ _bokeh_js: new Uint8Array(0) });
  const source = bokehSource(model, "3.9.2");
  model.reply({ type: "error", id: model.sent[0].id, message: "no kernel" });
  await assert.rejects(source, /no kernel/);
});
