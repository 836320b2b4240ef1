import { test } from "node:test";
import assert from "node:assert/strict";
import { F16, asBytes, column, coverage, covers, decodePayload, matrixShape, row, valueAt } from "../src/payload.js";
import { encodePayload, f16array, packTril } from "./helpers.js";

test("float16 table decodes one, the smallest subnormal, the largest normal, -2 and infinity", () => {
  assert.equal(F16[0x3c00], 1);
  assert.equal(F16[0x0001], 2 ** -24);
  assert.equal(F16[0x7bff], 65504);
  assert.equal(F16[0xc000], -2);
  assert.equal(F16[0x7c00], Infinity);
  assert.ok(Number.isNaN(F16[0x7e00]));
});

test("a weight of 0.0009 survives float16 within 2^-11 relative error", () => {
  const v = F16[f16array([0.0009])[0]];
  assert.ok(Math.abs(v - 0.0009) / 0.0009 < 2 ** -11, `decoded ${v}`);
});

test("decodes header and a packed causal head from an unaligned DataView", () => {
  const t = 3;
  const dense = [1, 0, 0, 0.25, 0.75, 0, 0.5, 0.125, 0.375];
  const payload = encodePayload({ protocol: 1, trace_id: "x" },
    [{ key: "head/0/1", dtype: "float16", layout: "tril", shape: [t], data: f16array(packTril(dense, t)) }],
    { misalign: 3 });
  const { header, sections } = decodePayload(payload);
  assert.equal(header.trace_id, "x");
  const s = sections.get("0:head/0/1");
  assert.deepEqual(matrixShape(s), [3, 3]);
  assert.equal(valueAt(s, 2, 1), 0.125);
  assert.ok(Number.isNaN(valueAt(s, 0, 2)), "above the diagonal is not attention");
  assert.deepEqual([...row(s, 1)].slice(0, 2), [0.25, 0.75]);
  assert.deepEqual([...column(s, 0)], [1, 0.25, 0.5]);
});

test("decodes dense float32 and uint8 sections with their shapes", () => {
  const payload = encodePayload({ protocol: 1 }, [
    { key: "metric/sink_score", source: 1, dtype: "float32", layout: "dense", shape: [2, 2], data: Float32Array.from([0.5, 1, 2, NaN]) },
    { key: "thumbs", dtype: "uint8", layout: "dense", shape: [1, 1, 2, 2], data: Uint8Array.from([255, 0, 7, 9]) },
  ]);
  const { sections } = decodePayload(payload);
  assert.deepEqual([...sections.get("1:metric/sink_score").data].slice(0, 3), [0.5, 1, 2]);
  assert.deepEqual([...sections.get("0:thumbs").data], [255, 0, 7, 9]);
});

test("rejects a payload without the AWP1 magic, naming what it got", () => {
  assert.throws(() => decodePayload(new Uint8Array([1, 2, 3, 4, 0, 0, 0, 0])), /must start with AWP1/);
});

test("rejects a truncated payload, naming the section", () => {
  const payload = encodePayload({}, [{ key: "mean/0", dtype: "float16", layout: "tril", shape: [2], data: f16array([1, 0.5, 0.5]) }]);
  assert.throws(() => decodePayload(payload.subarray(0, payload.length - 8)), /truncated: section mean\/0/);
});

test("asBytes accepts ArrayBuffer, DataView and typed arrays", () => {
  const buf = new Uint8Array([1, 2, 3, 4]).buffer;
  assert.deepEqual([...asBytes(buf)], [1, 2, 3, 4]);
  assert.deepEqual([...asBytes(new DataView(buf, 1, 2))], [2, 3]);
  assert.throws(() => asBytes("text"), /expected bytes/);
});

test("a pooled section answers for every token of its squares; -0 marks squares with no attention", () => {
  // 5 tokens pooled by 2: squares (0,0) (1,0) (1,1) (2,*) ; (0,1) (0,2) (1,2) above the diagonal
  const s = { key: "pool/0/0/2", dtype: "float16", layout: "dense", shape: [3, 3], side: 2, data: f16array([0.5, -0, -0, 0.25, 1, -0, 0.125, 0.75, 0.375]) };
  assert.deepEqual(coverage(s), { q0: 0, k0: 0, side: 2, rows: 3, cols: 3 });
  assert.equal(valueAt(s, 3, 1), 0.25);
  assert.equal(valueAt(s, 4, 5), 0.375);
  assert.ok(Number.isNaN(valueAt(s, 0, 3)), "no attention above the diagonal");
  assert.ok(Number.isNaN(valueAt(s, 6, 0)), "outside the section");
  assert.deepEqual([...row(s, 4, 6)], [0.125, 0.125, 0.75, 0.75, 0.375, 0.375]);
  const col = column(s, 2, 5);
  assert.ok(Number.isNaN(col[0]) && Number.isNaN(col[1]));
  assert.deepEqual([...col.subarray(2)], [1, 1, 0.75]);
});

test("a region section sits at its first row and key; tokens outside it are not covered", () => {
  const s = { key: "region/0/0/10/12/4/7", dtype: "float16", layout: "dense", shape: [2, 3], rows: [10, 12], cols: [4, 7], data: f16array([0.5, 0.25, 0.125, 1, 0, 0.5]) };
  assert.ok(covers(s, 11, 6) && !covers(s, 12, 6) && !covers(s, 10, 3));
  assert.equal(valueAt(s, 11, 4), 1);
  const r = row(s, 10, 8);
  assert.deepEqual([...r.subarray(4, 7)], [0.5, 0.25, 0.125]);
  assert.ok(Number.isNaN(r[3]) && Number.isNaN(r[7]));
});
