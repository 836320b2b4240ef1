// Value-weighted attention in the front end (issue 12): keys keyed by weighting, a complete
// payload still fetching value-weighted keys, colour ranges to the view's max, the readout and
// colour bar naming the weighting, the weights menu, the bars' y-range, the grid's badges.
import { test } from "node:test";
import assert from "node:assert/strict";
import { F16, decodePayload } from "../src/payload.js";
import { paletteIndex, sectionMax, viewMapping } from "../src/colour.js";
import { weightingChoice } from "../src/controls.js";
import { traceFacts } from "../src/facts.js";
import { cellLines, colourBarTitle } from "../src/legend.js";
import { barsHigh } from "../src/steps.js";
import { SectionStore, completeFor, gridKey, matrixKey, neighbourKeys, regionKey, thumbsKey } from "../src/store.js";
import { Sync } from "../src/sync.js";
import { encodePayload, f16array, fakeModel, packTril, source } from "./helpers.js";

const sec = (key, values = [1, 0.5, 0.5], extra = {}) => ({ key, dtype: "float16", layout: "tril", shape: [2], data: f16array(values), ...extra });

test("value-weighted keys end in /norm; the weights' keys stay as they were", () => {
  assert.equal(matrixKey(3, 2, 0, "norm"), "head/3/2/norm");
  assert.equal(matrixKey(3, -1, 0, "norm"), "mean/3/norm");
  assert.equal(matrixKey(3, 2, 16, "norm"), "pool/3/2/16/norm");
  assert.equal(matrixKey(3, -1, 16, "norm"), "pool/3/mean/16/norm");
  assert.equal(matrixKey(3, 2, 0, "attention"), "head/3/2");
  assert.equal(regionKey(1, 2, { q0: 0, q1: 4, k0: 0, k1: 3 }, "norm"), "region/1/2/0/4/0/3/norm");
  assert.equal(regionKey(1, 2, { q0: 0, q1: 4, k0: 0, k1: 3 }), "region/1/2/0/4/0/3");
  assert.deepEqual([gridKey("norm"), thumbsKey("norm"), gridKey("attention"), thumbsKey("attention")],
    ["grid/norm", "thumbs/norm", "grid", "thumbs"]);
  assert.deepEqual(neighbourKeys(0, 0, [0, 1], [0, 1], 0, "norm"), ["head/0/1/norm", "head/1/0/norm", "mean/1/norm"]);
  assert.deepEqual(neighbourKeys(0, 0, [0, 1], [0, 1], 8, "norm"), ["pool/0/mean/8/norm", "pool/0/1/8/norm", "pool/1/0/8/norm"]);
});

test("a complete payload covers the weights only: value-weighted keys are still fetched", () => {
  assert.equal(completeFor({ complete: true }, "head/0/0"), true);
  assert.equal(completeFor({ complete: true }, "head/0/0/norm"), false);
  assert.equal(completeFor({ complete: false }, "head/0/0"), false);
  const sent = [];
  const store = new SectionStore({ send: (m) => sent.push(m) });
  store.reset(decodePayload(encodePayload({ trace_id: "t1", complete: true }, [sec("head/0/0")])));
  assert.ok(store.want(0, "head/0/0"));
  assert.equal(store.want(0, "head/0/1"), undefined);
  assert.equal(sent.length, 0, "an attention key of a complete payload is never fetched");
  assert.equal(store.want(0, "head/0/0/norm"), undefined, "a cached attention head never answers for /norm");
  store.prefetch(0, ["head/0/1", "head/0/1/norm"]);
  assert.deepEqual(sent.map((m) => [m.key, !!m.prefetch]), [["head/0/0/norm", false], ["head/0/1/norm", true]]);
  const id = sent[0].id;
  store.receive({ type: "data", id, trace_id: "t1", source: 0, key: "head/0/0/norm" },
    [encodePayload({ trace_id: "t1" }, [sec("head/0/0/norm", [2.5, 0.25, 4])])]);
  assert.equal(F16[store.want(0, "head/0/0/norm").data[2]], 4);
  assert.equal(F16[store.want(0, "head/0/0").data[2]], 0.5);
});

