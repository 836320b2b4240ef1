import { test } from "node:test";
import assert from "node:assert/strict";
import { decodePayload } from "../src/payload.js";
import { missingText } from "../src/missing.js";
import { SectionStore } from "../src/store.js";
import { encodePayload, f16array } from "./helpers.js";

const sec = (key) => ({ key, dtype: "float16", layout: "tril", shape: [2], data: f16array([1, 0.5, 0.5]) });

test("a key the host could not send is remembered with its message and not asked for again", () => {
  const sent = [];
  const failed = [];
  const store = new SectionStore({ send: (m) => sent.push(m), onError: (m, s, k) => failed.push([m, s, k]) });
  store.reset(decodePayload(encodePayload({ trace_id: "t1", complete: false }, [sec("mean/0")])));
  assert.equal(store.want(0, "head/0/3"), undefined);
  assert.equal(sent.length, 1);
  store.receive({ type: "error", id: sent[0].id, trace_id: "t1", message: "head/0/3 is not in this snapshot" }, []);
  assert.deepEqual(failed, [["head/0/3 is not in this snapshot", 0, "head/0/3"]]);
  assert.equal(store.failure(0, "head/0/3"), "head/0/3 is not in this snapshot");
  assert.equal(store.want(0, "head/0/3"), undefined);
  assert.equal(sent.length, 1, "a failed key is not asked for again (no loop of errors)");
  assert.equal(store.failure(0, "head/0/2"), undefined);
  store.reset(decodePayload(encodePayload({ trace_id: "t2", complete: false }, [])));
  assert.equal(store.failure(0, "head/0/3"), undefined, "a new trace forgets failures");
});

test("a failed prefetch is not remembered (the view asks for it when it wants it)", () => {
  const sent = [];
  const store = new SectionStore({ send: (m) => sent.push(m) });
  store.reset(decodePayload(encodePayload({ trace_id: "t1", complete: false }, [])));
  store.prefetch(0, ["head/1/0"]);
  store.receive({ type: "error", id: sent[0].id, trace_id: "t1", message: "no" }, []);
  assert.equal(store.failure(0, "head/1/0"), undefined);
  store.want(0, "head/1/0");
  assert.equal(sent.length, 2);
});

test("the message in place says what is missing, what the file holds and how to get it", () => {
  const t = missingText(2, 5, "head/2/5 is not in this snapshot: … its layer mean and grid thumbnail are here", true);
  assert.equal(t.title, "Layer 2, head 5 is not in this file.");
  assert.match(t.detail, /layer mean and grid thumbnail are here/);
  assert.match(t.how, /budget_mb/);
  assert.match(t.how, /live widget/);
  assert.equal(t.meanButton, true);
  const mean = missingText(2, -1, "x", false);
  assert.equal(mean.meanButton, false);
  assert.equal(mean.how, "");
});