test("the value-weighted grid's thumbnails and badges stay, apart from the weights'", () => {
  const model = fakeModel({ layer: 0 });
  const sync = new Sync(model);
  sync.connect();
  const metric = (key) => ({ key, dtype: "float32", layout: "dense", shape: [1, 1], data: new Float32Array([0.5]) });
  sync.reset(decodePayload(encodePayload({ trace_id: "t1", complete: false }, [sec("mean/0")])));
  sync.want(0, "grid/norm", "grid");
  const req = model.sent.at(-1);
  assert.equal(req.key, "grid/norm");
  const thumbs = { key: "thumbs/norm", dtype: "uint8", layout: "dense", shape: [1, 1, 1, 1], data: new Uint8Array([255]) };
  model.reply({ type: "data", id: req.id, trace_id: "t1", source: 0, key: "grid/norm" },
    [encodePayload({ trace_id: "t1" }, [thumbs, metric("metric/sink_score/norm"), metric("metric/self_score/norm")])]);
  assert.ok(sync.section(0, "thumbs/norm"));
  assert.equal(sync.section(0, "thumbs"), undefined);
  assert.deepEqual(sync.metricNames(0, "norm"), ["sink_score", "self_score"]);
  assert.deepEqual(sync.metricNames(0), []);
  assert.ok(sync.store.base.has("0:thumbs/norm"), "kept with the payload's sections, never evicted");
});

test("value-weighted colour ranges run to the view's max; the weights' stay 0…1", () => {
  const s = sec("head/0/0/norm", [3, 0.5, 12]);
  assert.equal(sectionMax(s), 12);
  assert.equal(sectionMax(sec("pool/0/0/2/norm", [-0, 0.75, -0])), 0.75, "-0 (no cell) is skipped");
  assert.deepEqual(viewMapping("linear", "norm", 12), { kind: "linear", low: 0, high: 12 });
  assert.deepEqual(viewMapping("log", "norm", 12), { kind: "log", low: 12 * 1e-4, high: 12 });
  assert.deepEqual(viewMapping("row", "norm", 12), { kind: "linear", low: 0, high: 1 });
  assert.deepEqual(viewMapping("linear", "attention", 12), { kind: "linear", low: 0, high: 1 });
  const m = viewMapping("linear", "norm", 12);
  assert.equal(paletteIndex(12, m, 256), 255);
  assert.equal(paletteIndex(6, m, 256), 128);
  assert.equal(paletteIndex(0.5, viewMapping("linear", "attention", 12), 256), 128);
});

test("the colour bar and the readout say a value is value-weighted", () => {
  const image = { side: 1, mapping: { kind: "linear", low: 0, high: 12.5 } };
  assert.equal(colourBarTitle("single", "linear", image, "norm"), "α·‖f(x)‖ (value-weighted), 0…max 12.50");
  assert.equal(colourBarTitle("single", "log", { ...image, side: 4 }, "norm"), "α·‖f(x)‖ (value-weighted, log), max 12.50 · 1 px = max of 4×4");
  assert.equal(colourBarTitle("single", "linear", image), "weight");
  const m = { key: "head/0/0/norm", dtype: "float16", layout: "tril", shape: [2], data: f16array(packTril([3, 0, 0.25, 1.5], 2)) };
  const f = traceFacts({ mode: "single", sources: [source({ n: 2, prompt: 2 })] });
  assert.equal(cellLines(f, [m], { q: 1, k: 1 }, 0, "norm")[1], "value-weighted α·‖f(x)‖ 1.5000");
  assert.equal(cellLines(f, [m], { q: 1, k: 1 }, 0)[1], "weight 1.5000");
  const both = traceFacts({ mode: "compare", sources: [source({ n: 2, prompt: 2 }), source({ label: "B", n: 2, prompt: 2 })] });
  assert.equal(cellLines(both, [m, m], { q: 1, k: 0 }, -1, "norm")[1], "value-weighted α·‖f(x)‖: A 0.2500 · B 0.2500 · |Δ| 0.0000");
});

test("the weights menu offers value-weighted only with value norms, and says why not", () => {
  const on = weightingChoice(["attention", "norm"]);
  assert.equal(on.disabled, false);
  assert.deepEqual(on.options.map((o) => [o.value, o.label, o.disabled]), [["attention", "attention", false], ["norm", "value-weighted", false]]);
  assert.match(on.title, /Kobayashi et al\. 2020/);
  const off = weightingChoice(["attention"]);
  assert.equal(off.disabled, true);
  assert.equal(off.options[1].disabled, true);
  assert.match(off.title, /values='norms'/);
});

test("value-weighted bars are not capped at 1", () => {
  assert.equal(barsHigh([0.5, 0.25]), 0.54);
  assert.equal(barsHigh([3, 1]), 1.02);
  assert.equal(barsHigh([3, 1], Infinity), 3 * 1.08);
  assert.equal(barsHigh([], Infinity), 1.02);
});
